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

import threading
from collections.abc import Iterable
from dataclasses import dataclass, field

from rag_shared.commits import BATCH_GET_MAX, Commit, CommitStore, CommitStoreError


@dataclass(eq=False)
class _Read:
    """One BatchGetItem being gathered (``sent`` False: others may still add keys) or under way."""

    keys: dict[str, None] = field(default_factory=dict)
    sent: bool = False
    done: threading.Event = field(default_factory=threading.Event)
    found: dict[str, Commit] = field(default_factory=dict)
    error: BaseException | None = None


class SharedCommitReads(CommitStore):
    """A :class:`CommitStore` whose concurrent :meth:`get_many` calls (search threads) share reads.

    At most ``in_flight`` reads run at once; a caller that finds no free slot adds its keys to the
    read that is waiting for one (up to ``max_keys``, one BatchGetItem), and every caller of that
    read gets its own keys' commits from it. Writes and single reads are the store's own."""

    def __init__(self, store: CommitStore, *, in_flight: int = 1, max_keys: int = BATCH_GET_MAX) -> None:
        super().__init__(store.client, store.table, store.namespace, sleep=store._sleep)
        self._store = store
        self._in_flight = in_flight
        self._max_keys = max_keys
        self._cond = threading.Condition()
        self._running = 0
        self._open: _Read | None = None  # the read gathering keys, not sent yet
        self.reads = 0  # BatchGetItem rounds sent (for tests and the bench)

    def get_many(self, keys: Iterable[str], *, consistent: bool = False) -> dict[str, Commit]:
        if consistent:  # a strongly consistent read is the store's own: it never joins a shared one
            return self._store.get_many(keys, consistent=True)
        wanted = list(dict.fromkeys(keys))
        if not wanted:
            return {}
        with self._cond:
            read = self._open
            if read is None or len(read.keys.keys() | wanted) > self._max_keys:
                read = self._open = _Read()
                leader = True
            else:
                leader = False
            read.keys.update(dict.fromkeys(wanted))
            if leader:
                while self._running >= self._in_flight:
                    self._cond.wait()
                read.sent = True  # from here on nobody joins: a joiner's read must start after it came
                if self._open is read:
                    self._open = None
                self._running += 1
                self.reads += 1
                keys_now = list(read.keys)
        if leader:
            try:
                read.found = self._store.get_many(keys_now)
            except BaseException as exc:
                read.error = exc
                raise
            finally:
                with self._cond:
                    self._running -= 1
                    self._cond.notify_all()
                read.done.set()
        else:
            read.done.wait()
            if read.error is not None:
                raise CommitStoreError(f"DynamoDB read commits failed: {read.error}") from read.error
        return {k: read.found[k] for k in wanted if k in read.found}
