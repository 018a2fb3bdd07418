"""Group commit: calls made by many threads while one request is in flight go out together in the next.

The indexer runs an SQS batch's records on threads; each small file makes the same few OpenSearch
requests (a bulk write, a cache lookup, a refresh). :class:`GroupRunner` lets those calls share
requests without a timer: the first caller runs its item at once; whoever calls while that request
is in flight waits, and the next request carries every item queued meanwhile. A caller's item only
ever goes out in a request that starts after the call (so a shared refresh still covers the caller's
earlier writes), and each caller gets its own result or its own exception: ``run`` answers item by
item, so one bad item fails only its caller.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Generic, TypeVar

I = TypeVar("I")  # noqa: E741 - item
R = TypeVar("R")  # result


@dataclass(eq=False)
class _Slot(Generic[I, R]):
    item: I
    weight: int
    done: bool = False
    result: R | None = None
    error: BaseException | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)


class GroupRunner(Generic[I, R]):
    """Run ``run(items)`` for items of concurrent callers, one request at a time, items grouped.

    ``run`` returns one answer per item, in order (a result, or an exception raised to that item's
    caller only); if ``run`` itself raises, every caller of that request gets the exception.
    ``max_weight`` bounds a request (``weight`` of its items summed; one item always goes)."""

    def __init__(
        self,
        run: Callable[[Sequence[I]], Sequence[R | BaseException]],
        *,
        max_weight: int = 1000,
        weight: Callable[[I], int] = lambda _: 1,
    ) -> None:
        self._run = run
        self._max_weight = max_weight
        self._weight = weight
        self._cond = threading.Condition()
        self._queue: list[_Slot[I, R]] = []
        self._busy = False
        self.requests = 0  # requests sent (tests and benchmarks read it)

    def __call__(self, item: I) -> R:
        slot: _Slot[I, R] = _Slot(item, max(1, self._weight(item)))
        with self._cond:
            self._queue.append(slot)
        while True:
            with self._cond:
                while not slot.done and self._busy:
                    self._cond.wait()
                if slot.done:
                    break
                self._busy = True  # lead the next request with what is queued, oldest first
                batch = self._take()
                self.requests += 1
            try:
                answers = list(self._run([s.item for s in batch]))
                if len(answers) != len(batch):
                    raise RuntimeError(f"group run answered {len(answers)} of {len(batch)} items")
            except BaseException as exc:  # every caller of this request sees it
                answers = [exc] * len(batch)
            with self._cond:
                for s, answer in zip(batch, answers, strict=True):
                    if isinstance(answer, BaseException):
                        s.error = answer
                    else:
                        s.result = answer
                    s.done = True
                self._busy = False
                self._cond.notify_all()
        if slot.error is not None:
            raise slot.error
        return slot.result  # type: ignore[return-value]  # R itself may be None

    def _take(self) -> list[_Slot[I, R]]:
        """The oldest queued items up to ``max_weight`` (at least one). Called holding the lock."""
        taken, total = 0, 0
        for s in self._queue:
            if taken and total + s.weight > self._max_weight:
                break
            taken += 1
            total += s.weight
        batch, self._queue = self._queue[:taken], self._queue[taken:]
        return batch


__all__ = ["GroupRunner"]
