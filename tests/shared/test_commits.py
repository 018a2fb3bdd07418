"""The commit table's compare-and-set, on moto's DynamoDB: what makes indexing consistent."""

from __future__ import annotations

import threading
from dataclasses import dataclass

from rag_shared.commits import BATCH_GET_MAX, Commit, CommitStore, visible


def seq(n: int) -> str:
    return f"{n:040X}"


def test_an_older_event_never_replaces_a_newer_commit(commits: CommitStore):
    assert commits.commit(Commit("k", seq(5), "v5", 3))
    assert not commits.commit(Commit("k", seq(4), "v4", 9))
    got = commits.get("k")
    assert got is not None and (got.sequencer, got.version, got.chunks) == (seq(5), "v5", 3)
    assert commits.commit(Commit("k", seq(6), None, 0, deleted=True))
    assert not commits.commit(Commit("k", seq(5), "v5", 3))  # a replay of an older event after a delete


def test_the_same_event_twice_is_idempotent_and_another_version_of_it_loses(commits: CommitStore):
    assert commits.commit(Commit("k", seq(7), "first", 2))
    assert commits.commit(Commit("k", seq(7), "first", 2))  # the same commit again (a lost answer)
    assert not commits.commit(Commit("k", seq(7), "second", 2))  # another delivery of the same event
    assert commits.get("k").version == "first"  # type: ignore[union-attr]


def test_concurrent_commits_of_one_event_have_exactly_one_winner(commits: CommitStore):
    barrier = threading.Barrier(8)
    wins: list[str] = []

    def go(token: str) -> None:
        barrier.wait()
        if commits.commit(Commit("k", seq(9), token, 1)):
            wins.append(token)

    threads = [threading.Thread(target=go, args=(f"t{i}",)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(wins) == 1 and commits.get("k").version == wins[0]  # type: ignore[union-attr]


def test_long_keys_and_namespaces_do_not_collide(commits: CommitStore):
    long_key = "docs/" + "文" * 338 + "x.txt"  # 1,024 bytes, S3's maximum
    assert commits.commit(Commit(long_key, seq(1), "v", 1))
    other = CommitStore(commits.client, commits.table, commits.namespace + "-other")
    assert other.get(long_key) is None and commits.get(long_key) is not None


@dataclass
class Hit:
    source_key: str
    version: str | None


def test_readers_keep_only_hits_of_the_committed_version(commits: CommitStore):
    commits.commit(Commit("a", seq(1), "va", 2))
    commits.commit(Commit("b", seq(1), None, 0, deleted=True))
    commits.commit(Commit("c", seq(1), None, 0, reason="empty file"))
    hits = [Hit("a", "old"), Hit("a", "va"), Hit("b", "vb"), Hit("c", "vc"), Hit("d", "vd"), Hit("a", "va")]
    assert visible(hits, commits, 5) == [Hit("a", "va"), Hit("a", "va")]
    assert visible(hits, commits, 1) == [Hit("a", "va")]


def test_many_keys_are_read_in_batches_of_100(commits: CommitStore):
    keys = [f"k{i}" for i in range(BATCH_GET_MAX + 30)]
    for k in keys:
        commits.commit(Commit(k, seq(1), "v", 1))
    assert set(commits.get_many([*keys, "missing"])) == set(keys)
    assert {c.key for c in commits.scan()} == set(keys)
