"""SharedCommitReads: concurrent searches share BatchGetItem reads, never a read already sent."""

from __future__ import annotations

import threading
from collections.abc import Iterable
from concurrent.futures import Future, ThreadPoolExecutor

import pytest
from chat.commits import SharedCommitReads
from rag_shared.commits import Commit, CommitStore, CommitStoreError

WAIT = 10  # seconds: a bound for a thread that should be long done, never reached when the code works


class Table(CommitStore):
    """Commit records in a dict. ``get_many`` takes its snapshot when called (as DynamoDB answers
    as of the request), then can be held open by a test to keep that read in flight."""

    def __init__(self) -> None:
        super().__init__(None, "commits", "idx")
        self.records: dict[str, Commit] = {}
        self.calls: list[list[str]] = []
        self.entered = threading.Semaphore(0)
        self.hold: threading.Event | None = None
        self.fail: Exception | None = None

    def get_many(self, keys: Iterable[str], *, consistent: bool = False) -> dict[str, Commit]:
        wanted = list(keys)
        snapshot = {k: self.records[k] for k in wanted if k in self.records}
        self.calls.append(wanted)
        self.entered.release()
        if self.hold is not None:
            assert self.hold.wait(WAIT)
        if self.fail is not None:
            raise self.fail
        return snapshot


def commit(key: str, version: str) -> Commit:
    return Commit(key=key, sequencer="0001", version=version)


def start(pool: ThreadPoolExecutor, shared: SharedCommitReads, keys: list[str]) -> Future[dict[str, Commit]]:
    return pool.submit(shared.get_many, keys)


def wait_for_waiters(shared: SharedCommitReads, n: int) -> None:
    """Until ``n`` callers are gathered in the open read (joined, not yet sent)."""
    for _ in range(1000):
        with shared.runner._cond:
            if len({k for slot in shared.runner._queue for k in slot.item}) >= n:
                return
        threading.Event().wait(0.005)
    raise AssertionError("callers never joined the open read")


def test_callers_during_a_read_share_the_next_one_and_get_only_their_keys() -> None:
    table = Table()
    table.records = {f"k{i}": commit(f"k{i}", f"v{i}") for i in range(12)}
    table.hold = threading.Event()
    shared = SharedCommitReads(table)
    with ThreadPoolExecutor(12) as pool:
        first = start(pool, shared, ["k0"])
        assert table.entered.acquire(timeout=WAIT)  # the first read is in flight, held
        later = [start(pool, shared, [f"k{i}", "k0", "missing"]) for i in range(1, 11)]
        wait_for_waiters(shared, 12)  # k1..k10, k0 and "missing" gathered in one waiting read
        table.hold.set()
        assert first.result(WAIT) == {"k0": commit("k0", "v0")}
        for i, f in enumerate(later, start=1):
            assert f.result(WAIT) == {f"k{i}": commit(f"k{i}", f"v{i}"), "k0": commit("k0", "v0")}
    assert len(table.calls) == 2 and shared.reads == 2  # 11 callers, 2 reads instead of 11
    assert sorted(table.calls[1]) == sorted([f"k{i}" for i in range(11)] + ["missing"])


def test_a_caller_never_joins_a_read_already_sent() -> None:
    """A commit made while an earlier read is in flight is seen by a caller that comes after it:
    joining the read in flight would have answered from before the commit."""
    table = Table()
    table.records = {"doc": commit("doc", "old")}
    table.hold = threading.Event()
    shared = SharedCommitReads(table)
    with ThreadPoolExecutor(2) as pool:
        before = start(pool, shared, ["doc"])
        assert table.entered.acquire(timeout=WAIT)  # its snapshot is taken: "old"
        table.records["doc"] = commit("doc", "new")  # the indexer commits a new version
        after = start(pool, shared, ["doc"])  # a search that ended after that commit
        wait_for_waiters(shared, 1)
        table.hold.set()
        assert before.result(WAIT)["doc"].version == "old"
        assert after.result(WAIT)["doc"].version == "new"
    assert len(table.calls) == 2


def test_a_failed_read_fails_every_caller_that_shared_it_and_frees_its_slot() -> None:
    table = Table()
    table.records = {"a": commit("a", "v1"), "b": commit("b", "v1")}
    table.hold = threading.Event()
    shared = SharedCommitReads(table)
    with ThreadPoolExecutor(3) as pool:
        first = start(pool, shared, ["a"])
        assert table.entered.acquire(timeout=WAIT)
        table.fail = CommitStoreError("DynamoDB read commits failed: ThrottlingException")
        joined = [start(pool, shared, ["a"]), start(pool, shared, ["b"])]
        wait_for_waiters(shared, 2)
        table.hold.set()
        for f in [first, *joined]:
            with pytest.raises(CommitStoreError, match="ThrottlingException"):
                f.result(WAIT)
    table.fail, table.hold = None, None
    assert shared.get_many(["a", "b"]) == {"a": commit("a", "v1"), "b": commit("b", "v1")}  # not stuck
    assert not shared.runner._busy and not shared.runner._queue  # no read running, none gathering


def test_a_read_takes_at_most_max_keys_then_a_new_one_gathers() -> None:
    table = Table()
    table.hold = threading.Event()
    shared = SharedCommitReads(table, max_keys=4)
    with ThreadPoolExecutor(4) as pool:
        first = start(pool, shared, ["x"])
        assert table.entered.acquire(timeout=WAIT)
        a = start(pool, shared, ["a1", "a2", "a3"])
        wait_for_waiters(shared, 3)
        b = start(pool, shared, ["b1", "b2"])  # 5 keys would not fit one read of 4
        wait_for_waiters(shared, 2)
        table.hold.set()
        for f in (first, a, b):
            assert f.result(WAIT) == {}
    # after the first read, the two waiting groups' reads race each other: their order is free
    assert sorted(table.calls[0]) == ["x"]
    assert sorted(sorted(c) for c in table.calls[1:]) == [["a1", "a2", "a3"], ["b1", "b2"]]


def test_no_keys_makes_no_read() -> None:
    table = Table()
    assert SharedCommitReads(table).get_many([]) == {}
    assert table.calls == []


def test_against_dynamodb_the_store_reads_through_it(commits: CommitStore) -> None:
    """Wired over a real table (moto), it returns what the table holds, writes unchanged."""
    shared = SharedCommitReads(commits)
    assert shared.commit(Commit(key="k", sequencer="0002", version="v2"))
    assert not shared.commit(Commit(key="k", sequencer="0001", version="v1"))  # an older event
    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(lambda _: shared.get_many(["k", "none"]), range(16)))
    assert all(set(r) == {"k"} and r["k"].version == "v2" for r in results)
    assert 1 <= shared.reads <= 16


def test_a_strongly_consistent_read_is_never_shared() -> None:
    table = Table()
    shared = SharedCommitReads(table)
    assert shared.get_many(["k"], consistent=True) == {}
    assert table.calls == [["k"]] and shared.reads == 0  # the store's own read, not a shared round
