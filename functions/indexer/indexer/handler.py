"""Lambda entry point of the indexer.

Production path: S3 → SQS → this function. Each SQS record is processed on its own (Powertools
batch processing); a record that fails is reported as a batch item failure, so only it returns
to the queue, and after the queue's maxReceiveCount it lands in the dead-letter queue. Files
that can never be indexed (binary, empty, bad encoding, too large) are logged and skipped: they
succeed, so they are not retried forever. A direct S3 event (``sam local invoke -e
events/s3-put.json``) is processed too.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import boto3
from aws_lambda_powertools import Logger, Metrics
from aws_lambda_powertools.metrics import MetricUnit
from aws_lambda_powertools.utilities.batch import BatchProcessor, EventType, process_partial_response
from aws_lambda_powertools.utilities.batch.exceptions import BatchProcessingError
from aws_lambda_powertools.utilities.data_classes.sqs_event import SQSRecord
from aws_lambda_powertools.utilities.typing import LambdaContext
from rag_shared.config import Settings, load_settings
from rag_shared.dashscope import DashScopeClient
from rag_shared.embeddings import Embedder
from rag_shared.secrets import ApiKeyProvider
from rag_shared.store import VectorStore

from indexer.events import ObjectEvent, parse_notification, sweep_message
from indexer.pipeline import Indexer, IndexerConfig, Outcome

logger = Logger(service="indexer")
metrics = Metrics(namespace="QwenRag", service="indexer")
processor = BatchProcessor(event_type=EventType.SQS)

_lock = threading.Lock()
_indexer: Indexer | None = None


def build_indexer(settings: Settings | None = None, *, s3: Any = None) -> Indexer:
    """Wire the indexer from settings (the environment by default)."""
    settings = settings or load_settings()
    client = DashScopeClient(settings, ApiKeyProvider.from_settings(settings))
    embedder = Embedder(
        client,
        settings.embedder,
        settings.dimensions,
        batch_size=settings.embedding_batch_size,
        concurrency=settings.embedding_concurrency,
    )
    config = IndexerConfig(
        chunk_size=settings.chunk_size_tokens,
        chunk_overlap=settings.chunk_overlap_tokens,
        max_file_bytes=settings.max_file_bytes,
    )
    store = VectorStore.from_settings(settings)
    return Indexer(s3 or boto3.client("s3"), store, embedder, config, sweeper=_sweeper(settings, store))


def _sweeper(settings: Settings, store: VectorStore) -> Callable[[ObjectEvent], None] | None:
    """Delayed sweep messages to the indexing queue (OpenSearch Serverless only)."""
    if store.custom_ids or not settings.sweep_queue_url:
        return None
    sqs, url, delay = boto3.client("sqs"), settings.sweep_queue_url, settings.sweep_delay_seconds

    def send(event: ObjectEvent) -> None:
        sqs.send_message(QueueUrl=url, MessageBody=sweep_message(event), DelaySeconds=delay)

    return send


def get_indexer() -> Indexer:
    """One per warm container: clients, key cache and connection pools are reused."""
    global _indexer
    with _lock:
        if _indexer is None:
            _indexer = build_indexer()
        return _indexer


def reset() -> None:
    """Forget the wired indexer, so the next event re-reads the configuration."""
    global _indexer
    with _lock:
        _indexer = None


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
    elif outcome.action != "skipped":
        # stale, superseded or already gone: a replayed or late event that cost nothing
        metrics.add_metric(name="EventsIgnored", unit=MetricUnit.Count, value=1)


def process(event: ObjectEvent) -> Outcome:
    logger.append_keys(s3_key=event.key, s3_action=event.action)
    try:
        outcome = get_indexer().handle(event)
    finally:
        logger.remove_keys(["s3_key", "s3_action"])
    report(outcome)
    return outcome


def record_handler(record: SQSRecord) -> list[dict[str, Any]]:
    """One SQS message: an S3 notification with one or more object events. Raising fails only it."""
    return [process(e).model_dump(mode="json") for e in parse_notification(record.body)]


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
    try:
        response = process_partial_response(
            event=event, record_handler=record_handler, processor=processor, context=context
        )
    except BatchProcessingError:  # every record failed: the whole batch goes back to the queue
        metrics.add_metric(name="RecordsFailed", unit=MetricUnit.Count, value=len(event.get("Records", [])))
        raise
    failed = len(response.get("batchItemFailures", []))
    metrics.add_metric(name="RecordsFailed", unit=MetricUnit.Count, value=failed)
    return dict(response)
