"""Commit reads shared by concurrent chat requests.

Every search keeps only chunks of their key's committed version, which costs one DynamoDB
BatchGetItem per query (:func:`rag_shared.commits.visible`). Under many concurrent questions those
reads are the same few keys again and again; :class:`SharedCommitReads` lets the searches that
finish while a read is under way share the next one (group commit, as databases batch log writes).

Why this keeps the guarantee: a caller only ever joins a read that has **not been sent yet**, so
the read it gets starts after its search ended, exactly like a read of its own. A commit made
before the search is therefore seen, and nothing is cached between reads (no TTL, no staleness).
The cost: a caller may wait for one read in flight before its own is sent.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from rag_shared.commits import BATCH_GET_MAX, Commit, CommitStore
from rag_shared.store.group import GroupRunner


class SharedCommitReads(CommitStore):
    """A :class:`CommitStore` whose concurrent :meth:`get_many` calls (search threads) share reads.

    One read runs at a time; the callers that come meanwhile are read together in the next one, up
    to ``max_keys`` keys (one BatchGetItem), through the indexer's :class:`GroupRunner`, which sends
    an item only in a request that starts after its call. Each caller gets its own keys' commits;
    a failed read fails every caller of it. Writes and single reads are the store's own."""

    def __init__(self, store: CommitStore, *, max_keys: int = BATCH_GET_MAX) -> None:
        super().__init__(store.client, store.table, store.namespace, sleep=store._sleep)
        self._store = store
        self.runner: GroupRunner[list[str], dict[str, Commit]] = GroupRunner(
            self._read, max_weight=max_keys, weight=len
        )

    @property
    def reads(self) -> int:
        """BatchGetItem rounds sent (for tests and the bench)."""
        return self.runner.requests

    def _read(self, callers: Sequence[list[str]]) -> list[dict[str, Commit]]:
        found = self._store.get_many(dict.fromkeys(k for keys in callers for k in keys))
        return [{k: found[k] for k in keys if k in found} for keys in callers]

    def get_many(self, keys: Iterable[str], *, consistent: bool = False) -> dict[str, Commit]:
        if consistent:  # a strongly consistent read is the store's own: it never joins a shared one
            return self._store.get_many(keys, consistent=True)
        wanted = list(dict.fromkeys(keys))
        return self.runner(wanted) if wanted else {}
