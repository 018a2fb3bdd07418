"""A file too big for one invocation, and the pace of retries: the indexer stops before the
function's timeout keeping what it embedded, and gives each failed message its own delay."""

from __future__ import annotations

import json
import time
from typing import Any

import boto3
import pytest
from aws_lambda_powertools.utilities.batch.exceptions import BatchProcessingError
from indexer import handler
from indexer.events import parse_notification
from indexer.pipeline import OutOfTime
from rag_shared.errors import StoreError

from local.lambda_context import FakeContext
from local.sqs_pump import to_lambda_event
from standins.corpus import document
from standins.dashscope import Fault
from tests.indexer.test_handler import store_for


def test_retry_delay_grows_fourfold_up_to_the_cap_and_is_zero_after_running_out_of_time():
    err = StoreError("OpenSearch unavailable")
    assert [handler.retry_delay(n, err, 30, 900) for n in (1, 2, 3, 4, 5)] == [30, 120, 480, 900, 900]
    assert handler.retry_delay(3, OutOfTime("stopped"), 30, 900) == 0


def test_deadline_comes_from_the_remaining_time():
    before = time.monotonic()
    deadline = handler.deadline_of(FakeContext(remaining_ms=300_000), 60)
    assert deadline is not None and before + 239.9 < deadline < time.monotonic() + 240
    assert handler.deadline_of(None, 60) is None


def test_a_file_too_big_for_one_invocation_resumes_without_embedding_twice(uploader, dashscope, indexer_env):
    ix = handler.get_indexer()
    ix.config.window = 25  # one embedding call per window
    dashscope.latency = 0.2
    (event,) = parse_notification(json.dumps(uploader.put("docs/huge.txt", document(100))))
    ix.store.ensure_index()  # the cold start's index setup is not what the 50 ms below are about
    with pytest.raises(OutOfTime, match=r"stopped after 50 chunks .* the retry resumes"):
        ix.handle(event, deadline=time.monotonic() + 0.05)  # time runs out during the first window
    first = len(dashscope.calls("/embeddings"))
    assert first == 2  # the window in flight was finished and written, not thrown away
    ix.store.refresh()  # as a domain does each second; the retry comes minutes later
    outcome = ix.handle(event)  # the retry
    assert (outcome.action, outcome.chunks, outcome.cached, outcome.embedded) == ("indexed", 100, 50, 50)
    assert len(dashscope.calls("/embeddings")) == first + 2
    store = store_for(indexer_env)
    hits = store.client.search(
        index=store.index, body={"size": 500, "query": {"term": {"source_key": "docs/huge.txt"}}}
    )
    assert sorted(h["_source"]["chunk_number"] for h in hits["hits"]["hits"]) == list(range(100))  # no copies


@pytest.fixture
def queue(aws: str) -> tuple[Any, str]:
    sqs = boto3.client("sqs", region_name="us-east-1")
    url = sqs.create_queue(QueueName=f"retries-{time.monotonic_ns()}", Attributes={"VisibilityTimeout": "600"})
    return sqs, url["QueueUrl"]


def _deliver(sqs: Any, url: str, context: FakeContext) -> dict[str, Any] | None:
    """One receive and one invocation, as the event source mapping does; None if nothing came."""
    got = sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10, AttributeNames=["All"]).get("Messages")
    if not got:
        return None
    arn = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    try:
        result: dict[str, Any] = handler.lambda_handler(to_lambda_event(got, arn, "us-east-1"), context)
    except BatchProcessingError:
        return {"batchItemFailures": [{"itemIdentifier": m["MessageId"]} for m in got]}
    for m in got:
        if m["MessageId"] not in {f["itemIdentifier"] for f in result["batchItemFailures"]}:
            sqs.delete_message(QueueUrl=url, ReceiptHandle=m["ReceiptHandle"])
    return result


def test_a_failed_message_comes_back_after_its_backoff_not_the_queue_timeout(uploader, dashscope, queue, monkeypatch):
    sqs, url = queue
    monkeypatch.setenv("RETRY_BASE_SECONDS", "2")
    monkeypatch.setenv("DASHSCOPE_MAX_RETRIES", "0")
    handler.reset()
    sqs.send_message(QueueUrl=url, MessageBody=json.dumps(uploader.put("docs/a.txt", document(3))))
    dashscope.inject(Fault(status=503, code="ServiceUnavailable"), times=1)
    assert _deliver(sqs, url, FakeContext())["batchItemFailures"]  # type: ignore[index]
    assert _deliver(sqs, url, FakeContext()) is None  # not back at once...
    time.sleep(2.3)
    assert _deliver(sqs, url, FakeContext()) == {"batchItemFailures": []}  # ...but after 2 s, not 600


def test_records_left_when_time_runs_out_are_retried_at_once(uploader, dashscope, queue, monkeypatch):
    sqs, url = queue
    monkeypatch.setenv("STOP_BEFORE_TIMEOUT_SECONDS", "60")
    handler.reset()
    for key in ("docs/a.txt", "docs/b.txt"):
        sqs.send_message(QueueUrl=url, MessageBody=json.dumps(uploader.put(key, document(3))))
    out_of_time = FakeContext(remaining_ms=30_000)  # less than the margin: nothing may start
    calls = len(dashscope.calls())
    failed: set[str] = set()
    while len(failed) < 2:  # the two messages may come in one receive or two
        result = _deliver(sqs, url, out_of_time)
        assert result is not None
        failed |= {f["itemIdentifier"] for f in result["batchItemFailures"]}
    assert len(dashscope.calls()) == calls  # nothing was started
    done = 0
    while done < 2:  # back at once, not in 600 s
        result = _deliver(sqs, url, FakeContext())
        assert result == {"batchItemFailures": []}
        done = store_for(None).count("docs/a.txt") + store_for(None).count("docs/b.txt")
