"""S3 object → text → chunks → embeddings → OpenSearch, and removal, consistent by construction.

Every attempt at an event writes its chunks under a fresh *version token*; readers see a key's
chunks only once that token is committed in the commit table (:mod:`rag_shared.commits`) by a
compare-and-set on the event's S3 sequencer. So:

- an older event never replaces a newer commit, and a second delivery of the same event (even
  concurrent) is a no-op: it loses the compare-and-set and removes only its own chunks;
- a version partly written, superseded, or whose write failed for good is never visible;
- cleanup after a commit removes the chunks of events up to the committed one except the committed
  version, so it never touches the committed version nor a later event's write in progress;
  a delayed sweep (Serverless) repeats it once the collection has made everything searchable.
"""

from __future__ import annotations

import hashlib
import logging
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from enum import Enum
from itertools import islice
from typing import TYPE_CHECKING, Any, Literal

from botocore.exceptions import ClientError
from pydantic import BaseModel
from rag_shared.chunking import Chunk, chunk_text
from rag_shared.commits import Commit, CommitStore
from rag_shared.embeddings import Embedder, EmbedResult
from rag_shared.errors import ConfigError, RagError, StoreError
from rag_shared.store import ChunkDoc
from rag_shared.usage import Usage

from indexer.events import ObjectEvent, normalize_sequencer
from indexer.extract import DEFAULT_LIMITS, Limits, Unindexable, extract
from indexer.metadata import (
    MAX_SIDECAR_BYTES,
    Metadata,
    Value,
    document_key,
    from_user_metadata,
    is_sidecar,
    merge,
    oversized,
    parse_sidecar,
    sidecar_key,
)
from indexer.sidecars import SidecarProbe

if TYPE_CHECKING:
    from rag_shared.store import VectorStore  # loads opensearch-py: at first use, not at import

log = logging.getLogger(__name__)

# "deferred": a sidecar whose document has no indexed version yet; that document's indexing reads it
Action = Literal[
    "indexed", "removed", "skipped", "stale", "superseded", "gone", "swept", "continued", "metadata", "deferred"
]
MAX_RESTARTS = 3
# Rounds of "apply the sidecar, read it again" before giving up for an SQS retry (see _settle_metadata):
# each round is a sidecar that changed again while the previous round was written.
MAX_METADATA_ROUNDS = 4


class Outcome(BaseModel):
    """What happened to one event; logged and summed into metrics. Never holds document text."""

    key: str
    action: Action
    reason: str | None = None
    chunks: int = 0
    embedded: int = 0
    cached: int = 0
    removed: int = 0
    usage: Usage = Usage()
    seconds: float = 0.0
    warnings: list[str] = []  # metadata attributes or sidecars refused, and why (the file is still indexed)


@dataclass
class IndexerConfig:
    chunk_size: int = 400
    chunk_overlap: int = 60
    max_file_bytes: int = 50 * 1024 * 1024
    # chunks embedded together: bounds memory (a 1536-d vector is ~50 kB as Python floats; two
    # windows are alive at once) while giving the embedder 16 calls of 25 to run concurrently.
    window: int = 400
    limits: Limits = DEFAULT_LIMITS  # bounds on extracted text (hostile files), from Settings
    extra: dict[str, Any] = field(default_factory=dict)


def chunk_id(key: str, token: str, number: int) -> str:
    """The key's hash (never the key: S3 allows 1,024 bytes, an OpenSearch ``_id`` 512 — OpenSearch
    docs, "Index document" API: ``_id`` at most 512 bytes), the version token and the chunk number."""
    digest = hashlib.sha256(key.encode()).hexdigest()[:32]
    return f"{digest}-{token}-{number:06d}"


def new_token() -> str:
    """A version token: unique per attempt, so two deliveries of one event never share chunks."""
    return uuid.uuid4().hex[:20]


class Unknown(Enum):
    """A commit not read yet (``None`` means read, and absent)."""

    UNKNOWN = "unknown"


UNKNOWN = Unknown.UNKNOWN

# Chunks whose versions one request lists after a write (at most: a search's size; under the index's
# default max_result_window of 10,000, OpenSearch docs "Paginate results"); bigger files count instead.
VERSIONS_LISTED = 1000


@dataclass(frozen=True)
class Written:
    """What the index holds of a key after a write: ``complete`` (every chunk of the attempt's
    version is there) and ``others`` (chunks of other versions are there too)."""

    complete: bool
    others: bool


def assess(versions: list[str], token: str, expected: int) -> Written | None:
    """From the versions of the key's chunks found when asking for ``expected + 1`` of them: fewer
    found means every chunk was seen; only ``token`` found means no other version is there (ours
    cannot exceed ``expected``: chunk ids are unique per number). None: others filled the page, so
    how many are ours is unknown (count them)."""
    ours = versions.count(token)
    others = ours < len(versions)
    if len(versions) <= expected or not others:
        return Written(complete=ours == expected, others=others)
    return None


def _windows(chunks: Iterator[Chunk], size: int) -> Iterator[list[Chunk]]:
    while batch := list(islice(chunks, size)):
        yield batch


class Indexer:
    def __init__(
        self,
        s3: Any,
        store: VectorStore,
        embedder: Embedder,
        config: IndexerConfig,
        *,
        commits: CommitStore | None = None,
        sweeper: Callable[[ObjectEvent], None] | None = None,
        continuer: Callable[[ObjectEvent], None] | None = None,
        sidecars: SidecarProbe | None = None,
    ) -> None:
        """``commits``: the commit table (default: the store's, from ``COMMIT_TABLE``). ``sweeper``
        schedules a later :meth:`_sweep` (a delayed SQS message; only stores whose deletes can miss
        recent writes need it). ``continuer`` sends a continuation of a file that did not fit in
        one invocation (an SQS message); without one, running out of time raises :class:`OutOfTime`.
        ``sidecars``: answers "is there a sidecar?" for concurrent records in one listing."""
        commits = commits or store.commits
        if commits is None:
            raise ConfigError("COMMIT_TABLE is not set: the indexer needs its DynamoDB commit table")
        self.s3 = s3
        self.store = store
        self.commits = commits
        self.embedder = embedder
        self.config = config
        self.sweeper = sweeper
        self.continuer = continuer
        self.sidecars = sidecars
        if embedder.cache is None:
            embedder.cache = store  # unchanged text is never embedded twice

    def handle(
        self, event: ObjectEvent, *, deadline: float | None = None, known: Commit | Unknown | None = UNKNOWN
    ) -> Outcome:
        """``deadline`` (``time.monotonic()`` seconds): stop starting work after it, so a file too big
        for one invocation continues in another message before the function times out. ``known``:
        the key's commit as read shortly before (a batch's one BatchGetItem), used instead of the
        first read of an upsert or remove. A read that old is safe: commits only move forward, so a
        commit seen as applied still is, and one missed is met by the compare-and-set of the commit."""
        t0 = time.monotonic()
        if deadline is not None and t0 > deadline:
            raise OutOfTime("not started: the invocation's time ran out on earlier records")
        self.store.ensure_index()
        if is_sidecar(event.key):  # any event of a sidecar, even a sweep: never indexed as a document
            outcome = self._sidecar(event)
        elif event.action == "sweep":
            outcome = self._sweep(event)
        elif event.action == "upsert":
            outcome = self._upsert(event, deadline, known)
        elif event.reconcile:
            outcome = self._reconcile(event, deadline)
        else:
            outcome = self._remove(event, known)
        if outcome.action in ("indexed", "removed", "skipped", "superseded", "metadata") and event.action != "sweep":
            self._schedule_sweep(event)  # once: a sweep of a sidecar is itself a "metadata" outcome
        outcome.seconds = round(time.monotonic() - t0, 3)
        return outcome

    # helpers

    @staticmethod
    def _sequencer(event: ObjectEvent) -> str:
        if event.sequencer:
            return normalize_sequencer(event.sequencer)
        # Without a sequencer (a hand-made event) fall back to the time, which still orders
        # repeated manual runs; real S3 events always carry one (the local stack adds one).
        return normalize_sequencer(f"{time.time_ns():X}")

    def _applied(self, key: str, seq: str, known: Commit | Unknown | None = UNKNOWN) -> Commit | None:
        """The commit of ``key`` if it is of this event or a later one (``known``: as read before)."""
        commit = self.commits.get(key) if isinstance(known, Unknown) else known
        return commit if commit is not None and commit.sequencer >= seq else None

    def _stale(self, applied: Commit) -> Outcome:
        """An event already applied (a replay) or older than the commit. Cleanup runs again: it is
        idempotent, and an earlier try of this event may have failed after writing or committing
        (leaving chunks no cleanup had seen yet)."""
        self.store.delete_chunks(applied.key, upto_seq=applied.sequencer, except_version=applied.version)
        return Outcome(key=applied.key, action="stale", reason=f"already applied event {applied.sequencer}")

    def _commit(self, record: Commit, *, cleanup: bool = True) -> bool:
        """Commit ``record``; then clean up what it supersedes (``cleanup=False``: the index was seen
        to hold no other chunk of the key), or, having lost, our own chunks."""
        if self.commits.commit(record):
            if cleanup:
                self.store.delete_chunks(record.key, upto_seq=record.sequencer, except_version=record.version)
            return True
        if record.version is not None:
            self.store.delete_chunks(record.key, version=record.version)
        return False

    def _schedule_sweep(self, event: ObjectEvent) -> None:
        """OpenSearch Serverless makes a write searchable only some seconds later, so a cleanup can
        miss a chunk written just before: sweep once more when it is visible."""
        if not self.store.needs_sweep or self.sweeper is None:
            return  # a domain is refreshed before deleting: nothing can be missed
        try:
            self.sweeper(event.model_copy(update={"action": "sweep"}))
        except Exception as exc:  # readers see only committed chunks: a missed sweep leaves garbage only
            log.warning("could not schedule a sweep of %s: %s", event.key, type(exc).__name__)

    def _sweep(self, event: ObjectEvent) -> Outcome:
        """Remove what the key's commit supersedes (idempotent; never the committed version)."""
        commit = self.commits.get(event.key)
        if commit is None:
            return Outcome(key=event.key, action="swept", reason="no commit")
        removed = self.store.delete_chunks(event.key, upto_seq=commit.sequencer, except_version=commit.version)
        if commit.version is not None and not commit.deleted:  # chunks the last update could not see yet
            self._sync_metadata(event.bucket, commit.key, commit.version, commit.version_id, commit.etag)
        return Outcome(key=event.key, action="swept", removed=removed)

    # upsert

    def _upsert(
        self, event: ObjectEvent, deadline: float | None = None, known: Commit | Unknown | None = UNKNOWN
    ) -> Outcome:
        key, seq = event.key, self._sequencer(event)
        if applied := self._applied(key, seq, known):
            stale = self._stale(applied)
            if applied.sequencer == seq and applied.version is not None and not applied.deleted:
                # a retry of this very event: its first try may have failed after the commit, before
                # the sidecar that changed meanwhile was applied (_settle_metadata)
                self._sync_metadata(event.bucket, key, applied.version, applied.version_id, applied.etag)
            return stale
        # the sidecar is read before writing (see _settle_metadata), beside the object's own GET
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="sidecar") as reader:
            sidecar = reader.submit(self._read_sidecar, event.bucket, key)
            try:
                obj = self._get_object(event)
            except _Gone as gone:
                return Outcome(key=key, action=gone.action, reason=gone.reason)
            read = sidecar.result()
        token = event.token or new_token()
        etag = event.etag or str(obj.get("ETag") or "").strip('"') or None
        version_id = event.version_id or obj.get("VersionId")
        size = int(obj.get("ContentLength") or 0)
        user_meta = from_user_metadata(obj.get("Metadata"))
        meta = merge(user_meta, read)
        try:
            if size > self.config.max_file_bytes:
                raise Unindexable(f"file is {size} bytes, over the {self.config.max_file_bytes}-byte limit")
            data: bytes = obj["Body"].read()
            extracted = extract(key, data, obj.get("ContentType"), limits=self.config.limits)
            del data
        except Unindexable as exc:
            obj["Body"].close()
            # An overwrite with an unindexable file must still hide and remove the old version.
            removed = self.store.count(key)
            record = Commit(key, seq, None, 0, etag=etag, version_id=version_id, reason=exc.reason)
            if not self._commit(record):
                return Outcome(key=key, action="superseded", reason="a newer event was applied meanwhile")
            return Outcome(key=key, action="skipped", reason=exc.reason, removed=removed)

        total = Outcome(key=key, action="indexed", warnings=list(meta.warnings))
        resets = self.store.resets
        chunks = chunk_text(
            extracted.text, size=self.config.chunk_size, overlap=self.config.chunk_overlap, markdown=extracted.markdown
        )
        out_of_time = self._write(
            key, seq, token, event, islice(chunks, event.cursor, None), total, deadline, meta.values
        )
        present = self._written(key, token, event.cursor + total.chunks)
        if self.store.resets != resets or not present.complete:
            if applied := self._applied(key, seq):  # another delivery committed and cleaned up ours
                self.store.delete_chunks(key, version=token)
                return total.model_copy(update={"action": "superseded", "reason": f"applied {applied.sequencer}"})
            return self._restart(event, token, "the chunk index was deleted while this file was written")
        if out_of_time:
            return self._continue(event, token, event.cursor + total.chunks, total)
        total.chunks += event.cursor
        record = Commit(key, seq, token, total.chunks, etag=etag, version_id=version_id)
        if not self._commit(record, cleanup=present.others):
            return total.model_copy(update={"action": "superseded", "reason": "this event was applied meanwhile"})
        # a file written over several invocations may hold several reads of the sidecar: rewrite it
        written = meta.values if event.cursor == 0 else None
        settled = self._settle_metadata(event.bucket, key, token, user_meta, written)
        total.warnings = list(dict.fromkeys(total.warnings + list(settled.warnings)))
        return total

    def _write(
        self,
        key: str,
        seq: str,
        token: str,
        event: ObjectEvent,
        chunks: Iterator[Chunk],
        total: Outcome,
        deadline: float | None,
        metadata: dict[str, Value] | None = None,
    ) -> bool:
        """Embed and write ``chunks`` under ``token``; returns whether it stopped for lack of time.

        A pipeline: window i+1 is embedded while window i finishes embedding and window i-1 is
        written, so the embedder's slots never idle at a window boundary (a throttled call's
        backoff no longer stalls the others). At most three windows of vectors are in memory."""
        with (
            ThreadPoolExecutor(max_workers=2, thread_name_prefix="window") as embedding,
            ThreadPoolExecutor(max_workers=1, thread_name_prefix="bulk") as writer,
        ):
            in_flight: deque[Future[tuple[list[ChunkDoc], EmbedResult, int]]] = deque()
            writing: Future[list[str]] | None = None

            def drain_one() -> None:
                nonlocal writing
                docs, result, size = in_flight.popleft().result()
                if writing is not None:
                    writing.result()  # surfaces a write failure before more is queued
                writing = writer.submit(self.store.write_chunks, docs)
                total.chunks += len(docs)
                total.embedded += size - result.cached
                total.cached += result.cached
                total.usage += result.usage

            out_of_time = False
            for n, window in enumerate(_windows(chunks, self.config.window)):
                # at least one window per invocation, so a file always progresses toward its end
                if n and deadline is not None and time.monotonic() > deadline:
                    out_of_time = True  # finish what is in flight, then continue in another message
                    break
                in_flight.append(embedding.submit(self._embed_window, key, seq, token, event, window, metadata))
                if len(in_flight) > 1:
                    drain_one()
            while in_flight:
                drain_one()
            if writing is not None:
                writing.result()
        return out_of_time

    def _written(self, key: str, token: str, expected: int) -> Written:
        """Are all ``expected`` chunks of ``token`` in the index, and does it hold other chunks of the
        key (then the cleanup after the commit has work)? Checked where a count is exact at once (a
        domain, after refresh); on Serverless writes become countable only later: always clean up.

        One request lists the versions of up to ``expected + 1`` chunks of the key (a brand-new key
        then needs neither a count nor a cleanup); a count follows only when other versions fill it.
        A chunk another attempt writes after this look is that attempt's to remove: losing the
        commit it deletes its own, and any retry of it meets this commit and cleans up (``_stale``)."""
        if self.store.needs_sweep:
            return Written(complete=True, others=True)
        self.store.refresh()
        if expected + 1 > VERSIONS_LISTED:
            return Written(self.store.count(key, version=token) == expected, others=True)
        found = assess(self.store.chunk_versions(key, expected + 1), token, expected)
        if found is None:
            return Written(self.store.count(key, version=token) == expected, others=True)
        return found

    def _continue(self, event: ObjectEvent, token: str, cursor: int, total: Outcome) -> Outcome:
        """Out of time: hand the rest to a continuation message (it does not count as a receive of
        this one, so a big file never walks toward the dead-letter queue), or fail for a retry."""
        if self.continuer is None:
            raise OutOfTime(
                f"stopped after {total.chunks} chunks ({total.embedded} embedded) to end before the function's "
                "timeout; the retry starts again: chunks embedded so far come from the index, not DashScope"
            )
        self.continuer(event.model_copy(update={"token": token, "cursor": cursor}))
        return total.model_copy(update={"action": "continued", "reason": f"continues from chunk {cursor}"})

    def _restart(self, event: ObjectEvent, token: str, why: str) -> Outcome:
        """Chunks written under ``token`` went missing: never commit them; start the file afresh."""
        log.warning("restarting %s: %s", event.key, why)
        self.store.delete_chunks(event.key, version=token)
        if self.continuer is None or event.restarts >= MAX_RESTARTS:
            raise IncompleteWrite(why)
        self.continuer(event.model_copy(update={"token": None, "cursor": 0, "restarts": event.restarts + 1}))
        return Outcome(key=event.key, action="continued", reason=f"restarted: {why}")

    def _embed_window(
        self,
        key: str,
        seq: str,
        token: str,
        event: ObjectEvent,
        window: list[Chunk],
        metadata: dict[str, Value] | None = None,
    ) -> tuple[list[ChunkDoc], EmbedResult, int]:
        result = self.embedder.embed([c.text for c in window])
        docs = [
            ChunkDoc(
                id=chunk_id(key, token, c.number),
                source_key=key,
                version=token,
                chunk_number=c.number,
                text=c.text,
                start=c.start,
                end=c.end,
                heading=c.heading,
                content_hash=result.hashes.get(i) or self.embedder.hash(c.text),
                embedding_model=self.embedder.model.name,
                source_seq=seq,
                etag=event.etag,
                version_id=event.version_id,
                metadata=metadata or {},
                vector=vector,
            )
            for i, (c, vector) in enumerate(zip(window, result.vectors, strict=True))
            if vector is not None
        ]
        return docs, result, len(window)

    def _get_object(self, event: ObjectEvent) -> dict[str, Any]:
        kwargs: dict[str, Any] = {"Bucket": event.bucket, "Key": event.key}
        if event.version_id:
            kwargs["VersionId"] = event.version_id
        elif event.etag:
            kwargs["IfMatch"] = event.etag  # the version this event announced, not a later overwrite
        try:
            return dict(self.s3.get_object(**kwargs))
        except ClientError as exc:
            code = exc.response.get("Error", {}).get("Code", "")
            if code in ("NoSuchKey", "404", "NoSuchVersion"):
                raise _Gone("gone", "object was deleted before it could be indexed") from None
            if code in ("PreconditionFailed", "412"):
                raise _Gone(
                    "superseded", "object was overwritten since this event; the newer event indexes it"
                ) from None
            if code in ("AccessDenied", "403", "InvalidObjectState"):
                raise Unreadable(f"cannot read s3://{event.bucket}/{event.key}: {code}") from None
            raise

    # metadata (sidecars and S3 user metadata; pure parts in indexer.metadata)
    #
    # Convergence on what S3 serves, under duplicate, concurrent and reordered deliveries: a writer
    # of metadata (the document's own indexing, or any event of its sidecar) reads the sidecar as S3
    # serves it *now*, writes, then reads it again, and stops only when the sidecar read after its
    # last write equals what it wrote. So whichever write lands last, its writer reads the sidecar
    # after it landed and repairs it if the sidecar changed meanwhile: the committed version ends
    # with the current sidecar. A sidecar event touches only the committed version (never an
    # attempt in progress: that attempt reads the sidecar itself, after its commit) and assigns
    # (idempotent); a sidecar arriving before its document finds no commit and does nothing, and
    # the document's indexing reads it. On Serverless an update can miss chunks not yet searchable:
    # the delayed sweep runs the update again (_sweep).

    def _read_sidecar(self, bucket: str, key: str) -> Metadata:
        """The sidecar of ``key`` as S3 serves it now (none: no attributes)."""
        if self.sidecars is None:
            return self._get_sidecar(bucket, key)
        return self.sidecars.read(bucket, sidecar_key(key), lambda: self._get_sidecar(bucket, key))

    def _get_sidecar(self, bucket: str, key: str) -> Metadata:
        try:
            obj = self.s3.get_object(Bucket=bucket, Key=sidecar_key(key))
        except ClientError as exc:
            code = exc.response.get("Error", {}).get("Code", "")
            if code in ("NoSuchKey", "404", "NotFound"):
                return Metadata()
            if code in ("AccessDenied", "403", "InvalidObjectState"):
                raise Unreadable(f"cannot read s3://{bucket}/{sidecar_key(key)}: {code}") from None
            raise
        body = obj["Body"]
        try:
            size = int(obj.get("ContentLength") or 0)
            if size > MAX_SIDECAR_BYTES:
                return oversized(size)
            return parse_sidecar(body.read(MAX_SIDECAR_BYTES + 1))
        finally:
            body.close()

    def _settle_metadata(
        self, bucket: str, key: str, version: str, user: Metadata, written: dict[str, Value] | None
    ) -> Metadata:
        """Make the chunks of committed ``version`` carry the current sidecar merged over ``user``
        (the version's own S3 user metadata). ``written``: what its chunks already hold, None if
        unknown (then it is written once at least). Raises :class:`MetadataUnsettled` (retried) if
        the sidecar keeps changing."""
        current = merge(user, self._read_sidecar(bucket, key))
        for _ in range(MAX_METADATA_ROUNDS):
            if written is not None and current.values == written:
                return current
            self.store.update_metadata(key, version, current.values)
            written = current.values
            current = merge(user, self._read_sidecar(bucket, key))
        if current.values == written:
            return current
        raise MetadataUnsettled(f"the sidecar of {key!r} changed during {MAX_METADATA_ROUNDS} updates in a row")

    def _sync_metadata(self, bucket: str, key: str, version: str, version_id: str | None, etag: str | None) -> Outcome:
        """Apply the current sidecar to the committed ``version`` of ``key``, with that version's
        user metadata (HeadObject of exactly that version: if S3 serves another one now, the newer
        document event indexes it and reads the sidecar itself)."""
        kwargs: dict[str, Any] = {"Bucket": bucket, "Key": key}
        if version_id:
            kwargs["VersionId"] = version_id
        elif etag:
            kwargs["IfMatch"] = f'"{etag}"'  # an entity tag is quoted (RFC 9110, If-Match)
        try:
            head = self.s3.head_object(**kwargs)
        except ClientError as exc:
            code = exc.response.get("Error", {}).get("Code", "")
            if code in ("NoSuchKey", "404", "NotFound", "NoSuchVersion", "PreconditionFailed", "412", "405"):
                return Outcome(
                    key=key, action="stale", reason="the document changed; its own event applies the sidecar"
                )
            raise
        settled = self._settle_metadata(bucket, key, version, from_user_metadata(head.get("Metadata")), None)
        return Outcome(key=key, action="metadata", warnings=list(settled.warnings))

    def _sidecar(self, event: ObjectEvent) -> Outcome:
        """Any event of ``<key>.metadata.json`` (created, overwritten, deleted, swept): the chunks of
        ``<key>``'s committed version get the sidecar S3 serves now, without re-embedding."""
        key = document_key(event.key)
        commit = self.commits.get(key)
        if commit is None or commit.deleted or commit.version is None:
            self._record_sidecar(event)
            return Outcome(
                key=event.key,
                action="deferred",
                reason=f"applied when {key!r} is indexed (its indexing reads the sidecar)",
            )
        outcome = self._sync_metadata(event.bucket, key, commit.version, commit.version_id, commit.etag)
        self._record_sidecar(event)
        return outcome.model_copy(update={"key": event.key})

    def _record_sidecar(self, event: ObjectEvent) -> None:
        """Record the sidecar S3 serves now (its ETag, or its absence) as the commit of its own key,
        ordered by the event's sequencer like any commit. It carries no chunks and no reader looks at
        it; it lets a backfill find an applied sidecar unchanged (and ``--prune`` a deleted one)
        instead of sending it again on every run. Best effort: without it a backfill only repeats
        the metadata update, which is idempotent."""
        if event.action == "sweep":
            return
        try:
            etag: str | None = str(self.s3.head_object(Bucket=event.bucket, Key=event.key)["ETag"]).strip('"')
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code", "") not in ("NoSuchKey", "404", "NotFound"):
                log.warning("could not record the sidecar %s: %s", event.key, type(exc).__name__)
                return
            etag = None
        seq = self._sequencer(event)
        reason = "metadata sidecar, applied to its document's chunks"
        self.commits.commit(Commit(event.key, seq, None, 0, deleted=etag is None, etag=etag, reason=reason))

    # remove

    def _remove(self, event: ObjectEvent, known: Commit | Unknown | None = UNKNOWN) -> Outcome:
        key, seq = event.key, self._sequencer(event)
        if applied := self._applied(key, seq, known):
            return self._stale(applied)
        removed = self.store.count(key)
        if not self._commit(Commit(key, seq, None, 0, deleted=True)):
            return Outcome(key=key, action="stale", reason="a newer event was applied meanwhile")
        return Outcome(key=key, action="removed", removed=removed)

    def _reconcile(self, event: ObjectEvent, deadline: float | None) -> Outcome:
        """A version or a delete marker was removed, or a delete marker created (versioned bucket):
        converge on what S3 serves now. The removed version need not be the current one, and
        removing a delete marker makes the previous version current again (S3 user guide,
        "Deleting object versions" / "Working with delete markers")."""
        try:
            head = self.s3.head_object(Bucket=event.bucket, Key=event.key)
        except ClientError as exc:
            code = exc.response.get("Error", {}).get("Code", "")
            if code in ("NoSuchKey", "404", "NotFound", "405", "MethodNotAllowed"):  # none, or a delete marker
                return self._remove(event)
            raise
        etag, version_id = str(head.get("ETag", "")).strip('"'), head.get("VersionId")
        current = self.commits.get(event.key)
        if current is not None and not current.deleted and (current.version_id, current.etag) == (version_id, etag):
            return Outcome(key=event.key, action="stale", reason="S3 serves the version already committed")
        serve = event.model_copy(
            update={"action": "upsert", "reconcile": False, "etag": etag, "version_id": version_id, "size": None}
        )
        return self._upsert(serve, deadline)


class _Gone(Exception):
    def __init__(self, action: Action, reason: str) -> None:
        super().__init__(reason)
        self.action, self.reason = action, reason


class OutOfTime(RagError):
    """The invocation is about to time out. The record fails cleanly and is retried; whatever was
    embedded before stopping is written, so the retry takes it from the index and goes further."""

    retryable = True


class MetadataUnsettled(RagError):
    """A sidecar changed again during every metadata update: retried later (SQS), then dead-lettered."""

    retryable = True


class IncompleteWrite(StoreError):
    """Chunks written for this attempt went missing (the index was deleted meanwhile): retried."""


class Unreadable(RagError):
    """The function may not read the object (permissions, Glacier): retried, then dead-lettered."""

    retryable = True


__all__ = [
    "UNKNOWN",
    "IncompleteWrite",
    "Indexer",
    "IndexerConfig",
    "MetadataUnsettled",
    "OutOfTime",
    "Outcome",
    "StoreError",
    "Unknown",
    "Unreadable",
    "Written",
    "assess",
    "chunk_id",
    "new_token",
]
