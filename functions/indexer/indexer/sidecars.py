"""Which metadata sidecars exist, for the documents of concurrent records in one listing.

Every document's indexing reads its sidecar before writing and again after its commit (see
``Indexer._settle_metadata``), and most documents have none: two GETs answered 404 per file, the
largest share of an SQS batch of small files' S3 requests. Reads made while one listing is in flight
are answered together by the next ``ListObjectsV2`` over the range of their sidecar names (group
commit, :class:`rag_shared.store.group.GroupRunner`): a sidecar the listing does not show is absent
as of a moment after the caller asked, which is what a GET would have said; one it shows is then
read with a GET as before. A lone caller's own GET is the request in flight (it is answered as
before, in one request), so callers arriving meanwhile are grouped behind it. S3 lists keys in
ascending UTF-8 binary order, up to 1,000 per request, and ``StartAfter`` starts after the given
key (S3 API reference, ListObjectsV2); a listing is strongly consistent with the writes that precede
it (S3 user guide, "Amazon S3 data consistency model"). A name past the page or a failed listing:
the GET decides, as before.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from typing import Any

from rag_shared.store.group import GroupRunner

from indexer.metadata import Metadata

Read = Callable[[], Metadata]  # the caller's own GET of its sidecar

log = logging.getLogger(__name__)

LIST_MAX = 1000  # keys per ListObjectsV2 page (S3 API reference, ListObjectsV2: MaxKeys, at most 1,000)
GROUP_MAX = 100  # sidecar names one listing answers


def listing_range(names: Sequence[str]) -> tuple[str, str]:
    """``(Prefix, StartAfter)`` of one listing that covers ``names`` from the smallest: their common
    prefix, and a key just before the smallest (a proper prefix of it sorts before it)."""
    return os.path.commonprefix(list(names)), min(names)[:-1]  # noqa: RUF071 - a key prefix, not a path


def page_size(names: Sequence[str]) -> int:
    """Keys to list: room for each name, its document and neighbours of a batch's range (every key
    parsed costs the client time; names past a short page are read with a GET)."""
    return min(LIST_MAX, max(100, 4 * len(names)))


def decide(names: Sequence[str], listed: Sequence[str], truncated: bool) -> list[bool | None]:
    """For each name: True (listed), False (in the range the listing covered, not listed), None
    (past a truncated page: unknown). Python compares str by code point, the order of UTF-8 bytes."""
    present = set(listed)
    last = listed[-1] if listed else None
    out: list[bool | None] = []
    for name in names:
        if name in present:
            out.append(True)
        elif not truncated or (last is not None and name <= last):
            out.append(False)
        else:
            out.append(None)
    return out


class SidecarProbe:
    """``read(bucket, name, get)``: the sidecar ``name`` as S3 serves it now; ``get`` reads it alone."""

    def __init__(self, s3: Any) -> None:
        self.s3 = s3
        self._runner: GroupRunner[tuple[str, str, Read], Metadata | None] = GroupRunner(
            self._answer, max_weight=GROUP_MAX
        )
        self.listings = 0

    def read(self, bucket: str, name: str, get: Read) -> Metadata:
        found = self._runner((bucket, name, get))
        return get() if found is None else found  # listed, or unknown: its own GET, on its own thread

    def _answer(self, items: Sequence[tuple[str, str, Read]]) -> list[Metadata | BaseException | None]:
        if len(items) == 1:
            return [_own(items[0][2])]  # alone: its GET is the request the next callers queue behind
        answers: dict[tuple[str, str], bool | None] = {}
        for bucket in dict.fromkeys(b for b, _, _ in items):
            names = sorted({n for b, n, _ in items if b == bucket})
            answers.update(((bucket, n), a) for n, a in zip(names, self._list(bucket, names), strict=True))
        return [Metadata() if answers[(b, n)] is False else None for b, n, _ in items]

    def _list(self, bucket: str, names: list[str]) -> list[bool | None]:
        if len(names) == 1:
            return [None]
        prefix, start = listing_range(names)
        self.listings += 1
        try:
            page = self.s3.list_objects_v2(Bucket=bucket, Prefix=prefix, StartAfter=start, MaxKeys=page_size(names))
        except Exception as exc:  # the GETs decide instead
            log.warning("could not list sidecars; reading them one by one: %s", type(exc).__name__)
            return [None] * len(names)
        listed = [str(o["Key"]) for o in page.get("Contents", [])]
        return decide(names, listed, bool(page.get("IsTruncated")))


def _own(get: Read) -> Metadata | BaseException:
    try:
        return get()
    except Exception as exc:  # raised to this caller only
        return exc


__all__ = ["SidecarProbe", "decide", "listing_range", "page_size"]
