"""Lambda entry point of the indexer.

Production path: S3 → SQS → this function. Each SQS record is processed on its own (Powertools
batch processing), up to ``INDEXER_RECORD_CONCURRENCY`` records at once on threads (records that
name the same S3 key run one after another in the batch's order, on one thread); a record that
fails is reported as a batch item failure, so only it returns to the queue, after a delay that
grows with each try (set on the message, so one queue-wide visibility timeout need not fit both a
quick retry and a 15-minute run), and after the queue's
maxReceiveCount it lands in the dead-letter queue. A file too big for one invocation stops
before the timeout and sends itself a continuation message (a cursor into its chunks), so its
progress accumulates and never counts toward maxReceiveCount. Files that can never be indexed
(binary, empty, bad encoding, too large) are logged and skipped once: they succeed. A poison
message (not JSON, an unknown shape) can never succeed: it is logged once with its reason and
moved to the dead-letter queue at once instead of being retried. A batch whose every record
failed is reported item by item like any other (no Lambda error). A direct S3 event
(``sam local invoke -e events/s3-put.json``) is processed too.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextvars import ContextVar
from functools import cache
from typing import TYPE_CHECKING, Any

from aws_lambda_powertools import Logger, Metrics
from aws_lambda_powertools.metrics import MetricUnit
from aws_lambda_powertools.utilities.batch import BatchProcessor, EventType, process_partial_response
from aws_lambda_powertools.utilities.data_classes.sqs_event import SQSRecord
from aws_lambda_powertools.utilities.typing import LambdaContext
from rag_shared.commits import Commit, CommitStore
from rag_shared.config import Settings, load_settings
from rag_shared.dashscope import DashScopeClient
from rag_shared.embeddings import Embedder, pacer_from_settings
from rag_shared.secrets import ApiKeyProvider

from indexer.events import BadEvent, ObjectEvent, continuation_message, parse_notification, sweep_message
from indexer.extract import Limits
from indexer.metadata import is_sidecar
from indexer.pipeline import UNKNOWN, Indexer, IndexerConfig, Outcome, OutOfTime, Unknown
from indexer.sidecars import SidecarProbe

if TYPE_CHECKING:
    from rag_shared.store import VectorStore

logger = Logger(service="indexer")
metrics = Metrics(namespace="QwenRag", service="indexer")

_lock = threading.Lock()
_indexer: Indexer | None = None
_settings: Settings | None = None
_retry_after: dict[str, int] = {}  # messageId -> seconds until a failed record's next try
_source_queue: ContextVar[str | None] = ContextVar("source_queue", default=None)  # the record's queue ARN


class Prefetched:
    """The commits of a batch's keys, read in one BatchGetItem before its records run. Each key's
    answer serves once, the first record naming it (records of one key run in batch order), which
    would otherwise read it itself: a later record of the key must see what the earlier one committed."""

    def __init__(self, keys: Sequence[str], found: dict[str, Commit]) -> None:
        self._unread = set(keys)
        self._found = found
        self._lock = threading.Lock()

    def take(self, event: ObjectEvent) -> Commit | Unknown | None:
        with self._lock:
            if event.key not in self._unread or event.key not in prefetch_keys([event]):
                return UNKNOWN
            self._unread.discard(event.key)
        return self._found.get(event.key)


_prefetched: ContextVar[Prefetched | None] = ContextVar("prefetched", default=None)


def prefetch_keys(events: Sequence[ObjectEvent]) -> list[str]:
    """Keys whose first step is reading their commit: uploads and plain removes of documents (not
    sidecars, sweeps or version reconciliations, which read S3 first)."""
    keys = (e.key for e in events if e.action in ("upsert", "remove") and not e.reconcile and not is_sidecar(e.key))
    return list(dict.fromkeys(keys))


def prefetch(indexer: Indexer, bodies: Sequence[str | None]) -> Prefetched | None:
    """One strongly consistent BatchGetItem for the batch's keys; None if it fails (each record then
    reads its own commit, and meets the failure itself if it persists)."""
    events: list[ObjectEvent] = []
    for body in bodies:
        try:
            events += parse_notification(body or "")
        except Exception:  # noqa: S112 - a poison record is dead-lettered by its own handler
            continue
    keys = prefetch_keys(events)
    if len(keys) < 2:
        return None
    try:
        return Prefetched(keys, indexer.commits.get_many(keys, consistent=True))
    except Exception as exc:
        logger.warning("could not read the batch's commits at once", extra={"error": type(exc).__name__})
        return None


def build_indexer(settings: Settings | None = None, *, s3: Any = None) -> Indexer:
    """Wire the indexer from settings (the environment by default)."""
    # boto3 and opensearch-py (~0.5 s of imports) load here, on the first event, not at import
    import boto3
    from rag_shared.store import VectorStore, make_client, pool_size

    settings = settings or load_settings()
    # max_retries=0: a 429 retried inside the SDK would be invisible to the pacer, which must see
    # every throttle to find the quota; the embedder retries (paced, with backoff) instead.
    client = DashScopeClient(settings, ApiKeyProvider.from_settings(settings), max_retries=0)
    embedder = Embedder(
        client,
        settings.embedder,
        settings.dimensions,
        batch_size=settings.embedding_batch_size,
        concurrency=settings.embedding_concurrency,
        pacer=pacer_from_settings(settings),
        max_attempts=settings.dashscope_max_retries + 1,
        pack_linger=settings.embedding_pack_linger_ms / 1000,
    )
    config = IndexerConfig(
        chunk_size=settings.chunk_size_tokens,
        chunk_overlap=settings.chunk_overlap_tokens,
        max_file_bytes=settings.max_file_bytes,
        limits=Limits(
            max_chars=settings.max_extracted_chars,
            max_pdf_pages=settings.max_pdf_pages,
            max_pdf_stream_bytes=settings.max_pdf_stream_bytes,
            max_pdf_content_bytes=settings.max_pdf_content_bytes,
        ),
    )
    # urllib3 pool: each record running at once has its thread, two window threads and a bulk writer
    # (pipeline.Indexer._write) beside the embedder's threads, which pool_size counts once.
    pool = pool_size(settings) + 4 * (settings.indexer_record_concurrency - 1)
    store = VectorStore.from_settings(
        settings, client=make_client(settings, pool_maxsize=pool), commits=CommitStore.from_settings(settings)
    )
    s3 = s3 or boto3.client("s3")
    return Indexer(
        s3,
        store,
        embedder,
        config,
        sweeper=_sweeper(settings, store),
        continuer=_continue,
        sidecars=SidecarProbe(s3),
    )


def _continue(event: ObjectEvent) -> None:
    """Send a continuation of ``event`` to the queue its record came from (no queue: a direct S3
    invocation, which Lambda retries instead)."""
    arn = _source_queue.get()
    if arn is None:
        raise OutOfTime(f"stopped at chunk {event.cursor}: no queue to continue from; the retry starts again")
    _sqs().send_message(QueueUrl=_queue_url(arn), MessageBody=continuation_message(event))


def _sweeper(settings: Settings, store: VectorStore) -> Callable[[ObjectEvent], None] | None:
    """Delayed sweep messages to the indexing queue (OpenSearch Serverless only)."""
    if not store.needs_sweep or not settings.sweep_queue_url:
        return None
    url, delay = settings.sweep_queue_url, settings.sweep_delay_seconds

    def send(event: ObjectEvent) -> None:
        _sqs().send_message(QueueUrl=url, MessageBody=sweep_message(event), DelaySeconds=delay)

    return send


def get_indexer() -> Indexer:
    """One per warm container: clients, key cache and connection pools are reused."""
    global _indexer
    with _lock:
        if _indexer is None:
            _indexer = build_indexer(get_settings())
        return _indexer


def get_settings() -> Settings:
    global _settings
    if _settings is None:
        _settings = load_settings()
    return _settings


def reset() -> None:
    """Forget the wired indexer, so the next event re-reads the configuration."""
    global _indexer, _settings
    with _lock:
        _indexer = _settings = None
        _sqs.cache_clear()
        _queue_url.cache_clear()
        _dead_letter_url.cache_clear()


def report(outcome: Outcome) -> None:
    fields = outcome.model_dump(exclude={"usage"}) | {
        "tokens": outcome.usage.prompt_tokens,
        "estimated_cost_usd": round(outcome.usage.cost_usd, 8),
        "embedding_calls": outcome.usage.calls,
    }
    if outcome.action == "skipped":
        logger.warning("file skipped", extra=fields)
        metrics.add_metric(name="FilesSkipped", unit=MetricUnit.Count, value=1)
    else:
        logger.info(f"file {outcome.action}", extra=fields)
    if outcome.action == "indexed":
        metrics.add_metric(name="FilesIndexed", unit=MetricUnit.Count, value=1)
        metrics.add_metric(name="ChunksIndexed", unit=MetricUnit.Count, value=outcome.chunks)
        metrics.add_metric(name="ChunksEmbedded", unit=MetricUnit.Count, value=outcome.embedded)
        metrics.add_metric(name="EmbeddingTokens", unit=MetricUnit.Count, value=outcome.usage.prompt_tokens)
        metrics.add_metric(name="EstimatedCostUSD", unit=MetricUnit.NoUnit, value=outcome.usage.cost_usd)
        metrics.add_metric(name="IndexingSeconds", unit=MetricUnit.Seconds, value=outcome.seconds)
    elif outcome.action == "removed":
        metrics.add_metric(name="FilesRemoved", unit=MetricUnit.Count, value=1)
    elif outcome.action == "swept":
        metrics.add_metric(name="StaleChunksSwept", unit=MetricUnit.Count, value=outcome.removed)
    elif outcome.action == "continued":
        metrics.add_metric(name="FilesContinued", unit=MetricUnit.Count, value=1)
    elif outcome.action != "skipped":
        # stale, superseded or already gone: a replayed or late event that cost nothing
        metrics.add_metric(name="EventsIgnored", unit=MetricUnit.Count, value=1)


def process(event: ObjectEvent, deadline: float | None = None) -> Outcome:
    # thread-local keys: records run concurrently, each on its own thread
    logger.thread_safe_append_keys(s3_key=event.key, s3_action=event.action)
    try:
        prefetched = _prefetched.get()
        known = prefetched.take(event) if prefetched is not None else UNKNOWN
        outcome = get_indexer().handle(event, deadline=deadline, known=known)
    finally:
        logger.thread_safe_remove_keys(["s3_key", "s3_action"])
    report(outcome)
    return outcome


def deadline_of(context: Any, stop_before: float) -> float | None:
    """When to stop starting work (``time.monotonic()`` seconds), from the invocation's remaining time."""
    remaining = getattr(context, "get_remaining_time_in_millis", None)
    return time.monotonic() + remaining() / 1000 - stop_before if callable(remaining) else None


def retry_delay(tries: int, error: BaseException, base: int, cap: int) -> int:
    """Seconds before a failed record is tried again: at once after running out of time (the work
    done is kept, so the next try goes further), else base × 4^(tries-1), at most ``cap``."""
    if isinstance(error, OutOfTime):
        return 0
    return min(cap, base * int(4 ** max(tries - 1, 0)))


def record_handler(record: SQSRecord, lambda_context: LambdaContext | None = None) -> list[dict[str, Any]]:
    """One SQS message: an S3 notification with one or more object events. Raising fails only it."""
    settings = get_settings()
    deadline = deadline_of(lambda_context, settings.stop_before_timeout_seconds)
    events: list[ObjectEvent] = []
    token = _source_queue.set(record.event_source_arn or None)
    try:
        try:
            events = parse_notification(record.body)
        except BadEvent as exc:
            if dead_letter(record, settings, exc):
                return []
            raise
        return [process(e, deadline).model_dump(mode="json") for e in events]
    except Exception as exc:
        tries = int(record.attributes.approximate_receive_count or 1)
        delay = retry_delay(tries, exc, settings.retry_base_seconds, settings.retry_max_seconds)
        _retry_after[record.message_id] = delay
        # The line to find when a message reaches the dead-letter queue: which file, why, which try.
        (logger.warning if isinstance(exc, OutOfTime) else logger.error)(
            "record failed; it will be tried again",
            extra={
                "message_id": record.message_id,
                "s3_keys": [e.key for e in events][:20],
                "error": type(exc).__name__,
                "reason": str(exc)[:500],
                "tries": tries,
                "retry_in_seconds": delay,
            },
        )
        raise
    finally:
        _source_queue.reset(token)


def dead_letter(record: SQSRecord, settings: Settings, error: BadEvent) -> bool:
    """Move a poison message to the dead-letter queue now (retries cannot fix it) and log it once.
    The queue is ``DEAD_LETTER_QUEUE_URL``, else the source queue's redrive target. Returns False
    (the record then fails and is retried as usual) when it cannot be sent."""
    try:
        url = settings.dead_letter_queue_url or _dead_letter_url(record.event_source_arn)
        _sqs().send_message(
            QueueUrl=url,
            MessageBody=record.body or "",
            MessageAttributes={
                "reason": {"DataType": "String", "StringValue": str(error)[:500] or "poison"},
                "sourceMessageId": {"DataType": "String", "StringValue": record.message_id},
            },
        )
    except Exception as exc:
        logger.error(
            "poison message could not be moved to the dead-letter queue; it will be retried",
            extra={"message_id": record.message_id, "reason": str(error)[:500], "error": type(exc).__name__},
        )
        return False
    logger.error(
        "poison message moved to the dead-letter queue",
        extra={"message_id": record.message_id, "error": type(error).__name__, "reason": str(error)[:500]},
    )
    metrics.add_metric(name="PoisonMessages", unit=MetricUnit.Count, value=1)
    return True


@cache
def _dead_letter_url(source_arn: str) -> str:
    attrs = _sqs().get_queue_attributes(QueueUrl=_queue_url(source_arn), AttributeNames=["RedrivePolicy"])
    target = json.loads(attrs["Attributes"]["RedrivePolicy"])["deadLetterTargetArn"]
    return _queue_url(str(target))


@cache
def _sqs() -> Any:
    import boto3

    return boto3.client("sqs")


@cache
def _queue_url(arn: str) -> str:
    _, _, _, _, account, name = arn.split(":", 5)
    return str(_sqs().get_queue_url(QueueName=name, QueueOwnerAWSAccountId=account)["QueueUrl"])


def delay_retries(records: list[dict[str, Any]]) -> None:
    """Give each failed message its own visibility timeout, i.e. its time until the next try.
    Best effort: if this fails, the message returns after the queue's visibility timeout."""
    for r in records:
        delay = _retry_after.pop(r.get("messageId", ""), None)
        if delay is None:
            continue
        try:
            _sqs().change_message_visibility(
                QueueUrl=_queue_url(r["eventSourceARN"]), ReceiptHandle=r["receiptHandle"], VisibilityTimeout=delay
            )
        except Exception as exc:
            logger.warning(
                "could not set the retry delay; the queue's visibility timeout applies",
                extra={"message_id": r.get("messageId"), "error": type(exc).__name__},
            )


def record_keys(body: str | None) -> set[tuple[str, str]]:
    """The (bucket, key) pairs a record's notification names; none for a message that does not
    parse (it is dead-lettered on its own)."""
    try:
        return {(e.bucket, e.key) for e in parse_notification(body or "")}
    except Exception:  # grouping is best effort: the record handler reports the error
        return set()


def key_groups(keys: Sequence[set[tuple[str, str]]]) -> list[list[int]]:
    """Record indices grouped so that records sharing a key are in one group, in batch order.

    Such records run one after another: a duplicate or an overwrite of a key then meets the
    first one's commit instead of racing it (the commit's compare-and-set would make the race safe
    too, but in order the later event's work is not wasted, and an out-of-order pair is as S3 sent it)."""
    owner: dict[tuple[str, str], int] = {}
    parent = list(range(len(keys)))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for i, ks in enumerate(keys):
        for k in ks:
            if k in owner:
                a, b = find(owner[k]), find(i)
                parent[max(a, b)] = min(a, b)
            else:
                owner[k] = i
    groups: dict[int, list[int]] = {}
    for i in range(len(keys)):
        groups.setdefault(find(i), []).append(i)
    return list(groups.values())


class ConcurrentBatchProcessor(BatchProcessor):
    """Powertools' SQS batch processor running up to ``workers`` records at once, records that
    name the same key in order on one thread. Success and failure are still collected per record
    (the processor appends to lists, safe across threads), so partial batch responses, poison
    handling and retry delays are those of the sequential processor."""

    def __init__(self, workers: int) -> None:
        super().__init__(event_type=EventType.SQS, raise_on_entire_batch_failure=False)
        self.workers = max(1, workers)

    def process(self) -> list[tuple[Any, ...]]:
        records = list(self.records)
        groups = key_groups([record_keys(r.get("body")) for r in records])
        if self.workers == 1 or len(groups) <= 1:
            return super().process()

        try:  # once, before the records race to create the index (each would wait on the others)
            indexer = get_indexer()
            indexer.store.ensure_index()
            known = prefetch(indexer, [r.get("body") for r in records])
        except Exception as exc:  # each record meets the failure again and reports it as its own
            logger.warning("index not ready before the batch", extra={"error": type(exc).__name__})
            known = None

        def run(group: list[int]) -> list[tuple[Any, ...]]:
            token = _prefetched.set(known)  # a pool thread's context: set for this group only
            try:
                return [self._process_record(records[i]) for i in group]
            finally:
                _prefetched.reset(token)

        with ThreadPoolExecutor(max_workers=min(self.workers, len(groups)), thread_name_prefix="record") as pool:
            return [r for rs in pool.map(run, groups) for r in rs]


def _is_direct_s3(event: dict[str, Any]) -> bool:
    records = event.get("Records") or []
    return event.get("Event") == "s3:TestEvent" or (
        bool(records) and all(r.get("eventSource") == "aws:s3" for r in records)
    )


@logger.inject_lambda_context(clear_state=True)
@metrics.log_metrics(raise_on_empty_metrics=False)
def lambda_handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    if _is_direct_s3(event):
        # Direct S3 invocation is asynchronous: raising makes Lambda retry, then its on-failure
        # destination/DLQ takes the event.
        return {"outcomes": [process(e).model_dump(mode="json") for e in parse_notification(event)]}
    # One processor per invocation (it holds the batch's state), so concurrent invocations in one
    # process (the tests' threads) cannot mix. An all-failed batch is reported item by item, not
    # raised: the same records fail the same way beside a good one or not (and a raise is a Lambda error).
    processor = ConcurrentBatchProcessor(get_settings().indexer_record_concurrency)
    response = process_partial_response(
        event=event, record_handler=record_handler, processor=processor, context=context
    )
    delay_retries(event.get("Records", []))
    failed = len(response.get("batchItemFailures", []))
    metrics.add_metric(name="RecordsFailed", unit=MetricUnit.Count, value=failed)
    return dict(response)
