"""An SQS batch's records run concurrently (issue 14 item 2): same-key records stay in order and
converge on what S3 serves, a failing record reports only its own itemIdentifier, small files
share embedding calls, and a continuation still works beside other records."""

from __future__ import annotations

import json
import threading
from typing import Any

from indexer import handler

from local.lambda_context import FakeContext
from local.sqs_pump import to_lambda_event
from standins.corpus import document, paragraph
from standins.dashscope import fake_embedding
from tests.events import sqs_event
from tests.indexer.test_handler import store_for


def doc(file: int, paragraphs: int) -> str:
    """A file of its own text (``document`` repeats one text, which the cache would serve)."""
    return "\n\n".join(paragraph(1000 + file * 10 + i) for i in range(paragraphs))


class Tracker:
    """Wraps handler.process: the peak of records in flight, and any overlap of one key."""

    def __init__(self, monkeypatch: Any) -> None:
        self.lock = threading.Lock()
        self.active: dict[str, int] = {}
        self.peak = 0
        self.overlaps: list[str] = []
        original = handler.process

        def process(event: Any, deadline: float | None = None) -> Any:
            with self.lock:
                if self.active.get(event.key):
                    self.overlaps.append(event.key)
                self.active[event.key] = self.active.get(event.key, 0) + 1
                self.peak = max(self.peak, sum(self.active.values()))
            try:
                return original(event, deadline)
            finally:
                with self.lock:
                    self.active[event.key] -= 1

        monkeypatch.setattr(handler, "process", process)


def test_key_groups_keep_records_of_one_key_together_in_order():
    a, b, c = ("b", "a"), ("b", "b"), ("b", "c")
    assert handler.key_groups([{a}, {b}, {a}, set(), {b, c}, {c}]) == [[0, 2], [1, 4, 5], [3]]


def test_duplicates_and_overwrites_of_one_key_in_one_batch_converge_on_what_s3_serves(uploader, monkeypatch):
    """Per key: v1's event, v2's event (S3 now serves v2), a duplicate of v2's, and for odd keys
    the two versions' events in reverse order, all in one batch beside other keys."""
    tracker = Tracker(monkeypatch)
    bodies: list[dict[str, Any]] = []
    final: dict[str, str] = {}
    for n in range(6):
        key = f"docs/k{n}.txt"
        v1 = uploader.put(key, "\n\n".join(paragraph(n * 10 + i) for i in range(3)))
        final[key] = f"Version two of file {n}. " * 4
        v2 = uploader.put(key, final[key])
        bodies += [v2, v1, v2] if n % 2 else [v1, v2, v2]
    result = uploader.run(*bodies)
    assert result == {"batchItemFailures": []}
    assert tracker.peak > 1 and tracker.overlaps == []  # concurrent, never two records of a key at once
    store = store_for(None)
    for key, text in final.items():
        commit = store.commits.get(key)  # type: ignore[union-attr]
        assert commit is not None and not commit.deleted
        assert store.count(key) == 1 == commit.chunks  # only v2's chunk, no leftover of v1
        visible = [h for h in store.search(fake_embedding(text.strip(), 1536), 50) if h.source_key == key]
        assert [(h.text, h.version) for h in visible] == [(text.strip(), commit.version)]


def test_one_failing_record_among_concurrent_ones_reports_only_its_identifier(uploader, s3, monkeypatch):
    tracker = Tracker(monkeypatch)
    good = [uploader.put(f"docs/g{n}.txt", document(2)) for n in range(5)]
    bad = uploader.put("docs/g-missing.txt", "x")
    bad["Records"][0]["s3"]["bucket"]["name"] = "no-such-bucket-for-this-test"
    event = sqs_event(*good[:3], bad, *good[3:])
    result = handler.lambda_handler(event, FakeContext())
    assert result == {"batchItemFailures": [{"itemIdentifier": event["Records"][3]["messageId"]}]}
    assert tracker.peak > 1
    store = store_for(None)
    assert all(store.count(f"docs/g{n}.txt") == 2 for n in range(5))


def test_small_files_in_one_batch_share_embedding_calls(uploader, dashscope, monkeypatch):
    """Eight files of 1-2 chunks: with packing they need far fewer calls than files (v2: 25 texts per
    call), and each file still has exactly its own chunks."""
    monkeypatch.setenv("EMBEDDING_PACK_LINGER_MS", "1000")
    handler.reset()
    bodies = [uploader.put(f"docs/s{n}.txt", doc(n, 1 + n % 2)) for n in range(8)]
    before = len(dashscope.calls("/embeddings"))
    result = uploader.run(*bodies)
    assert result == {"batchItemFailures": []}
    calls = dashscope.calls("/embeddings")[before:]
    store = store_for(None)
    counts = [store.count(f"docs/s{n}.txt") for n in range(8)]
    assert counts == [1 + n % 2 for n in range(8)]
    assert 1 <= len(calls) < 8 and sum(c.size for c in calls) == sum(counts)  # packed, each text once


def test_sequential_mode_makes_one_call_per_file(uploader, dashscope, monkeypatch):
    """INDEXER_RECORD_CONCURRENCY=1 and no linger: the previous one-record-at-a-time behaviour."""
    monkeypatch.setenv("EMBEDDING_PACK_LINGER_MS", "0")
    monkeypatch.setenv("INDEXER_RECORD_CONCURRENCY", "1")
    handler.reset()
    tracker = Tracker(monkeypatch)
    bodies = [uploader.put(f"docs/q{n}.txt", doc(20 + n, 1)) for n in range(4)]
    before = len(dashscope.calls("/embeddings"))
    assert uploader.run(*bodies) == {"batchItemFailures": []}
    assert len(dashscope.calls("/embeddings")) - before == 4 and tracker.peak == 1


def test_a_continuation_works_while_other_records_run(uploader, dashscope, queues, indexer_env, monkeypatch):
    """A file too big for the invocation continues in its own message while small files beside it
    finish; the continuation then completes it, nothing embedded twice."""
    monkeypatch.setenv("STOP_BEFORE_TIMEOUT_SECONDS", "0")
    handler.reset()
    ix = handler.get_indexer()
    ix.config.window = 25
    dashscope.latency = 0.05
    sqs = queues.sqs
    sqs.send_message(QueueUrl=queues.url, MessageBody=json.dumps(uploader.put("docs/huge.txt", document(60))))
    for n in range(4):
        sqs.send_message(QueueUrl=queues.url, MessageBody=json.dumps(uploader.put(f"docs/t{n}.txt", doc(40 + n, 1))))
    continued = False
    for _ in range(12):
        got = sqs.receive_message(QueueUrl=queues.url, MaxNumberOfMessages=10, AttributeNames=["All"]).get("Messages")
        if not got:
            break
        continued |= any("qwenRagContinue" in m["Body"] for m in got)
        result = handler.lambda_handler(to_lambda_event(got, queues.arn, "us-east-1"), FakeContext(remaining_ms=10))
        assert result == {"batchItemFailures": []}
        for m in got:
            sqs.delete_message(QueueUrl=queues.url, ReceiptHandle=m["ReceiptHandle"])
    store = store_for(indexer_env)
    commit = store.commits.get("docs/huge.txt")  # type: ignore[union-attr]
    assert continued and commit is not None and commit.chunks == 60 == store.count("docs/huge.txt")
    assert all(store.count(f"docs/t{n}.txt") == 1 for n in range(4))
    assert sum(c.size for c in dashscope.calls("/embeddings")) == 64  # no chunk embedded twice
    assert queues.dead_letters() == []
