"""Regression tests for each way issue 10 found to lose or mix a document, against a domain and a
Serverless collection: concurrent duplicate deliveries, an overwrite race, an overwrite that fails
for good, a chunk index deleted mid-file, versioned buckets, delivery shapes and 1,024-byte keys."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from typing import Any
from urllib.parse import quote_plus

import pytest
from indexer import handler
from indexer.events import ObjectEvent, parse_notification
from indexer.pipeline import Indexer, Outcome
from rag_shared.store import VectorStore

from standins.corpus import document, paragraph
from standins.dashscope import fake_embedding
from tests.indexer.conftest import Uploader, next_seq
from tests.indexer.test_handler import store_for


def visible_texts(store: VectorStore, key: str) -> list[str]:
    """What a reader can retrieve of ``key`` (every committed chunk, nothing else)."""
    store.refresh()
    hits = store.search([1.0] * store.dimensions, 400)
    return sorted(h.text for h in hits if h.source_key == key)


def consistent(store: VectorStore, key: str) -> Any:
    """The invariants of one key: committed count = live count = visible count; no other chunk."""
    store.refresh()
    commit = store.commits.get(key)  # type: ignore[union-attr]
    assert commit is not None
    live = store.count(key, version=commit.version) if commit.version else 0
    assert live == commit.chunks == store.count(key) == len(visible_texts(store, key)), (
        f"commit says {commit.chunks}, live {live}, all {store.count(key)}"
    )
    return commit


def at_once(*calls: Callable[[], Outcome]) -> list[Outcome | BaseException]:
    """Run ``calls`` in threads released together (separate warm containers)."""
    barrier = threading.Barrier(len(calls))
    out: list[Outcome | BaseException] = [RuntimeError("not run")] * len(calls)

    def run(i: int) -> None:
        barrier.wait()
        try:
            out[i] = calls[i]()
        except BaseException as exc:
            out[i] = exc

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(calls))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    return out


def containers(n: int) -> list[Indexer]:
    """``n`` indexers wired as separate Lambda containers (own clients, pools, caches)."""
    return [handler.build_indexer() for _ in range(n)]


@pytest.mark.parametrize("run", range(3))
def test_the_same_event_delivered_twice_at_once_keeps_every_chunk(uploader, dashscope, indexer_env, run):
    """Was: in 5 of 6 runs zero chunks while the state claimed 33 (an equal sequencer was taken
    for a newer event, and the other delivery's chunks deleted)."""
    dashscope.latency = 0.02
    (event,) = parse_notification(uploader.put("docs/a.txt", document(33)))
    a, b = containers(2)
    outcomes = at_once(lambda: a.handle(event), lambda: b.handle(event))
    actions = sorted(o.action if isinstance(o, Outcome) else repr(o) for o in outcomes)
    assert actions in (["indexed", "superseded"], ["indexed", "stale"]), actions
    store = store_for(indexer_env)
    commit = consistent(store, "docs/a.txt")
    assert commit.chunks == 33
    # a later redelivery is a no-op, and the backfill agrees nothing is missing
    assert a.handle(event).action == "stale"
    from indexer.backfill import backfill

    assert backfill(a, uploader.bucket, "docs/", progress=False).actions["unchanged"] == 1
    consistent(store, "docs/a.txt")


def test_two_versions_at_once_leave_only_the_newer(uploader, dashscope, indexer_env, s3):
    """Was: both versions stayed searchable and the state pointed at the older one."""
    dashscope.latency = 0.02
    (old,) = parse_notification(uploader.put("docs/a.txt", "\n\n".join(f"Old {paragraph(i)}" for i in range(8))))
    old_etag = old.etag
    (new,) = parse_notification(uploader.put("docs/a.txt", "\n\n".join(f"New {paragraph(i)}" for i in range(3))))
    # the older event still reads its own version, as with a versioned read
    s3_old = {"Body": "\n\n".join(f"Old {paragraph(i)}" for i in range(8)).encode()}
    a, b = containers(2)

    class OldReader(Indexer):
        def _get_object(self, event: ObjectEvent) -> dict[str, Any]:
            import io

            return {"Body": io.BytesIO(s3_old["Body"]), "ContentLength": len(s3_old["Body"]), "ETag": old_etag}

    old_ix = OldReader(a.s3, a.store, a.embedder, a.config)
    at_once(lambda: old_ix.handle(old), lambda: b.handle(new))
    store = store_for(indexer_env)
    commit = consistent(store, "docs/a.txt")
    assert commit.sequencer.startswith(str(new.sequencer))
    texts = visible_texts(store, "docs/a.txt")
    assert len(texts) == 3 and all(t.startswith("New ") for t in texts)


def test_an_overwrite_that_fails_for_good_never_mixes_versions(uploader, vector_store, indexer_env):
    """Was: one bulk item rejected for good, the message dead-lettered, and retrieval served old and
    new chunks mixed."""
    uploader.run(uploader.put("docs/a.txt", "\n\n".join(f"Old {paragraph(i)}" for i in range(6))))
    vector_store.fail_items(1, status=400)  # rejected for good: the new version is never complete
    new = uploader.put("docs/a.txt", "\n\n".join(f"New {paragraph(i)}" for i in range(6)))
    for _ in range(2):  # tried, and tried again (the item fault fired on the first try)
        result = uploader.run(new)
        if result["batchItemFailures"]:
            store = store_for(indexer_env)
            texts = visible_texts(store, "docs/a.txt")
            assert len(texts) == 6 and all(t.startswith("Old ") for t in texts)  # the committed one only
    assert uploader.run(new) == {"batchItemFailures": []}
    store = store_for(indexer_env)
    consistent(store, "docs/a.txt")
    assert all(t.startswith("New ") for t in visible_texts(store, "docs/a.txt"))


def test_a_chunk_index_deleted_mid_file_is_never_committed_as_complete(uploader, indexer_env, queues):
    """Was: the state claimed the full count, a part was gone, and the backfill called it unchanged."""
    ix = handler.get_indexer()
    ix.config.window = 20
    write = ix.store.write_chunks
    calls = {"n": 0}

    def write_then_lose_the_index(docs):  # the index is deleted right after the first window landed
        done = write(docs)
        calls["n"] += 1
        if calls["n"] == 1:
            ix.store.client.indices.delete(index=ix.store.index)
        return done

    ix.store.write_chunks = write_then_lose_the_index  # type: ignore[method-assign]
    result = handler.lambda_handler(queues.event(uploader.put("docs/a.txt", document(60))), handler_context())
    assert result == {"batchItemFailures": []}
    assert calls["n"] >= 2
    store = store_for(indexer_env)
    assert store.commits.get("docs/a.txt") is None  # type: ignore[union-attr]  # nothing committed from the broken attempt
    (restart,) = queues.messages()
    assert json.loads(restart["Body"])["qwenRagContinue"]["cursor"] == 0  # afresh, under a new token
    assert handler.lambda_handler(queues.event(restart["Body"]), handler_context()) == {"batchItemFailures": []}
    commit = consistent(store_for(indexer_env), "docs/a.txt")
    assert commit.chunks == 60


def test_the_backfill_restores_committed_chunks_lost_with_the_index(uploader, indexer_env):
    from indexer.backfill import backfill

    uploader.run(uploader.put("docs/a.txt", document(5)))
    ix = handler.get_indexer()
    ix.store.client.indices.delete(index=ix.store.index)
    ix.store._ready = False
    summary = backfill(ix, uploader.bucket, "docs/", progress=False)
    assert summary.actions["indexed"] == 1 and summary.actions["unchanged"] == 0
    assert consistent(store_for(indexer_env), "docs/a.txt").chunks == 5


def handler_context() -> Any:
    from tests.events import FakeContext

    return FakeContext()


# --- versioned buckets ----------------------------------------------------------------------------


def versioned_event(
    bucket: str, key: str, name: str, version_id: str | None, etag: str | None = None
) -> dict[str, Any]:
    obj: dict[str, Any] = {"key": quote_plus(key, safe="/"), "sequencer": next_seq()}
    if version_id:
        obj["versionId"] = version_id
    if etag:
        obj["eTag"] = etag
    return {
        "Records": [{"eventSource": "aws:s3", "eventName": name, "s3": {"bucket": {"name": bucket}, "object": obj}}]
    }


@pytest.fixture
def versioned(uploader: Uploader) -> Uploader:
    uploader.s3.put_bucket_versioning(Bucket=uploader.bucket, VersioningConfiguration={"Status": "Enabled"})
    return uploader


def test_removing_a_noncurrent_version_keeps_the_live_document(versioned, indexer_env):
    """Was: an ObjectRemoved:Delete of a non-current version removed the live document's chunks."""
    s3, bucket, key = versioned.s3, versioned.bucket, "docs/v.txt"
    v1 = s3.put_object(Bucket=bucket, Key=key, Body=b"Version one text. " * 5)
    v2 = s3.put_object(Bucket=bucket, Key=key, Body=b"Version two text. " * 5)
    for v in (v1, v2):
        versioned.run(versioned_event(bucket, key, "ObjectCreated:Put", v["VersionId"], v["ETag"].strip('"')))
    s3.delete_object(Bucket=bucket, Key=key, VersionId=v1["VersionId"])
    versioned.run(versioned_event(bucket, key, "ObjectRemoved:Delete", v1["VersionId"]))
    store = store_for(indexer_env)
    commit = consistent(store, key)
    assert commit.version_id == v2["VersionId"] and not commit.deleted
    assert visible_texts(store, key) == [("Version two text. " * 5).strip()]


def test_a_delete_marker_hides_the_file_and_removing_it_brings_the_file_back(versioned, indexer_env):
    """Was: removing a delete marker (undelete) never re-indexed the file."""
    s3, bucket, key = versioned.s3, versioned.bucket, "docs/u.txt"
    v1 = s3.put_object(Bucket=bucket, Key=key, Body=b"Undelete me please. " * 5)
    versioned.run(versioned_event(bucket, key, "ObjectCreated:Put", v1["VersionId"], v1["ETag"].strip('"')))
    marker = s3.delete_object(Bucket=bucket, Key=key)
    assert marker["DeleteMarker"]
    versioned.run(versioned_event(bucket, key, "ObjectRemoved:DeleteMarkerCreated", marker["VersionId"]))
    store = store_for(indexer_env)
    assert consistent(store, key).deleted and visible_texts(store, key) == []
    s3.delete_object(Bucket=bucket, Key=key, VersionId=marker["VersionId"])  # the undelete
    versioned.run(versioned_event(bucket, key, "ObjectRemoved:Delete", marker["VersionId"]))
    commit = consistent(store, key)
    assert not commit.deleted and commit.version_id == v1["VersionId"]
    assert visible_texts(store, key) == [("Undelete me please. " * 5).strip()]


# --- delivery shapes ------------------------------------------------------------------------------


def sns(message: dict[str, Any]) -> dict[str, Any]:
    """An SNS → SQS envelope (raw delivery off), as SNS's fanout to SQS wraps a message."""
    return {
        "Type": "Notification",
        "MessageId": "0f1e2d3c-aaaa-bbbb-cccc-000000000001",
        "TopicArn": "arn:aws:sns:us-east-1:123456789012:documents",
        "Message": json.dumps(message),
        "Timestamp": "2026-11-24T10:00:00.000Z",
    }


def eventbridge(bucket: str, key: str, detail_type: str, sequencer: str, etag: str | None = None) -> dict[str, Any]:
    obj: dict[str, Any] = {"key": key, "sequencer": sequencer}
    if etag:
        obj["etag"] = etag
    return {
        "version": "0",
        "id": "17793124-05d4-b198-2fde-7ededc63b103",
        "detail-type": detail_type,
        "source": "aws.s3",
        "account": "123456789012",
        "region": "us-east-1",
        "resources": [f"arn:aws:s3:::{bucket}"],
        "detail": {"version": "0", "bucket": {"name": bucket}, "object": obj, "reason": "PutObject"},
    }


def test_an_sns_wrapped_notification_is_indexed_and_raw_delivery_too(uploader, indexer_env):
    assert uploader.run(sns(uploader.put("docs/sns.txt", "Through SNS. " * 5))) == {"batchItemFailures": []}
    assert uploader.run(uploader.put("docs/raw.txt", "Raw SNS delivery. " * 5)) == {"batchItemFailures": []}
    store = store_for(indexer_env)
    assert consistent(store, "docs/sns.txt").chunks == 1 and consistent(store, "docs/raw.txt").chunks == 1


def test_a_test_event_is_ignored_in_any_envelope(uploader, queues):
    test_event = {"Service": "Amazon S3", "Event": "s3:TestEvent", "Bucket": "b", "RequestId": "r"}
    event = queues.event(test_event, sns(test_event), sns(sns(test_event)))
    assert handler.lambda_handler(event, handler_context()) == {"batchItemFailures": []}
    assert queues.dead_letters() == []


def test_eventbridge_created_and_deleted_events_are_applied(uploader, indexer_env, queues):
    key = "docs/eb file.txt"  # EventBridge carries the key as is, not URL-encoded
    etag = uploader.s3.put_object(Bucket=uploader.bucket, Key=key, Body=b"From EventBridge. " * 5)["ETag"]
    created = eventbridge(uploader.bucket, key, "Object Created", next_seq(), etag.strip('"'))
    assert uploader.run(created) == {"batchItemFailures": []}
    store = store_for(indexer_env)
    assert consistent(store, key).chunks == 1
    tagged = eventbridge(uploader.bucket, key, "Object Tags Added", next_seq())
    assert handler.lambda_handler(queues.event(tagged), handler_context()) == {"batchItemFailures": []}
    assert queues.dead_letters() == []  # not content: ignored, not poison
    uploader.s3.delete_object(Bucket=uploader.bucket, Key=key)
    assert uploader.run(eventbridge(uploader.bucket, key, "Object Deleted", next_seq())) == {"batchItemFailures": []}
    assert consistent(store, key).deleted


# --- long keys ------------------------------------------------------------------------------------


def test_a_1024_byte_key_is_indexed_found_and_removed(uploader, indexer_env):
    """Was: keys over 512 UTF-8 bytes always dead-lettered on a domain (the state's _id was the key)."""
    key = "docs/" + "文" * 338 + "x.txt"  # 5 + 338 x 3 + 5 bytes: S3's 1,024-byte maximum
    assert len(key.encode()) == 1024
    assert uploader.run(uploader.put(key, "A document under a very long name. " * 5)) == {"batchItemFailures": []}
    store = store_for(indexer_env)
    assert consistent(store, key).chunks == 1
    hits = store.search(fake_embedding(("A document under a very long name. " * 5).strip(), 1536), 1)
    assert hits and hits[0].source_key == key
    assert uploader.run(uploader.delete(key)) == {"batchItemFailures": []}
    assert consistent(store, key).deleted


# --- local sequencers -----------------------------------------------------------------------------


def test_the_local_stack_gives_each_event_one_sequencer_and_later_events_larger_ones():
    """Was: moto's events carry no sequencer, so every local retry looked like a new event."""
    from local.sequencers import LocalSequencer

    def moto_event(key: str, when: str, etag: str) -> str:
        obj = {"key": key, "size": 1, "eTag": etag}
        record = {"eventSource": "aws:s3", "eventTime": when, "eventName": "ObjectCreated:Put"}
        return json.dumps({"Records": [record | {"s3": {"bucket": {"name": "b"}, "object": obj}}]})

    def sequencer_of(body: str) -> str:
        return str(json.loads(body)["Records"][0]["s3"]["object"]["sequencer"])

    stamp = LocalSequencer().stamp
    first = moto_event("docs/a.txt", "2026-11-24T10:00:00.100Z", "e1")
    second = moto_event("docs/a.txt", "2026-11-24T10:00:00.250Z", "e2")
    same_ms = moto_event("docs/a.txt", "2026-11-24T10:00:00.250Z", "e3")
    s2, s1, s3 = sequencer_of(stamp(second)), sequencer_of(stamp(first)), sequencer_of(stamp(same_ms))
    assert s1 < s2 < s3  # event time orders; a tie in the same millisecond by first sight
    assert sequencer_of(stamp(first)) == s1 and sequencer_of(stamp(second)) == s2  # a replay: the same one
    real = json.loads(first)
    real["Records"][0]["s3"]["object"]["sequencer"] = "0055AED6DCD90281E5"
    assert stamp(json.dumps(real)) == json.dumps(real)  # a real sequencer is kept
    assert stamp("not json") == "not json"
    parse_notification(stamp(first))  # what the indexer receives
