"""S3 object → text → chunks → embeddings → OpenSearch, and removal, in event order.

Ordering: every chunk carries the S3 sequencer of the event that wrote it, and its id includes
it. After writing a version, only chunks of *older* events are deleted, and a writer that finds a
newer event already applied removes its own chunks. So replays, out-of-order delivery and two
versions processed at once all converge on the newest version, and never leave stale vectors.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from itertools import islice
from typing import Any, Literal

from botocore.exceptions import ClientError
from pydantic import BaseModel
from rag_shared.chunking import Chunk, chunk_text
from rag_shared.embeddings import Embedder, EmbedResult
from rag_shared.errors import RagError, StoreError
from rag_shared.store import ChunkDoc, SourceState, VectorStore, normalize_sequencer, sequencer_newer
from rag_shared.usage import Usage

from indexer.events import ObjectEvent
from indexer.extract import Unindexable, extract

log = logging.getLogger(__name__)

Action = Literal["indexed", "removed", "skipped", "stale", "superseded", "gone", "swept"]


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


@dataclass
class IndexerConfig:
    chunk_size: int = 400
    chunk_overlap: int = 60
    max_file_bytes: int = 50 * 1024 * 1024
    # chunks embedded together: bounds memory (a 1536-d vector is ~50 kB as Python floats; two
    # windows are alive at once) while giving the embedder 16 calls of 25 to run concurrently.
    window: int = 400
    extra: dict[str, Any] = field(default_factory=dict)


def chunk_id(key: str, sequencer: str, number: int) -> str:
    """Deterministic: the same event always writes the same ids, so a replay overwrites itself."""
    digest = hashlib.sha256(key.encode()).hexdigest()[:32]
    return f"{digest}-{normalize_sequencer(sequencer).rstrip('0') or '0'}-{number:06d}"


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
        sweeper: Callable[[ObjectEvent], None] | None = None,
    ) -> None:
        """``sweeper`` schedules a later :meth:`_sweep` of an event (a delayed SQS message in AWS).
        Only a store with server-assigned ids needs it: see :meth:`_schedule_sweep`."""
        self.s3 = s3
        self.store = store
        self.embedder = embedder
        self.config = config
        self.sweeper = sweeper
        if embedder.cache is None:
            embedder.cache = store  # unchanged text is never embedded twice

    def handle(self, event: ObjectEvent, *, deadline: float | None = None) -> Outcome:
        """``deadline`` (``time.monotonic()`` seconds): stop starting work after it, so a file too big
        for one invocation fails cleanly before the function times out; see :class:`OutOfTime`."""
        t0 = time.monotonic()
        if deadline is not None and t0 > deadline:
            raise OutOfTime("not started: the invocation's time ran out on earlier records")
        self.store.ensure_index()
        if event.action == "sweep":
            outcome = self._sweep(event)
        else:
            outcome = self._upsert(event, deadline) if event.action == "upsert" else self._remove(event)
            if outcome.action in ("indexed", "removed", "skipped"):
                self._schedule_sweep(event)
        outcome.seconds = round(time.monotonic() - t0, 3)
        return outcome

    # helpers

    def _sequencer(self, event: ObjectEvent) -> str:
        if event.sequencer:
            return event.sequencer
        # Without a sequencer (a hand-made event) fall back to the time, which still orders
        # repeated manual runs; real S3 events always carry one.
        return f"{time.time_ns():X}"

    def _is_stale(self, key: str, seq: str) -> SourceState | None:
        state = self.store.get_state(key)
        if state is not None and not sequencer_newer(seq, state.sequencer):
            return state
        return None

    def _finish(self, key: str, seq: str, state: SourceState) -> bool:
        """Record ``state`` unless a newer event got there first; then drop our own chunks instead."""
        current = self.store.get_state(key)
        if current is not None and not sequencer_newer(seq, current.sequencer):
            self.store.delete_source(key, only_seq=seq)
            return False
        self.store.delete_source(key, older_than=seq)
        self.store.put_state(state)
        return True

    def _schedule_sweep(self, event: ObjectEvent) -> None:
        """OpenSearch Serverless makes a write searchable only some seconds later, so the delete of
        older chunks can miss a version written just before: sweep once more when it is visible."""
        if self.store.custom_ids or self.sweeper is None or not event.sequencer:
            return  # a domain is refreshed before deleting: nothing can be missed
        try:
            self.sweeper(event.model_copy(update={"action": "sweep"}))
        except Exception as exc:  # the index is already right for all that was visible
            log.warning("could not schedule a sweep of %s: %s", event.key, type(exc).__name__)

    def _sweep(self, event: ObjectEvent) -> Outcome:
        if not event.sequencer:
            raise ValueError("a sweep needs the sequencer of the event it follows")
        removed = self.store.delete_source(event.key, older_than=event.sequencer)
        return Outcome(key=event.key, action="swept", removed=removed)

    # upsert

    def _upsert(self, event: ObjectEvent, deadline: float | None = None) -> Outcome:
        key, seq = event.key, self._sequencer(event)
        if stale := self._is_stale(key, seq):
            return Outcome(key=key, action="stale", reason=f"already applied event {stale.sequencer}")
        try:
            obj = self._get_object(event)
        except _Gone as gone:
            return Outcome(key=key, action=gone.action, reason=gone.reason)

        state = SourceState(key=key, sequencer=seq, etag=event.etag, version_id=event.version_id)
        size = int(obj.get("ContentLength") or 0)
        try:
            if size > self.config.max_file_bytes:
                raise Unindexable(f"file is {size} bytes, over the {self.config.max_file_bytes}-byte limit")
            data: bytes = obj["Body"].read()
            extracted = extract(key, data, obj.get("ContentType"))
            del data
        except Unindexable as exc:
            obj["Body"].close()
            # An overwrite with an unindexable file must still remove the old version's chunks.
            state.chunks = 0
            removed = self.store.count(key)
            self._finish(key, seq, state)
            return Outcome(key=key, action="skipped", reason=exc.reason, removed=removed)

        total = Outcome(key=key, action="indexed")
        written: list[str] = []
        chunks = chunk_text(
            extracted.text, size=self.config.chunk_size, overlap=self.config.chunk_overlap, markdown=extracted.markdown
        )
        # A pipeline: window i+1 is embedded while window i finishes embedding and window i-1 is
        # written, so the embedder's slots never idle at a window boundary (a throttled call's
        # backoff no longer stalls the others). At most three windows of vectors are in memory.
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
                    written.extend(writing.result())  # surfaces a write failure before more is queued
                writing = writer.submit(self.store.write_chunks, docs)
                total.chunks += len(docs)
                total.embedded += size - result.cached
                total.cached += result.cached
                total.usage += result.usage

            out_of_time = False
            for window in _windows(chunks, self.config.window):
                if deadline is not None and time.monotonic() > deadline:
                    out_of_time = True  # finish what is in flight: its vectors are the retry's cache
                    break
                in_flight.append(embedding.submit(self._embed_window, key, seq, event, window))
                if len(in_flight) > 1:
                    drain_one()
            while in_flight:
                drain_one()
            if writing is not None:
                written.extend(writing.result())
        if out_of_time:
            raise OutOfTime(
                f"stopped after {total.chunks} chunks ({total.embedded} embedded) to end before the function's "
                "timeout; the retry resumes: chunks embedded so far come from the index, not DashScope"
            )
        if not self.store.custom_ids:
            # Server-assigned ids make a retried write add copies: drop what an earlier, failed
            # attempt at this same event left (deterministic ids overwrite it instead). Only now,
            # after writing: until then its vectors served as the embedding cache.
            self.store.delete_source(key, only_seq=seq, keep=written)
        state.chunks = total.chunks
        if not self._finish(key, seq, state):
            return total.model_copy(update={"action": "superseded", "reason": "a newer event was applied meanwhile"})
        return total

    def _embed_window(
        self, key: str, seq: str, event: ObjectEvent, window: list[Chunk]
    ) -> tuple[list[ChunkDoc], EmbedResult, int]:
        result = self.embedder.embed([c.text for c in window])
        docs = [
            ChunkDoc(
                id=chunk_id(key, seq, c.number),
                source_key=key,
                chunk_number=c.number,
                text=c.text,
                start=c.start,
                end=c.end,
                heading=c.heading,
                content_hash=self.embedder.hash(c.text),
                embedding_model=self.embedder.model.name,
                source_seq=normalize_sequencer(seq),
                etag=event.etag,
                version_id=event.version_id,
                vector=vector,
            )
            for c, vector in zip(window, result.vectors, strict=True)
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

    # remove

    def _remove(self, event: ObjectEvent) -> Outcome:
        key, seq = event.key, self._sequencer(event)
        if stale := self._is_stale(key, seq):
            return Outcome(key=key, action="stale", reason=f"already applied event {stale.sequencer}")
        removed = self.store.count(key)
        self._finish(key, seq, SourceState(key=key, sequencer=seq, deleted=True))
        return Outcome(key=key, action="removed", removed=removed)


class _Gone(Exception):
    def __init__(self, action: Action, reason: str) -> None:
        super().__init__(reason)
        self.action, self.reason = action, reason


class OutOfTime(RagError):
    """The invocation is about to time out. The record fails cleanly and is retried; whatever was
    embedded before stopping is written, so the retry takes it from the index and goes further."""

    retryable = True


class Unreadable(RagError):
    """The function may not read the object (permissions, Glacier): retried, then dead-lettered."""

    retryable = True


__all__ = ["Indexer", "IndexerConfig", "OutOfTime", "Outcome", "StoreError", "Unreadable", "chunk_id"]
