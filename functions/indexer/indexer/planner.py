"""The backfill as a planner: compare the bucket with the commit records and send one S3-shaped
event per changed object to the indexing queue, so the deployed fleet does the work with its own
concurrency, rate limits, retries and dead-letter queue.

Constant memory: the listing is consumed page by page (one page's commit records at a time), and
``--prune`` checks committed keys against S3 one scan page at a time instead of remembering the
listing. Ordering: a planned upsert names the ETag the listing saw and carries the committed
sequencer's successor (:func:`indexer.events.sequencer_after`), which orders it after the commit
it replaces but before any later real S3 event; the indexer reads the object with ``If-Match`` on
that ETag, so an event planned from a listing older than a live overwrite ends as "superseded"
and never replaces the newer version (see ``Indexer._upsert`` / ``_get_object``).
"""

from __future__ import annotations

import json
import posixpath
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from itertools import islice
from typing import Any, Literal, Protocol
from urllib.parse import quote_plus

from rag_shared.commits import Commit
from rag_shared.errors import RagError

from indexer.events import sequencer_after
from indexer.extract import BINARY_SUFFIXES

BACKFILL = "qwenRagBackfill"  # marker beside "Records": parse_notification ignores it, people and logs see it

# SendMessageBatch takes at most 10 entries (SQS API reference, SendMessageBatch).
SQS_BATCH_MAX = 10
# One planner step compares at most this many listed keys with their commits: a list_objects_v2
# page holds up to 1,000 (S3 API reference, ListObjectsV2 MaxKeys), so one page at a time.
PAGE = 1000
EXAMPLES = 20  # skipped keys named in the summary; the rest are counted by reason


class Commits(Protocol):
    def get_many(self, keys: Iterable[str]) -> dict[str, Commit]: ...

    def scan(self) -> Iterator[Commit]: ...


class Journal(Protocol):
    """Where the planner records what it enqueued (:class:`indexer.progress.Journal`)."""

    def add(self, key: str, action: str, sequencer: str) -> None: ...


class SendFailed(RagError):
    """SQS refused some entries after every retry (or for a reason a retry cannot fix)."""


@dataclass
class PlanSummary:
    enqueued: int = 0
    unchanged: int = 0
    removals: int = 0
    restored: int = 0  # unchanged by their commit, but their chunks were missing (--verify-chunks)
    skipped: Counter[str] = field(default_factory=Counter)
    examples: list[tuple[str, str]] = field(default_factory=list)

    def skip(self, key: str, reason: str) -> None:
        self.skipped[reason] += 1
        if len(self.examples) < EXAMPLES:
            self.examples.append((key, reason))

    def render(self) -> str:
        lines = [
            "backfill plan (sent to the indexing queue):",
            f"  enqueued: {self.enqueued}",
            f"  unchanged: {self.unchanged}",
            f"  removals enqueued: {self.removals}",
            *([f"  chunks missing, enqueued again: {self.restored}"] if self.restored else []),
            f"  skipped: {sum(self.skipped.values())}",
        ]
        lines += [f"    {reason}: {n}" for reason, n in sorted(self.skipped.items())]
        lines += [f"    e.g. {key}: {reason}" for key, reason in self.examples]
        return "\n".join(lines)


def backfill_message(
    bucket: str, key: str, action: Literal["upsert", "remove"], sequencer: str, etag: str | None = None, size: int = 0
) -> dict[str, Any]:
    """An S3 notification (S3 user guide, "Event message structure") that the indexer parses as a
    normal record; ``eventSource`` stays ``aws:s3`` and the top-level marker says who sent it."""
    obj: dict[str, Any] = {"key": quote_plus(key, safe="/"), "sequencer": sequencer}
    if action == "upsert":
        obj |= {"eTag": etag, "size": size}
    return {
        BACKFILL: True,
        "Records": [
            {
                "eventVersion": "2.1",
                "eventSource": "aws:s3",
                "eventTime": datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
                "eventName": "ObjectCreated:Put" if action == "upsert" else "ObjectRemoved:Delete",
                "requestParameters": {"sourceIPAddress": BACKFILL},
                "s3": {"s3SchemaVersion": "1.0", "bucket": {"name": bucket}, "object": obj},
            }
        ],
    }


def decide(obj: dict[str, Any], commit: Commit | None) -> tuple[str, str | None]:
    """("unchanged" | "skip" | "upsert", reason or sequencer) for one listed object."""
    key, etag = obj["Key"], obj["ETag"].strip('"')
    live = commit is not None and not commit.deleted
    if live and commit is not None and commit.etag == etag:
        return "unchanged", None
    # posixpath, not PurePosixPath: pathlib interns every path part it parses, so memory grew per key
    suffix = posixpath.splitext(posixpath.basename(key))[1].lower()
    if not live and suffix in BINARY_SUFFIXES:
        # An overwrite of an indexed key with such a file is still sent: it must hide the old version.
        return "skip", f"unsupported file type {suffix}"
    return "upsert", sequencer_after(commit.sequencer if commit else None)


class QueueSink:
    """Sends messages to one SQS queue in batches of 10, retrying entries SQS failed with backoff."""

    def __init__(
        self, sqs: Any, queue_url: str, *, attempts: int = 6, sleep: Callable[[float], None] = time.sleep
    ) -> None:
        self.sqs, self.queue_url, self.attempts, self._sleep = sqs, queue_url, attempts, sleep
        self._pending: list[str] = []
        self.sent = 0

    def send(self, message: dict[str, Any]) -> None:
        self._pending.append(json.dumps(message, separators=(",", ":")))
        if len(self._pending) == SQS_BATCH_MAX:
            self.flush()

    def flush(self) -> None:
        entries = {str(i): body for i, body in enumerate(self._pending)}
        self._pending = []
        for attempt in range(1, self.attempts + 1):
            if not entries:
                return
            result = self.sqs.send_message_batch(
                QueueUrl=self.queue_url, Entries=[{"Id": i, "MessageBody": b} for i, b in entries.items()]
            )
            for ok in result.get("Successful", []):
                entries.pop(ok["Id"], None)
                self.sent += 1
            failed = result.get("Failed", [])
            if any(f.get("SenderFault") for f in failed):  # a malformed entry: retrying cannot help
                raise SendFailed(f"SQS refused backfill messages: {failed[0].get('Code')}")
            if entries and attempt < self.attempts:
                self._sleep(min(0.1 * 2**attempt, 5.0))
        if entries:
            raise SendFailed(f"SQS failed {len(entries)} backfill messages after {self.attempts} attempts")


def _pages(items: Iterable[dict[str, Any]], size: int) -> Iterator[list[dict[str, Any]]]:
    """Pages of ``items``; neither this nor the caller holds a page while the next one is read."""
    it = iter(items)
    while True:
        page = list(islice(it, size))
        if not page:
            return
        yield page
        del page


def plan(
    objects: Iterable[dict[str, Any]],
    commits: Commits,
    sink: QueueSink,
    bucket: str,
    *,
    prefix: str = "",
    prune: bool = False,
    exists: Callable[[str], bool] | None = None,
    journal: Journal | None = None,
    verify: Callable[[list[Commit]], set[str]] | None = None,
) -> PlanSummary:
    """Enqueue an event per changed object in ``objects`` (a listing: dicts with Key, ETag, Size).
    With ``prune``, also a removal per live committed key under ``prefix`` that ``exists`` says is
    gone from the bucket. ``journal`` records each enqueued key for progress; ``verify`` (given the
    page's unchanged commits, returns the keys whose chunks are missing from the index) makes an
    unchanged object whose chunks were lost changed again."""
    summary = PlanSummary()
    for page in _pages(objects, PAGE):
        committed = commits.get_many(o["Key"] for o in page)
        lost = (
            verify([committed[o["Key"]] for o in page if decide(o, committed.get(o["Key"]))[0] == "unchanged"])
            if verify
            else set()
        )
        for obj in page:
            commit = committed.get(obj["Key"])
            verdict, detail = decide(obj, commit)
            if verdict == "unchanged" and obj["Key"] in lost and commit is not None:
                verdict, detail = "upsert", sequencer_after(commit.sequencer)
                summary.restored += 1
            if verdict == "unchanged":
                summary.unchanged += 1
            elif verdict == "skip":
                summary.skip(obj["Key"], detail or "")
            else:
                message = backfill_message(
                    bucket, obj["Key"], "upsert", detail or "", obj["ETag"].strip('"'), int(obj.get("Size") or 0)
                )
                sink.send(message)
                summary.enqueued += 1
                if journal is not None:
                    journal.add(obj["Key"], "upsert", detail or "")
        del page, committed, lost  # before the next page is read: one page in memory at a time
    if prune:
        if exists is None:
            raise ValueError("prune needs an exists() check")
        for commit in commits.scan():
            if commit.key.startswith(prefix) and not commit.deleted and not exists(commit.key):
                seq = sequencer_after(commit.sequencer)
                sink.send(backfill_message(bucket, commit.key, "remove", seq))
                summary.removals += 1
                if journal is not None:
                    journal.add(commit.key, "remove", seq)
    sink.flush()
    return summary


def s3_exists(s3: Any, bucket: str) -> Callable[[str], bool]:
    from botocore.exceptions import ClientError

    def exists(key: str) -> bool:
        try:
            s3.head_object(Bucket=bucket, Key=key)
            return True
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
                return False
            raise

    return exists


def chunk_checker(store: Any) -> Callable[[list[Commit]], set[str]]:
    """``verify`` for :func:`plan`: the keys among ``commits`` whose committed chunks are not all in
    the index. One ``_count`` per page (terms on the keys and on their versions: a version token is
    unique to one write of one key, so the two terms select exactly the committed chunks); only a
    page that comes up short is split in halves, so a healthy index costs one query per 1,000 keys.
    A page is at most :data:`PAGE` keys, well under the 65,536 terms a terms query takes by default
    (OpenSearch docs, "Terms query": ``index.max_terms_count``)."""

    def count(group: list[Commit]) -> int:
        query = {
            "bool": {
                "filter": [
                    {"terms": {"source_key": [c.key for c in group]}},
                    {"terms": {"version": [c.version for c in group]}},
                ]
            }
        }
        result = store.client.count(index=store.index, body={"query": query}, params={"ignore": 404})
        return int(result.get("count", 0))

    def missing(commits: list[Commit]) -> set[str]:
        group = [c for c in commits if c.version is not None and c.chunks > 0]
        if not group or count(group) >= sum(c.chunks for c in group):
            return set()
        if len(group) == 1:
            return {group[0].key}
        half = len(group) // 2
        return missing(group[:half]) | missing(group[half:])

    return missing
