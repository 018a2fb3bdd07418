"""A file too big for one invocation, and the pace of retries: the indexer stops before the
function's timeout keeping what it wrote and continues in a message of its own (with a cursor), and
gives each failed message its own delay."""

from __future__ import annotations

import json
import time
from typing import Any

import boto3
import pytest
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


def test_without_a_queue_a_file_too_big_for_one_invocation_is_retried_without_embedding_twice(
    uploader, dashscope, indexer_env
):
    ix = handler.get_indexer()
    ix.continuer = None  # a direct S3 invocation: no queue to continue from
    ix.config.window = 25  # one embedding call per window
    dashscope.latency = 0.2
    (event,) = parse_notification(json.dumps(uploader.put("docs/huge.txt", document(100))))
    ix.store.ensure_index()  # the cold start's index setup is not what the 50 ms below are about
    with pytest.raises(OutOfTime, match=r"stopped after \d+ chunks .* the retry starts again") as info:
        ix.handle(event, deadline=time.monotonic() + 0.05)  # time runs out during the first window
    done = int(str(info.value).split()[2])
    assert ix.store.search([1.0] * ix.store.dimensions, 10) == []  # nothing of it is visible
    first = len(dashscope.calls("/embeddings"))
    assert first == done // 25 >= 1  # the windows in flight were finished and written, not thrown away
    ix.store.refresh()  # as a domain does each second; the retry comes minutes later
    outcome = ix.handle(event)  # the retry
    assert (outcome.action, outcome.chunks, outcome.cached, outcome.embedded) == ("indexed", 100, done, 100 - done)
    assert len(dashscope.calls("/embeddings")) == 4
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
    result: dict[str, Any] = handler.lambda_handler(to_lambda_event(got, arn, "us-east-1"), context)
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


def test_a_file_too_big_for_one_invocation_continues_in_its_own_messages_until_done(
    uploader, dashscope, queues, indexer_env, monkeypatch
):
    """Each invocation has time for about one window; the file still completes, every step is a
    fresh message (never a receive of the same one, so never toward maxReceiveCount), nothing is
    embedded twice, and no part of the file is visible before its commit."""
    monkeypatch.setenv("STOP_BEFORE_TIMEOUT_SECONDS", "0")
    handler.reset()
    ix = handler.get_indexer()
    ix.config.window = 25
    dashscope.latency = 0.1
    sqs = queues.sqs
    sqs.send_message(QueueUrl=queues.url, MessageBody=json.dumps(uploader.put("docs/huge.txt", document(100))))
    steps: list[int] = []
    for _ in range(10):
        got = sqs.receive_message(QueueUrl=queues.url, MaxNumberOfMessages=1, AttributeNames=["All"]).get("Messages")
        if not got:
            break
        assert got[0]["Attributes"]["ApproximateReceiveCount"] == "1"
        result = handler.lambda_handler(to_lambda_event(got, queues.arn, "us-east-1"), FakeContext(remaining_ms=10))
        assert result == {"batchItemFailures": []}
        sqs.delete_message(QueueUrl=queues.url, ReceiptHandle=got[0]["ReceiptHandle"])
        body = json.loads(got[0]["Body"])
        steps.append(body.get("qwenRagContinue", {}).get("cursor", 0))
        store = store_for(indexer_env)
        visible = store.search([1.0] * store.dimensions, 200)
        assert len(visible) in (0, 100)  # never a part of the file
    assert steps[0] == 0 and steps == sorted(steps) and len(steps) >= 3  # progress in every step
    store = store_for(indexer_env)
    commit = store.commits.get("docs/huge.txt")  # type: ignore[union-attr]
    assert commit is not None and commit.chunks == 100 == store.count("docs/huge.txt", version=commit.version)
    assert sum(c.size for c in dashscope.calls("/embeddings")) == 100  # no chunk embedded twice
    assert queues.dead_letters() == []
