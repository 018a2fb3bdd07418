"""Concurrent records share requests (issue 14, small files): one refresh, bulk, cache lookup or
sidecar listing for the calls made while one is in flight, one BatchGetItem of a batch's commits,
and no cleanup for a key whose only chunks are the new version's. Each sharing is proven where it
can go wrong: duplicates of a key in a batch, a bad item among shared ones, a failing shared request."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest
from indexer import handler
from indexer.events import ObjectEvent
from indexer.metadata import Metadata
from indexer.pipeline import UNKNOWN, Written, assess
from indexer.sidecars import SidecarProbe, decide, listing_range
from rag_shared.commits import Commit
from rag_shared.store.group import GroupRunner
from rag_shared.store.stores import BulkItemsRejected

from local.lambda_context import FakeContext
from standins.corpus import paragraph
from tests.events import sqs_event
from tests.indexer.test_concurrent_records import Tracker, doc
from tests.indexer.test_handler import store_for

# --- GroupRunner: group commit ---


class Gate:
    """A ``run`` for GroupRunner that records each request's items and blocks the first request
    until released, so that the test knows callers queued behind it."""

    def __init__(self, fail: set[int] | None = None, explode: int | None = None) -> None:
        self.runs: list[list[int]] = []
        self.started = threading.Event()
        self.release = threading.Event()
        self.fail = fail or set()
        self.explode = explode  # this request raises as a whole

    def __call__(self, items: Any) -> list[Any]:
        self.runs.append(list(items))
        if len(self.runs) == 1:
            self.started.set()
            assert self.release.wait(10)
        if self.explode == len(self.runs):
            raise ConnectionError(f"request {len(self.runs)} failed")
        return [ValueError(f"bad {i}") if i in self.fail else i * 10 for i in items]


def call_all(runner: GroupRunner[int, int], gate: Gate, n: int) -> dict[int, Any]:
    """Item 0 alone first (it blocks); items 1..n-1 call while it is in flight; then release."""
    out: dict[int, Any] = {}

    def call(i: int) -> None:
        try:
            out[i] = runner(i)
        except Exception as exc:
            out[i] = exc

    first = threading.Thread(target=call, args=(0,))
    first.start()
    assert gate.started.wait(10)
    rest = [threading.Thread(target=call, args=(i,)) for i in range(1, n)]
    for t in rest:
        t.start()
    deadline = time.monotonic() + 10
    while len(runner._queue) < n - 1 and time.monotonic() < deadline:  # all queued behind request 1
        time.sleep(0.005)
    gate.release.set()
    for t in [first, *rest]:
        t.join(10)
    return out


def test_calls_made_while_a_request_is_in_flight_share_the_next_one():
    gate = Gate()
    runner: GroupRunner[int, int] = GroupRunner(gate)
    out = call_all(runner, gate, 8)
    assert out == {i: i * 10 for i in range(8)}  # each caller its own answer
    assert gate.runs[0] == [0] and sorted(gate.runs[1]) == list(range(1, 8)) and len(gate.runs) == 2
    assert runner.requests == 2


def test_an_item_only_goes_out_in_a_request_that_starts_after_its_call():
    """What a shared refresh relies on: a caller never rides on a request already in flight."""
    gate = Gate()
    runner: GroupRunner[int, int] = GroupRunner(gate)
    call_all(runner, gate, 4)
    assert 1 not in gate.runs[0] and all(i in gate.runs[1] for i in (1, 2, 3))


def test_a_bad_item_fails_only_its_caller():
    gate = Gate(fail={3})
    runner: GroupRunner[int, int] = GroupRunner(gate)
    out = call_all(runner, gate, 6)
    assert isinstance(out[3], ValueError) and str(out[3]) == "bad 3"
    assert {i: v for i, v in out.items() if i != 3} == {i: i * 10 for i in (0, 1, 2, 4, 5)}


def test_a_failing_request_fails_its_callers_and_no_one_else():
    gate = Gate(explode=2)  # the shared second request fails; the lone first succeeded
    runner: GroupRunner[int, int] = GroupRunner(gate)
    out = call_all(runner, gate, 5)
    assert out[0] == 0 and len(gate.runs) == 2
    assert all(isinstance(out[i], ConnectionError) for i in range(1, 5))
    assert runner(9) == 90  # the runner is not left busy


def test_a_request_holds_at_most_max_weight():
    gate = Gate()
    runner: GroupRunner[int, int] = GroupRunner(gate, max_weight=3)
    call_all(runner, gate, 8)
    assert [len(r) for r in gate.runs] == [1, 3, 3, 1]


# --- pure parts ---


def test_assess_reads_completeness_and_other_versions_from_one_page():
    assert assess(["t", "t"], "t", 2) == Written(complete=True, others=False)  # a brand-new key
    assert assess(["t"], "t", 2) == Written(complete=False, others=False)  # a chunk missing
    assert assess(["t", "t", "old"], "t", 2) is None  # page full with others: count ours
    assert assess(["t", "old"], "t", 2) == Written(complete=False, others=True)  # saw every chunk
    assert assess([], "t", 1) == Written(complete=False, others=False)  # the index lost them


def test_sidecar_listing_range_and_decisions():
    names = ["d/b.txt.metadata.json", "d/a.txt.metadata.json", "d/é.txt.metadata.json"]
    prefix, start = listing_range(names)
    assert prefix == "d/" and start == "d/a.txt.metadata.jso" and start < min(names)
    # a truncated page that ended between the names: the ones past it are unknown
    assert decide(sorted(names), ["d/a.txt.metadata.json", "d/c"], truncated=True) == [True, False, None]
    assert decide(sorted(names), [], truncated=False) == [False, False, False]
    assert decide(sorted(names), [], truncated=True) == [None, None, None]


def test_prefetched_commits_serve_the_first_record_of_a_key_only():
    old = Commit("docs/a.txt", "0A", "v", 1)
    pre = handler.Prefetched(["docs/a.txt", "docs/b.txt"], {"docs/a.txt": old})
    a = ObjectEvent(action="upsert", bucket="b", key="docs/a.txt")
    b = ObjectEvent(action="remove", bucket="b", key="docs/b.txt")
    side = ObjectEvent(action="upsert", bucket="b", key="docs/a.txt.metadata.json")
    assert pre.take(a) == old and pre.take(a) is UNKNOWN  # a later record of the key reads its own
    assert pre.take(b) is None and pre.take(side) is UNKNOWN
    sweep = a.model_copy(update={"action": "sweep"})
    assert handler.prefetch_keys([a, b, side, sweep, b]) == ["docs/a.txt", "docs/b.txt"]


# --- the store's shared requests, against the stand-in ---


def domain_only(server: Any) -> None:
    if server.serverless:
        pytest.skip("a Serverless collection shares no bulk (it assigns ids) and has no refresh or delete-by-query")


def test_a_rejected_item_in_a_shared_bulk_fails_only_the_file_that_sent_it(indexer_env, vector_store):
    domain_only(vector_store)
    opensearch = vector_store
    from rag_shared.config import load_settings
    from rag_shared.store import VectorStore

    store = VectorStore.from_settings(load_settings())
    store.ensure_index()
    groups = [[store._action(d) for d in docs_of(f"docs/w{n}.txt", 2)] for n in range(3)]
    opensearch.fail_items(1, status=400)  # the first item of the shared request: file w0's
    answers = store._write_group(groups)
    assert isinstance(answers[0], BulkItemsRejected) and answers[0].ids == [groups[0][0]["_id"]]
    assert answers[1:] == [[a["_id"] for a in g] for g in groups[1:]]
    assert not opensearch.item_faults  # the fault fired
    store.refresh()
    assert [store.count(f"docs/w{n}.txt") for n in range(3)] == [1, 2, 2]  # w0's other chunk only


def docs_of(key: str, n: int) -> list[Any]:
    from rag_shared.store import ChunkDoc

    return [
        ChunkDoc(
            id=f"{key}-{i}",
            source_key=key,
            version="v1",
            chunk_number=i,
            text=paragraph(i),
            start=0,
            end=1,
            content_hash=f"h{key}{i}",
            embedding_model="text-embedding-v2",
            source_seq="0A",
            vector=[1.0] + [0.0] * 1535,
        )
        for i in range(n)
    ]


# --- through the handler ---


def slow(fn: Any) -> Any:
    def call(*args: Any, **kwargs: Any) -> Any:
        time.sleep(0.05)
        return fn(*args, **kwargs)

    return call


def test_a_batch_of_new_small_files_shares_requests_and_skips_cleanup(uploader, vector_store, monkeypatch):
    """Twelve new files and duplicates of two of them in one batch: all indexed once, fewer bulk
    requests and refreshes than files, a delete-by-query only for the two replays (a new key has
    no other chunks), one BatchGetItem for the commits."""
    domain_only(vector_store)
    opensearch = vector_store
    tracker = Tracker(monkeypatch)
    reads: list[str] = []
    ix = handler.get_indexer()
    get, get_many = ix.commits.get, ix.commits.get_many

    def one(key: str) -> Commit | None:
        reads.append(key)
        return get(key)

    def many(keys: Any, **kw: Any) -> dict[str, Commit]:
        reads.append("*batch*")
        return get_many(keys, **kw)

    monkeypatch.setattr(ix.commits, "get", one)
    monkeypatch.setattr(ix.commits, "get_many", many)
    for api in (ix.store.client.indices, ix.store.client):  # 50 ms per request, as over a network
        name = "refresh" if api is ix.store.client.indices else "bulk"
        monkeypatch.setattr(api, name, slow(getattr(api, name)))
    bodies = [uploader.put(f"docs/n{n}.txt", doc(300 + n, 1 + n % 2)) for n in range(12)]
    bodies += [bodies[3], bodies[7]]  # duplicate deliveries: stale, from the commit the first made
    before = len(opensearch.requests)
    event = sqs_event(*bodies)
    result = handler.lambda_handler(event, FakeContext())
    assert result == {"batchItemFailures": []} and tracker.peak > 1
    paths = [p for _, p in opensearch.requests[before:]]
    # measured 4 bulks and 7-8 refreshes (the replays' two included) for 12 files
    assert sum(p.endswith("/_bulk") for p in paths) <= 6
    assert sum(p.endswith("/_refresh") for p in paths) < 12
    assert sum("_delete_by_query" in p for p in paths) == 2  # the replays' idempotent cleanup only
    assert reads.count("*batch*") == 1
    # the duplicates, second of their key, read their own commit (they must see the first's)
    assert sorted(k for k in reads if k != "*batch*") == ["docs/n3.txt", "docs/n7.txt"]
    store = store_for(None)
    for n in range(12):
        commit = store.commits.get(f"docs/n{n}.txt")  # type: ignore[union-attr]
        assert commit is not None and store.count(f"docs/n{n}.txt") == 1 + n % 2 == commit.chunks


def test_an_overwrite_in_a_batch_still_removes_the_old_chunks(uploader, vector_store):
    """The skipped cleanup is only for keys with no other chunks: an overwrite finds the old ones."""
    domain_only(vector_store)
    opensearch = vector_store
    first = [uploader.put(f"docs/o{n}.txt", doc(400 + n, 3)) for n in range(4)]
    assert uploader.run(*first) == {"batchItemFailures": []}
    second = [uploader.put(f"docs/o{n}.txt", doc(500 + n, 1)) for n in range(4)]
    before = len(opensearch.requests)
    assert uploader.run(*second) == {"batchItemFailures": []}
    assert any("_delete_by_query" in p for _, p in opensearch.requests[before:])
    store = store_for(None)
    for n in range(4):
        commit = store.commits.get(f"docs/o{n}.txt")  # type: ignore[union-attr]
        assert commit is not None and store.count(f"docs/o{n}.txt") == 1 == commit.chunks


def test_a_failing_shared_refresh_fails_only_records_that_needed_it(uploader, vector_store, monkeypatch):
    """Every refresh attempt of one shared request fails (503, beyond the store's retries): the
    records waiting on it fail and are retried; their retry indexes them; nothing is lost."""
    domain_only(vector_store)
    opensearch = vector_store
    bodies = [uploader.put(f"docs/r{n}.txt", doc(600 + n, 1)) for n in range(6)]
    ix = handler.get_indexer()
    monkeypatch.setattr(ix.store, "_sleep", lambda s: None)
    ix.store.ensure_index()
    opensearch.fail_requests(ix.store.max_attempts, status=503, path="/_refresh")
    event = sqs_event(*bodies)
    result = handler.lambda_handler(event, FakeContext())
    failed = {f["itemIdentifier"] for f in result["batchItemFailures"]}
    assert [s for s, p in opensearch.faults_fired if "_refresh" in p] == [503] * ix.store.max_attempts
    assert 1 <= len(failed) < 6  # the records of that one request, not the batch
    retry = [r for r in event["Records"] if r["messageId"] in failed]
    assert handler.lambda_handler({"Records": retry}, FakeContext()) == {"batchItemFailures": []}
    store = store_for(None)
    assert [store.count(f"docs/r{n}.txt") for n in range(6)] == [1] * 6


def test_sidecars_of_a_batch_are_found_by_one_listing_and_applied(uploader, s3, bucket, vector_store, index_name):
    """Ten documents, every third with a sidecar: the listing replaces the 404 reads, and each
    document's chunks carry exactly its own sidecar's attributes."""
    from tests.indexer.test_metadata import chunk_metadata, sidecar

    for n in range(0, 10, 3):
        s3.put_object(Bucket=bucket, Key=f"docs/m{n}.txt.metadata.json", Body=sidecar({"n": n}))
    bodies = [uploader.put(f"docs/m{n}.txt", doc(700 + n, 1)) for n in range(10)]
    probe = handler.get_indexer().sidecars
    assert probe is not None
    gets: list[str] = []
    original = probe.s3.get_object

    def counting(**kw: Any) -> Any:
        gets.append(kw["Key"])
        return original(**kw)

    probe.s3.get_object = counting
    try:
        assert uploader.run(*bodies) == {"batchItemFailures": []}
    finally:
        probe.s3.get_object = original
    assert probe.listings >= 1
    sidecar_gets = [k for k in gets if k.endswith(".metadata.json")]
    assert len(sidecar_gets) < 20  # two reads per document without the listing
    for n in range(10):
        assert chunk_metadata(vector_store, index_name, f"docs/m{n}.txt") == [{"n": n} if n % 3 == 0 else {}]


def test_a_sidecar_read_alone_is_one_get(s3, bucket):
    """No other caller: the probe makes the caller's own GET, no listing."""
    probe = SidecarProbe(s3)
    assert probe.read(bucket, "x.metadata.json", lambda: Metadata()) == Metadata()
    assert probe.listings == 0
