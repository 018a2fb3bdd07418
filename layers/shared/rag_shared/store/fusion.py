"""Reciprocal rank fusion of ranked result lists (pure).

``score(d) = sum over lists q of 1 / (k + rank_q(d))``, ranks from 1, a list without ``d``
contributing nothing: Cormack, Clarke and Buettcher, "Reciprocal Rank Fusion outperforms Condorcet
and individual Rank Learning Methods" (SIGIR 2009), with k = 60, which they found near-optimal and
not critical. OpenSearch's own RRF (the ``score-ranker-processor`` search pipeline processor,
introduced 2.19) uses the same formula with ``rank_constant`` defaulting to 60
(documentation-website _vector-search/ai-search/hybrid-search/rrf.md and
_search-plugins/search-pipelines/score-ranker-processor.md).

Why the fusion runs here and not in a search pipeline: the ``hybrid`` query with a
``normalization-processor`` pipeline exists from OpenSearch 2.10 and RRF (``score-ranker-processor``)
only from 2.19, while this service supports domains from 2.4; OpenSearch Serverless documents only
the normalization processor (min_max/l2 with arithmetic/geometric/harmonic mean) for hybrid search,
not RRF (AWS serverless-configure-neural-search.md); and a pipeline is one more resource to create
and permit per cluster. Fusing two plain queries client-side works unchanged on every domain and on
Serverless, and lets each leg be filtered to committed versions before ranks are assigned.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Sequence
from typing import TypeVar

T = TypeVar("T")
K = TypeVar("K", bound=Hashable)

RRF_K = 60


def rrf(
    rankings: Sequence[Sequence[T]], key: Callable[[T], K], *, k: int = RRF_K
) -> list[tuple[T, float, list[int | None]]]:
    """Fuse ``rankings`` (each best first) into one list, best first: ``(item, fused score,
    rank in each list or None)``. The item kept for a key is its first occurrence in list order.
    Ties keep the order of first appearance (list by list), so the result is deterministic."""
    if k < 1:
        raise ValueError("the RRF rank constant must be at least 1")
    scores: dict[K, float] = {}
    items: dict[K, T] = {}
    ranks: dict[K, list[int | None]] = {}
    for i, ranking in enumerate(rankings):
        seen: set[K] = set()
        for rank, item in enumerate(ranking, start=1):
            key_ = key(item)
            if key_ in seen:  # a duplicate within one list counts once, at its best rank
                continue
            seen.add(key_)
            if key_ not in items:
                items[key_] = item
                ranks[key_] = [None] * len(rankings)
                scores[key_] = 0.0
            scores[key_] += 1.0 / (k + rank)
            ranks[key_][i] = rank
    order = sorted(items, key=lambda x: -scores[x])  # stable: first appearance breaks ties
    return [(items[x], scores[x], ranks[x]) for x in order]
