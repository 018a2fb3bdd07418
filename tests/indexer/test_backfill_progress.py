"""Progress of a planned backfill (enqueued vs committed vs dead-lettered), re-attaching from
another process, --verify-chunks, and the --local worker pool."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import threading
import tracemalloc
from typing import Any

import pytest
from botocore.exceptions import ClientError
from indexer import backfill as bf
from indexer import handler, planner, progress
from rag_shared.commits import Commit

from local.sqs_pump import drain, pump
from standins.dashscope import fake_embedding
from tests.indexer.test_backfill_planner import _Discard, _listing, _NoCommits
from tests.indexer.test_handler import store_for

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


class _PoisonS3:
    """The indexer's S3 client, refusing to read one key (as a missing s3:GetObject grant would)."""

    def __init__(self, s3: Any, key: str) -> None:
        self.s3, self.key, self.refused = s3, key, 0

    def get_object(self, **kwargs: Any) -> Any:
        if kwargs["Key"] == self.key:
            self.refused += 1
            raise ClientError({"Error": {"Code": "AccessDenied", "Message": "denied"}}, "GetObject")
        return self.s3.get_object(**kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.s3, name)


def _run_id(out: str) -> str:
    match = re.search(r"run id: (\S+)", out)
    assert match, out
    return match.group(1)


def test_progress_counts_committed_skipped_and_dead_lettered(uploader, queues, commits, monkeypatch, capsys):
    monkeypatch.setenv("RETRY_BASE_SECONDS", "0")  # a failed message is back at once: the poison one dead-letters fast
    handler.reset()
    s3, bucket, sqs = uploader.s3, uploader.bucket, queues.sqs
    for i in range(12):
        s3.put_object(Bucket=bucket, Key=f"docs/{i:02d}.txt", Body=f"Document number {i} of the backfill.".encode())
    s3.put_object(Bucket=bucket, Key="docs/empty.txt", Body=b"")  # skipped by the indexer, with its reason
    s3.put_object(Bucket=bucket, Key="docs/pic.png", Body=b"\x89PNG\r\n\x1a\n")  # skipped by the planner
    s3.put_object(Bucket=bucket, Key="docs/poison.txt", Body=b"Never readable.")
    poison = _PoisonS3(handler.get_indexer().s3, "docs/poison.txt")
    handler.get_indexer().s3 = poison

    assert bf.main([f"s3://{bucket}/docs/", "--queue-url", queues.url, "--no-wait", "--no-progress"]) == 0
    run = _run_id(capsys.readouterr().out)
    runs = progress.RunStore(commits)
    manifest = runs.load(run)
    assert (manifest.enqueued, manifest.status, manifest.skipped) == (14, "planned", {"unsupported file type .png": 1})
    assert runs.load().run == run  # the latest

    before = progress.Watcher(runs, manifest, sqs).poll()
    assert (before.total, before.committed, before.visible, before.dead) == (14, 0, 14, 0)
    assert not before.settled

    delivered = pump(sqs, queues.url, max_rounds=1, wait_seconds=0)  # one batch of 5
    small = progress.Watcher(runs, manifest, sqs, budget=4)  # 4 keys per poll: converges over polls
    first = small.poll()
    assert not first.checked_all and first.committed <= 4
    for _ in range(4):  # 14 keys, 4 a poll: one sweep
        snap = small.poll()
    assert not snap.checked_all  # the queue is not empty: what is behind the cursor may change
    done = sum(
        1 for c in commits.get_many(f"docs/{i:02d}.txt" for i in range(12)).values() if c.version is not None
    ) + (commits.get("docs/empty.txt") is not None)
    assert 0 < snap.committed == done <= delivered

    drain(sqs, queues.url, timeout=60)
    assert poison.refused >= 5  # tried until maxReceiveCount, then SQS moved it

    # another process attaches to the run (by id, then as the latest) and sees the same end
    env = dict(os.environ, PYTHONPATH=ROOT)
    for attach in (["--attach", run], ["--attach"]):
        proc = subprocess.run(  # noqa: S603 - this interpreter, fixed arguments
            [sys.executable, "-m", "indexer.backfill", *attach, "--no-progress", "--interval", "0.1"],
            capture_output=True,
            text=True,
            env=env,
            timeout=60,
            check=False,
        )
        assert proc.returncode == 1, proc.stderr  # one file failed
        out = proc.stdout
        assert f"attached to backfill {run}" in out
        assert "indexed: 12" in out and "unchanged: 0" in out and "removed: 0" in out, out
        assert "skipped: 2" in out and "unsupported file type .png: 1" in out, out
        assert "failed → DLQ: 1" in out and "not committed: 1 (queued 0, in flight 0)" in out, out


def test_a_second_run_follows_to_completion_and_a_wrong_run_id_is_refused(uploader, queues, commits, capsys):
    s3, bucket, sqs = uploader.s3, uploader.bucket, queues.sqs
    for i in range(6):
        s3.put_object(Bucket=bucket, Key=f"docs/{i}.txt", Body=f"Text {i}.".encode())
    stop = threading.Event()

    def fleet() -> None:  # the deployed indexers, working while the CLI follows
        while not stop.is_set():
            pump(sqs, queues.url, max_rounds=1, wait_seconds=0)
            stop.wait(0.05)

    worker = threading.Thread(target=fleet)
    worker.start()
    try:
        code = bf.main([f"s3://{bucket}/docs/", "--queue-url", queues.url, "--no-progress", "--interval", "0.1"])
    finally:
        stop.set()
        worker.join()
    out = capsys.readouterr().out
    assert code == 0, out
    assert "enqueued: 6" in out and "indexed: 6" in out and "failed → DLQ: 0" in out and "not committed" not in out
    assert bf.main(["--attach", "20000101T000000Z-00000000", "--no-progress"]) == 2
    assert "no backfill run 20000101T000000Z-00000000" in capsys.readouterr().err


def test_verify_chunks_reenqueues_keys_whose_chunks_were_lost(uploader, queues, commits, indexer_env, capsys):
    s3, bucket, sqs = uploader.s3, uploader.bucket, queues.sqs
    for i in range(30):
        s3.put_object(Bucket=bucket, Key=f"docs/{i:02d}.txt", Body=f"Chunk text of document {i}.".encode())
    assert bf.main([f"s3://{bucket}/docs/", "--queue-url", queues.url, "--no-wait", "--no-progress"]) == 0
    drain(sqs, queues.url, timeout=60)
    store = store_for(indexer_env)
    store.refresh()
    lost = ["docs/03.txt", "docs/17.txt", "docs/29.txt"]
    for key in lost:
        store.delete_chunks(key)
    store.refresh()
    capsys.readouterr()

    counting = _CountingStore(store)
    checker = planner.chunk_checker(counting)
    listing = list(bf.list_objects(s3, bucket, "docs/"))
    plain = planner.plan(listing, commits, planner.QueueSink(_Discard(), "url"), bucket)
    assert plain.enqueued == 0  # the commit records alone say nothing changed
    summary = planner.plan(listing, commits, planner.QueueSink(sqs, queues.url), bucket, verify=checker)
    assert (summary.enqueued, summary.restored, summary.unchanged) == (3, 3, 27)
    assert counting.calls < 30  # split where short, not one query per key
    drain(sqs, queues.url, timeout=60)
    store.refresh()
    for key in lost:
        commit = commits.get(key)
        assert commit is not None and store.count(key, version=commit.version) == commit.chunks == 1
    assert planner.plan(listing, commits, planner.QueueSink(_Discard(), "url"), bucket, verify=checker).enqueued == 0
    hit = store.search(fake_embedding("Chunk text of document 17.", 1536), 1)[0]
    assert hit.source_key == "docs/17.txt"


class _CountingStore:
    def __init__(self, store: Any) -> None:
        self.index, self.calls, self._client = store.index, 0, store.client

    @property
    def client(self) -> Any:
        return self

    def count(self, **kwargs: Any) -> Any:
        self.calls += 1
        return self._client.count(**kwargs)


def test_local_runs_racing_each_other_and_a_live_overwrite_converge(uploader, commits, indexer_env):
    """Two --local runs with 4 workers each over the same bucket, while one key is overwritten and
    its live event processed: each key ends with exactly its committed chunks, the live version wins."""
    s3, bucket = uploader.s3, uploader.bucket
    keys = [f"docs/{i:02d}.txt" for i in range(24)]
    for key in keys:
        s3.put_object(Bucket=bucket, Key=key, Body=f"First text of {key}.".encode())
    results: list[bf.Summary] = []

    def run() -> None:
        results.append(bf.backfill(handler.build_indexer(), bucket, "docs/", progress=False, workers=4))

    threads = [threading.Thread(target=run) for _ in range(2)]
    for t in threads:
        t.start()
    live = uploader.put("docs/05.txt", "Second text, the live overwrite.")
    uploader.run(live)
    for t in threads:
        t.join()
    assert all(not r.failed for r in results)
    store = store_for(indexer_env)
    store.refresh()
    for key in keys:
        commit = commits.get(key)
        assert commit is not None and commit.chunks == 1
        assert store.count(key) == 1, key  # nothing duplicated, nothing superseded left
    assert commits.get("docs/05.txt").etag == live["Records"][0]["s3"]["object"]["eTag"]
    hits = store.search(fake_embedding("Second text, the live overwrite.", 1536), 1)
    assert hits[0].text == "Second text, the live overwrite."
    # a third run finds everything in place
    third = bf.backfill(handler.build_indexer(), bucket, "docs/", progress=False, workers=4)
    assert third.actions["unchanged"] == 24 and not third.actions["indexed"]


def _peak_journaled(n: int) -> int:
    class Runs:
        pages = 0

        def put_page(self, run: str, number: int, entries: list[Any]) -> None:
            Runs.pages += 1

        def save(self, manifest: Any) -> None:
            pass

    tracemalloc.start()
    try:
        journal = progress.Journal(Runs(), progress.Manifest("r", "b", "", "url"))  # type: ignore[arg-type]
        summary = planner.plan(_listing(n), _NoCommits(), planner.QueueSink(_Discard(), "url"), "b", journal=journal)
        journal.finish(enqueued=summary.enqueued, removals=0, unchanged=0, skipped={})
        assert journal.manifest.pages == -(-n // progress.PAGE_KEYS)
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_planner_memory_stays_flat_with_progress_tracking():
    _peak_journaled(1000)
    small, large = _peak_journaled(1_000), _peak_journaled(10_000)
    assert large < 1.5 * small, (small, large)


@pytest.mark.parametrize(
    ("commit", "expected"),
    [
        (None, progress.PENDING),
        (Commit("k", "0" * 39 + "1", "v", 1), progress.PENDING),  # an older commit: not yet
        (Commit("k", "0" * 39 + "2", "v", 1), progress.INDEXED),
        (Commit("k", "0" * 39 + "3", "v", 1), progress.INDEXED),  # a later live event superseded it
        (Commit("k", "0" * 39 + "2", None, 0, reason="empty file"), progress.SKIPPED),
        (Commit("k", "0" * 39 + "2", None, 0, deleted=True), progress.REMOVED),
    ],
)
def test_classify(commit, expected):
    assert progress.classify(commit, "0" * 39 + "2") == expected


def test_a_planner_failing_midway_leaves_a_run_followers_can_finish(uploader, queues, commits, monkeypatch, capsys):
    s3, bucket = uploader.s3, uploader.bucket
    for i in range(25):
        s3.put_object(Bucket=bucket, Key=f"docs/{i:02d}.txt", Body=f"Text {i}.".encode())
    sent = 0
    real = planner.QueueSink.flush

    def flaky(self: planner.QueueSink) -> None:
        nonlocal sent
        if sent == 2:  # the third batch: SQS refuses it
            raise planner.SendFailed("SQS refused backfill messages: InvalidMessageContents")
        sent += 1
        real(self)

    monkeypatch.setattr(planner.QueueSink, "flush", flaky)
    assert bf.main([f"s3://{bucket}/docs/", "--queue-url", queues.url, "--no-wait", "--no-progress"]) == 2
    assert "InvalidMessageContents" in capsys.readouterr().err
    manifest = progress.RunStore(commits).load()
    # what the journal saw: the 20 sent and the refused last batch of 5, which never commit
    assert (manifest.status, manifest.enqueued) == ("aborted", 25)
    drain(queues.sqs, queues.url, timeout=60)
    snap = progress.Watcher(progress.RunStore(commits), manifest, queues.sqs).poll()
    assert snap.settled and (snap.total, snap.committed) == (25, 20)
