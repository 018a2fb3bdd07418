"""The fault matrix: each fault against the stand-ins, through the production path (S3 notification →
SQS with a redrive policy → indexer), then one invariant: every uploaded file is either indexed (or
skipped with a logged reason, which is final) or its message sits in the dead-letter queue. Nothing is
lost, nothing is stuck, and no secret appears in anything the process printed or logged."""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote_plus

import boto3
import httpx
import pytest
from chat.app import create_app
from chat.service import ChatDeps
from chat.settings import ChatSettings
from indexer import handler
from rag_shared.config import load_settings
from rag_shared.store import VectorStore, make_client

from local.servers import AppServer
from local.sqs_pump import drain
from standins.dashscope import Fault
from standins.proxy import FlakyProxy
from tests.conftest import API_KEY

MAX_RECEIVES = 3
CHAT_TOKEN = "fault-matrix-chat-token-0001"
GOOD = "A good document about invoices and receipts. " * 20


@dataclass
class World:
    """The deployed shape on loopback: bucket → queue (→ DLQ after 3 receives) → indexer."""

    s3: Any
    sqs: Any
    bucket: str
    queue: str
    dlq: str
    dashscope: Any
    opensearch: Any
    env: pytest.MonkeyPatch
    secrets_proxy: FlakyProxy | None = None
    uploaded: dict[str, str] = field(default_factory=dict)  # key -> etag ('' once deleted)

    def put(self, key: str, body: bytes | str, content_type: str = "text/plain") -> None:
        data = body.encode() if isinstance(body, str) else body
        self.uploaded[key] = self.s3.put_object(Bucket=self.bucket, Key=key, Body=data, ContentType=content_type)[
            "ETag"
        ].strip('"')

    def delete(self, key: str) -> None:
        self.s3.delete_object(Bucket=self.bucket, Key=key)
        self.uploaded[key] = ""

    def run(self, timeout: float = 60) -> None:
        drain(self.sqs, self.queue, timeout=timeout)

    def store(self) -> VectorStore:
        s = load_settings()
        st = VectorStore.from_settings(s)
        st.refresh()
        return st

    def dead_letters(self) -> set[str]:
        keys = set()
        for _ in range(5):
            # peek: VisibilityTimeout=0 leaves them in the queue for the next look
            got = self.sqs.receive_message(QueueUrl=self.dlq, MaxNumberOfMessages=10, VisibilityTimeout=0)
            for m in got.get("Messages", []):
                try:
                    for r in json.loads(m["Body"]).get("Records", []):
                        keys.add(unquote_plus(r["s3"]["object"]["key"]))
                except (ValueError, AttributeError, KeyError):
                    keys.add(f"<unparseable:{m['Body'][:30]}>")
            if not got.get("Messages"):
                break
        return keys


@pytest.fixture
def world(monkeypatch, aws, dashscope, vector_store, index_name, s3, bucket, commit_table) -> Iterator[World]:
    sqs = boto3.client("sqs", region_name="us-east-1")
    dlq = sqs.create_queue(QueueName=f"{bucket}-dlq")["QueueUrl"]
    dlq_arn = sqs.get_queue_attributes(QueueUrl=dlq, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    queue = sqs.create_queue(
        QueueName=f"{bucket}-q",
        Attributes={
            "VisibilityTimeout": "1",
            "RedrivePolicy": json.dumps({"deadLetterTargetArn": dlq_arn, "maxReceiveCount": str(MAX_RECEIVES)}),
        },
    )["QueueUrl"]
    arn = sqs.get_queue_attributes(QueueUrl=queue, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    s3.put_bucket_notification_configuration(
        Bucket=bucket,
        NotificationConfiguration={
            "QueueConfigurations": [{"QueueArn": arn, "Events": ["s3:ObjectCreated:*", "s3:ObjectRemoved:*"]}]
        },
    )
    sqs.purge_queue(QueueUrl=queue)
    env = {
        "DASHSCOPE_BASE_URL": dashscope.base_url,
        "DASHSCOPE_API_KEY": API_KEY,
        "DASHSCOPE_MAX_RETRIES": "3",
        "DASHSCOPE_TIMEOUT_SECONDS": "1",
        "OPENSEARCH_URL": vector_store.url,
        "OPENSEARCH_SERVICE": "aoss" if vector_store.serverless else "es",
        "OPENSEARCH_INDEX": index_name,
        "CHUNK_SIZE_TOKENS": "200",
        "CHUNK_OVERLAP_TOKENS": "30",
        "MAX_FILE_BYTES": "100000",
        "RETRY_BASE_SECONDS": "1",  # the handler sets each failed message's delay: 1 s, like the queue's
        "RETRY_MAX_SECONDS": "1",
        "COMMIT_TABLE": commit_table,
    }
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    handler.reset()
    w = World(s3, sqs, bucket, queue, dlq, dashscope, vector_store, env=monkeypatch)
    yield w
    handler.reset()
    if w.secrets_proxy:
        w.secrets_proxy.close()


def assert_nothing_lost(world: World) -> None:
    """Every uploaded key is accounted for: applied (indexed, skipped, removed) or dead-lettered; the
    committed chunk count is the live count, and no other version's chunk is left."""
    store = world.store()
    dead = world.dead_letters()
    for key, etag in world.uploaded.items():
        commit = store.commits.get(key)  # type: ignore[union-attr]
        if key in dead:
            continue
        assert commit is not None, f"{key}: neither applied nor in the DLQ"
        if etag == "":
            assert commit.deleted and store.count(key) == 0, f"{key}: deleted but chunks remain"
        else:
            assert commit.etag == etag, f"{key}: index holds another version"
            assert store.count(key, version=commit.version) == commit.chunks == store.count(key), (
                f"{key}: {store.count(key)} chunks, commit says {commit.chunks}"
            )


def assert_no_secret_printed(capfd: Any, caplog: Any) -> None:
    out, err = capfd.readouterr()
    for text in (out, err, caplog.text):
        assert API_KEY not in text
        assert CHAT_TOKEN not in text


# --- the indexer faults -------------------------------------------------------------------------


def dashscope_429_burst(w: World) -> set[str]:
    w.dashscope.inject(Fault(status=429, code="Throttling.RateQuota", retry_after=0.05), times=8)
    w.put("docs/a.txt", GOOD)
    return set()


def dashscope_5xx(w: World) -> set[str]:
    w.dashscope.inject(Fault(status=500), times=2)
    w.dashscope.inject(Fault(status=503, code="ServiceUnavailable"), times=2)
    w.put("docs/a.txt", GOOD)
    return set()


def dashscope_timeouts(w: World) -> set[str]:
    w.dashscope.inject(Fault(kind="slow", delay=1.5), times=2)
    w.put("docs/a.txt", GOOD)
    return set()


def dashscope_dropped_connections(w: World) -> set[str]:
    w.dashscope.inject(Fault(kind="drop"), times=3)
    w.put("docs/a.txt", GOOD)
    return set()


def dashscope_down_for_good(w: World) -> set[str]:
    w.dashscope.inject(Fault(status=503, code="ServiceUnavailable", retry_after=0.01), times=1000)
    w.put("docs/a.txt", GOOD)
    return {"docs/a.txt"}  # retried by SQS, then dead-lettered: recoverable by a redrive


def opensearch_bulk_item_failures(w: World) -> set[str]:
    w.opensearch.fail_items(5, status=429)
    w.put("docs/a.txt", GOOD)
    return set()


def opensearch_throttled_and_unavailable(w: World) -> set[str]:
    w.opensearch.fail_requests(2, status=429)
    w.opensearch.fail_requests(2, status=503)
    w.put("docs/a.txt", GOOD)
    return set()


def opensearch_index_deleted_under_a_warm_function(w: World) -> set[str]:
    from indexer.backfill import backfill

    w.put("docs/first.txt", GOOD)
    w.run()
    s = load_settings()
    make_client(s).indices.delete(index=s.opensearch_index)
    w.put("docs/second.txt", "Another document, about travel policy. " * 10)
    w.run()  # the write recreates the index (with its k-NN mapping) and restarts second.txt afresh
    summary = backfill(handler.get_indexer(), w.bucket, "", progress=False)  # the documented recovery
    assert summary.actions["indexed"] == 1 and not summary.failed  # first.txt again; second.txt unchanged
    return set()


def secrets_manager_unavailable_then_recovered(w: World) -> set[str]:
    sm = boto3.client("secretsmanager", region_name="us-east-1")
    arn = sm.create_secret(Name=f"{w.bucket}-key", SecretString=json.dumps({"api_key": API_KEY}))["ARN"]
    endpoint = httpx.URL(str(sm.meta.endpoint_url))
    w.secrets_proxy = FlakyProxy(endpoint.host, endpoint.port or 80)
    w.env.delenv("DASHSCOPE_API_KEY")  # undone at teardown, so later tests see the real endpoint
    w.env.setenv("DASHSCOPE_SECRET_ARN", arn)
    w.env.setenv("AWS_ENDPOINT_URL_SECRETS_MANAGER", w.secrets_proxy.url)
    handler.reset()
    w.secrets_proxy.up = False
    w.put("docs/a.txt", GOOD)
    # the first delivery fails (retryable); Secrets Manager recovers before the message's next receive
    threading.Timer(0.6, lambda: setattr(w.secrets_proxy, "up", True)).start()
    return set()


def duplicate_and_replayed_events(w: World) -> set[str]:
    w.put("docs/a.txt", GOOD)
    w.run()
    # S3 delivers at least once: send the very same notification twice more
    msgs = w.sqs.receive_message(QueueUrl=w.queue, WaitTimeSeconds=0).get("Messages", [])
    assert not msgs
    commit = w.store().commits.get("docs/a.txt")  # type: ignore[union-attr]
    assert commit is not None
    obj = {"key": "docs/a.txt", "eTag": commit.etag, "sequencer": commit.sequencer}
    record = {
        "eventSource": "aws:s3",
        "eventName": "ObjectCreated:Put",
        "s3": {"bucket": {"name": w.bucket}, "object": obj},
    }
    body = {"Records": [record]}
    before = len(w.dashscope.calls("/embeddings"))
    for _ in range(2):
        w.sqs.send_message(QueueUrl=w.queue, MessageBody=json.dumps(body))
    w.run()
    assert len(w.dashscope.calls("/embeddings")) == before  # replays cost nothing
    return set()


def out_of_order_events(w: World) -> set[str]:
    w.put("docs/a.txt", "First version. " * 10)
    w.put("docs/a.txt", "Second version. " * 10)
    w.put("docs/b.txt", GOOD)
    w.delete("docs/b.txt")
    # reverse the queue: receive everything, send it back newest first
    msgs = []
    while got := w.sqs.receive_message(QueueUrl=w.queue, MaxNumberOfMessages=10).get("Messages"):
        msgs += got
    for m in reversed(msgs):
        w.sqs.send_message(QueueUrl=w.queue, MessageBody=m["Body"])
        w.sqs.delete_message(QueueUrl=w.queue, ReceiptHandle=m["ReceiptHandle"])
    return set()


def object_deleted_before_processing(w: World) -> set[str]:
    w.put("docs/a.txt", GOOD)
    w.s3.delete_object(Bucket=w.bucket, Key="docs/a.txt")  # its delete event follows the create
    w.uploaded["docs/a.txt"] = ""
    return set()


def bad_files(w: World) -> set[str]:
    w.put("docs/empty.txt", b"")
    w.put("docs/binary.bin", bytes(range(256)) * 8, "application/octet-stream")
    w.put("docs/huge.txt", "x " * 60_000)
    w.put("docs/latin1.txt", "crème brûlée à la carte".encode("latin-1"))
    w.put("docs/broken.pdf", b"%PDF-1.7\n this is not really a pdf", "application/pdf")
    w.put("docs/good.md", "# Title\n\n" + GOOD, "text/markdown")
    return set()  # skipped with a reason (final) or indexed: none retried, none lost


def poison_message(w: World) -> set[str]:
    w.sqs.send_message(QueueUrl=w.queue, MessageBody="{not json")
    w.put("docs/a.txt", GOOD)
    return {"<unparseable:{not json>"}


FAULTS: list[Callable[[World], set[str]]] = [
    dashscope_429_burst,
    dashscope_5xx,
    dashscope_timeouts,
    dashscope_dropped_connections,
    dashscope_down_for_good,
    opensearch_bulk_item_failures,
    opensearch_throttled_and_unavailable,
    opensearch_index_deleted_under_a_warm_function,
    secrets_manager_unavailable_then_recovered,
    duplicate_and_replayed_events,
    out_of_order_events,
    object_deleted_before_processing,
    bad_files,
    poison_message,
]


@pytest.mark.parametrize("fault", FAULTS, ids=[f.__name__ for f in FAULTS])
def test_indexing_fault(world, fault, capfd, caplog):
    caplog.set_level(logging.INFO)
    expected_dead = fault(world)
    world.run()
    assert_nothing_lost(world)
    assert world.dead_letters() == expected_dead
    assert_no_secret_printed(capfd, caplog)


def test_out_of_order_leaves_the_newest_state(world):
    out_of_order_events(world)
    world.run()
    store = world.store()
    assert store.count("docs/b.txt") == 0
    hits = [h.text for h in store.search([1.0] + [0.0] * (store.dimensions - 1), 10)]
    assert all("First version" not in t for t in hits)


# --- the chat faults ----------------------------------------------------------------------------


@pytest.fixture
def chat_url(settings, client, embedder, store):
    deps = ChatDeps(settings, client, embedder, store)
    cs = ChatSettings(chat_auth_mode="token", chat_api_token=CHAT_TOKEN, max_body_bytes=32 * 1024)
    with AppServer(create_app(deps, cs)) as srv:
        yield srv.url


ASK = {"messages": [{"role": "user", "content": "What is the travel policy?"}]}
AUTH = {"Authorization": f"Bearer {CHAT_TOKEN}"}
CHAT_FAULTS = [
    ("malformed", b"{nope", AUTH, 400),
    ("oversized", json.dumps({"messages": [{"role": "user", "content": "x" * 40_000}]}).encode(), AUTH, 413),
    ("unauthenticated", json.dumps(ASK).encode(), {}, 401),
    ("wrong-token", json.dumps(ASK).encode(), {"Authorization": "Bearer nope"}, 401),
    ("schema", json.dumps({"messages": [{"role": "user"}]}).encode(), AUTH, 422),
]


@pytest.mark.parametrize(("name", "body", "headers", "status"), CHAT_FAULTS, ids=[c[0] for c in CHAT_FAULTS])
def test_chat_bad_requests_are_refused_before_any_work(chat_url, dashscope, capfd, caplog, name, body, headers, status):
    r = httpx.post(
        f"{chat_url}/chat/completions/stream", content=body, headers={**headers, "Content-Type": "application/json"}
    )
    assert r.status_code == status and r.json()["error"]["message"]
    assert dashscope.calls() == []
    assert_no_secret_printed(capfd, caplog)


def test_chat_stream_dropped_midway_ends_with_an_error_event(chat_url, dashscope):
    dashscope.inject(Fault(kind="drop_stream", after_chunks=3, path="/chat/completions"))
    with httpx.stream("POST", f"{chat_url}/chat/completions/stream", json={**ASK, "use_rag": False}, headers=AUTH) as r:
        text = r.read().decode()
    assert "event: delta" in text and "event: error" in text and text.rstrip().endswith("}")
    assert text.index("event: error") < text.index("event: done")


def test_fifty_concurrent_streams_all_complete(chat_url, dashscope):
    dashscope.chunk_delay = 0.01
    results: list[tuple[int, str]] = []
    lock = threading.Lock()

    def one(i: int) -> None:
        body = {"messages": [{"role": "user", "content": f"question number {i}"}], "use_rag": i % 2 == 0}
        with httpx.Client(timeout=60) as c:
            r = c.post(f"{chat_url}/chat/completions/stream", json=body, headers=AUTH)
        with lock:
            results.append((r.status_code, r.text))

    threads = [threading.Thread(target=one, args=(i,)) for i in range(50)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert len(results) == 50
    for status, text in results:
        assert status == 200
        assert "event: usage" in text and "event: done" in text and "event: error" not in text
    assert dashscope.max_in_flight > 1  # they really overlapped
