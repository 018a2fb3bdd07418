"""The backfill planner: changed objects become S3-shaped events on the indexing queue, which the
indexer (pumped as Lambda's SQS mapping does) processes like live uploads."""

from __future__ import annotations

import json
import tracemalloc
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import boto3
import pytest
from indexer import backfill as bf
from indexer import planner
from indexer.events import normalize_sequencer, parse_notification
from rag_shared.commits import Commit, _to_item

from local.sqs_pump import drain
from standins.dashscope import fake_embedding
from tests.indexer.test_handler import store_for


def _seed(commits: Any, records: list[Commit]) -> None:
    """Commit records written 25 at a time (BatchWriteItem's limit): one conditional put each is slow on moto."""
    for start in range(0, len(records), 25):
        items = [{"PutRequest": {"Item": _to_item(commits.pk(c.key), c)}} for c in records[start : start + 25]]
        commits.client.batch_write_item(RequestItems={commits.table: items})


def _plan(s3: Any, sqs: Any, commits: Any, bucket: str, url: str, *, prefix: str = "", prune: bool = False) -> Any:
    return planner.plan(
        bf.list_objects(s3, bucket, prefix),
        commits,
        planner.QueueSink(sqs, url),
        bucket,
        prefix=prefix,
        prune=prune,
        exists=planner.s3_exists(s3, bucket),
    )


class _Recording:
    """The real SQS client, remembering the bodies SQS accepted (moto's ReceiveMessage is too slow
    on a queue of thousands to read them back; the queue's own count is asserted too)."""

    def __init__(self, sqs: Any) -> None:
        self.sqs, self.bodies = sqs, list[str]()

    def send_message_batch(self, QueueUrl: str, Entries: list[dict[str, str]]) -> dict[str, Any]:
        result = self.sqs.send_message_batch(QueueUrl=QueueUrl, Entries=Entries)
        sent = {e["Id"]: e["MessageBody"] for e in Entries}
        self.bodies += [sent[ok["Id"]] for ok in result.get("Successful", [])]
        return result  # type: ignore[no-any-return]


def test_two_thousand_objects_become_one_message_per_changed_object(s3, bucket, commits):
    sqs = boto3.client("sqs", region_name="us-east-1")
    url = sqs.create_queue(QueueName=f"plan-{bucket}")["QueueUrl"]
    keys = [f"docs/{i:04d}.txt" for i in range(2000)]
    with ThreadPoolExecutor(8) as pool:
        put = pool.map(lambda k: s3.put_object(Bucket=bucket, Key=k, Body=k.encode())["ETag"], keys)
        etags = dict(zip(keys, put, strict=True))
    s3.put_object(Bucket=bucket, Key="docs/logo.png", Body=b"\x89PNG\r\n\x1a\n")
    # 1,500 indexed at the listed ETag, 100 at an older one, 50 deleted, 350 never seen: 500 changed
    seq = normalize_sequencer("A0")
    seeded = [Commit(k, seq, "v", 1, etag=etags[k].strip('"')) for k in keys[:1500]]
    seeded += [Commit(k, seq, "v", 1, etag="0" * 32) for k in keys[1500:1600]]
    seeded += [Commit(k, seq, None, 0, deleted=True, etag=etags[k].strip('"')) for k in keys[1600:1650]]
    _seed(commits, seeded)

    recording = _Recording(sqs)
    summary = planner.plan(
        bf.list_objects(s3, bucket, "docs/"), commits, planner.QueueSink(recording, url), bucket, prefix="docs/"
    )

    assert (summary.enqueued, summary.unchanged, summary.removals) == (500, 1500, 0)
    assert summary.skipped == {"unsupported file type .png": 1}
    attrs = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["ApproximateNumberOfMessages"])["Attributes"]
    assert attrs["ApproximateNumberOfMessages"] == "500"
    planned = {}
    for raw in recording.bodies:
        body = json.loads(raw)
        assert body[planner.BACKFILL] is True
        (event,) = parse_notification(body)  # a normal S3 record to the indexer
        planned[event.key] = event
    assert sorted(planned) == keys[1500:]
    assert all(e.action == "upsert" and e.etag == etags[e.key].strip('"') for e in planned.values())
    # after the replaced commit, before any later real S3 event (real sequencers are < 40 digits)
    assert planned[keys[1500]].sequencer == f"{'A0'.ljust(40, '0')[:-1]}1"
    assert normalize_sequencer(planned[keys[1500]].sequencer or "") < normalize_sequencer("A01")
    assert planned[keys[1999]].sequencer == "1".rjust(40, "0")  # no commit: before any real event


def test_queue_processing_indexes_then_a_second_run_enqueues_nothing(uploader, queues, commits, indexer_env, capsys):
    s3, bucket, sqs = uploader.s3, uploader.bucket, queues.sqs
    for i in range(12):
        s3.put_object(Bucket=bucket, Key=f"docs/{i}.txt", Body=f"Document number {i}.".encode())
    s3.put_object(Bucket=bucket, Key="docs/pic.png", Body=b"\x89PNG\r\n\x1a\n")

    assert bf.main([f"s3://{bucket}/docs/", "--queue-url", queues.url, "--no-progress", "--no-wait"]) == 0
    out = capsys.readouterr().out
    assert "enqueued: 12" in out and "unchanged: 0" in out and "unsupported file type .png: 1" in out
    assert drain(sqs, queues.url, timeout=60) == 12
    assert queues.dead_letters() == []
    assert all(c is not None and c.chunks == 1 for c in commits.get_many(f"docs/{i}.txt" for i in range(12)).values())
    assert len(commits.get_many(f"docs/{i}.txt" for i in range(12))) == 12

    again = _plan(s3, sqs, commits, bucket, queues.url, prefix="docs/", prune=True)
    assert (again.enqueued, again.unchanged, again.removals) == (0, 12, 0)
    assert queues.messages() == []

    # one changed, one deleted: one upsert and (with --prune) one removal, processed by the fleet
    s3.put_object(Bucket=bucket, Key="docs/3.txt", Body=b"Document three, second edition.")
    s3.delete_object(Bucket=bucket, Key="docs/5.txt")
    third = _plan(s3, sqs, commits, bucket, queues.url, prefix="docs/", prune=True)
    assert (third.enqueued, third.unchanged, third.removals) == (1, 10, 1)
    assert drain(sqs, queues.url, timeout=60) == 2
    store = store_for(indexer_env)
    store.refresh()
    assert store.count("docs/5.txt") == 0 and commits.get("docs/5.txt").deleted
    hit = store.search(fake_embedding("Document three, second edition.", 1536), 1)[0]
    assert hit.text == "Document three, second edition."
    last = _plan(s3, sqs, commits, bucket, queues.url, prefix="docs/", prune=True)
    assert (last.enqueued, last.removals) == (0, 0)


@pytest.mark.parametrize("order", ["live-committed-first", "planned-then-live-committed", "backfill-indexed-first"])
def test_a_backfill_planned_from_an_older_listing_never_beats_a_live_overwrite(
    uploader, queues, commits, indexer_env, order
):
    """The planner's listing saw v1; a live overwrite with v2 is committed before the planner reads
    the commit, between planning and processing, or after the backfill event was processed: v2 wins."""
    s3, bucket, sqs = uploader.s3, uploader.bucket, queues.sqs
    s3.put_object(Bucket=bucket, Key="docs/a.txt", Body=b"Version one of the file.")
    seen_v1 = list(bf.list_objects(s3, bucket, "docs/"))
    sink = planner.QueueSink(sqs, queues.url)
    if order == "backfill-indexed-first":
        assert planner.plan(seen_v1, commits, sink, bucket).enqueued == 1
        assert drain(sqs, queues.url, timeout=30) == 1
        live = uploader.put("docs/a.txt", "Version two of the file.")
        uploader.run(live)
    else:
        live = uploader.put("docs/a.txt", "Version two of the file.")
        if order == "live-committed-first":
            uploader.run(live)
        assert planner.plan(seen_v1, commits, sink, bucket).enqueued == 1  # listed ETag != committed
        if order == "planned-then-live-committed":
            uploader.run(live)
        assert drain(sqs, queues.url, timeout=30) == 1
    commit = commits.get("docs/a.txt")
    assert commit is not None and commit.etag == live["Records"][0]["s3"]["object"]["eTag"]
    store = store_for(indexer_env)
    store.refresh()
    hits = store.search(fake_embedding("Version two of the file.", 1536), 5)
    assert [h.text for h in hits] == ["Version two of the file."]


def test_failed_entries_are_sent_again():
    class FlakySqs:
        def __init__(self) -> None:
            self.calls: list[list[str]] = []

        def send_message_batch(self, QueueUrl: str, Entries: list[dict[str, str]]) -> dict[str, Any]:
            self.calls.append([e["Id"] for e in Entries])
            if len(self.calls) == 1:  # SQS's partial failure: the last 3 entries throttled
                ok, bad = Entries[:-3], Entries[-3:]
                return {
                    "Successful": [{"Id": e["Id"]} for e in ok],
                    "Failed": [{"Id": e["Id"], "Code": "ThrottlingException", "SenderFault": False} for e in bad],
                }
            return {"Successful": [{"Id": e["Id"]} for e in Entries], "Failed": []}

    sqs = FlakySqs()
    sink = planner.QueueSink(sqs, "url", sleep=lambda s: None)
    for i in range(10):
        sink.send({"n": i})
    assert sqs.calls == [[str(i) for i in range(10)], ["7", "8", "9"]]
    assert sink.sent == 10


class _NoCommits:
    def get_many(self, keys: Any) -> dict[str, Commit]:
        for _ in keys:
            pass
        return {}

    def scan(self) -> Iterator[Commit]:
        return iter(())


class _Discard:
    def send_message_batch(self, QueueUrl: str, Entries: list[dict[str, str]]) -> dict[str, Any]:
        return {"Successful": [{"Id": e["Id"]} for e in Entries], "Failed": []}


def _listing(n: int) -> Iterator[dict[str, Any]]:
    """A list_objects_v2 listing as bf.list_objects yields it, generated lazily."""
    for i in range(n):
        yield {"Key": f"docs/{i:08d}.txt", "ETag": f'"{i:032x}"', "Size": 100}


def _peak(n: int) -> int:
    tracemalloc.start()
    try:
        summary = planner.plan(_listing(n), _NoCommits(), planner.QueueSink(_Discard(), "url"), "b")
        assert summary.enqueued == n
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_planner_memory_does_not_grow_with_the_listing():
    _peak(1000)  # warm up imports and caches
    small, large = _peak(1_000), _peak(10_000)
    assert large < 1.5 * small, (small, large)


def test_an_entry_sqs_calls_malformed_is_not_retried():
    class Refusing:
        calls = 0

        def send_message_batch(self, QueueUrl: str, Entries: list[dict[str, str]]) -> dict[str, Any]:
            Refusing.calls += 1
            return {"Successful": [], "Failed": [{"Id": "0", "Code": "InvalidMessageContents", "SenderFault": True}]}

    sink = planner.QueueSink(Refusing(), "url", sleep=lambda s: None)
    sink.send({"n": 0})
    with pytest.raises(planner.SendFailed, match="InvalidMessageContents"):
        sink.flush()
    assert Refusing.calls == 1


def test_local_wins_over_the_queue_url_in_the_environment(uploader, queues, monkeypatch, capsys):
    monkeypatch.setenv("INDEX_QUEUE_URL", queues.url)
    uploader.s3.put_object(Bucket=uploader.bucket, Key="docs/a.txt", Body=b"Alpha document body.")
    assert bf.main([f"s3://{uploader.bucket}/docs/", "--local", "--no-progress"]) == 0
    assert "indexed: 1" in capsys.readouterr().out
    assert queues.messages() == []
    assert bf.main([f"s3://{uploader.bucket}/docs/", "--no-progress"]) == 0  # the queue, from the environment
    assert "enqueued: 0" in capsys.readouterr().out and queues.messages() == []


def test_an_applied_sidecar_is_unchanged_on_the_next_run_and_pruned_once_deleted(
    uploader, queues, commits, indexer_env
):
    """A `<key>.metadata.json` has no chunks, so no chunk commit: the indexer records the sidecar it
    applied under its own key, and a second run enqueues nothing (before, every run sent it again)."""
    s3, bucket, sqs = uploader.s3, uploader.bucket, queues.sqs
    s3.put_object(Bucket=bucket, Key="docs/a.txt", Body=b"Document a.")
    s3.put_object(Bucket=bucket, Key="docs/a.txt.metadata.json", Body=b'{"metadataAttributes": {"team": "ops"}}')
    first = _plan(s3, sqs, commits, bucket, queues.url, prefix="docs/")
    assert first.enqueued == 2
    assert drain(sqs, queues.url, timeout=60) == 2
    store = store_for(indexer_env)
    store.refresh()
    hits = store.search(fake_embedding("Document a.", 1536), 1)
    assert hits and hits[0].metadata == {"team": "ops"}  # the sidecar was applied, whichever came first
    sidecar = commits.get("docs/a.txt.metadata.json")
    assert sidecar is not None and sidecar.etag and sidecar.version is None and not sidecar.deleted

    again = _plan(s3, sqs, commits, bucket, queues.url, prefix="docs/", prune=True)
    assert (again.enqueued, again.unchanged, again.removals) == (0, 2, 0)

    s3.delete_object(Bucket=bucket, Key="docs/a.txt.metadata.json")
    pruned = _plan(s3, sqs, commits, bucket, queues.url, prefix="docs/", prune=True)
    assert (pruned.enqueued, pruned.removals) == (0, 1)
    assert drain(sqs, queues.url, timeout=60) == 1
    store.refresh()
    assert store.search(fake_embedding("Document a.", 1536), 1)[0].metadata == {}
    assert commits.get("docs/a.txt.metadata.json").deleted
    last = _plan(s3, sqs, commits, bucket, queues.url, prefix="docs/", prune=True)
    assert (last.enqueued, last.removals) == (0, 0)
