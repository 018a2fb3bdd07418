"""Reciprocal rank fusion (Cormack et al. 2009; OpenSearch's score-ranker-processor formula)."""

from __future__ import annotations

import pytest
from rag_shared.store.fusion import RRF_K, rrf


def _ids(fused: list[tuple[str, float, list[int | None]]]) -> list[str]:
    return [item for item, _, _ in fused]


def test_scores_are_the_sum_of_reciprocal_ranks_with_k_60() -> None:
    assert RRF_K == 60
    fused = rrf([["a", "b", "c"], ["c", "a"]], key=str)
    scores = {item: score for item, score, _ in fused}
    assert scores == {
        "a": pytest.approx(1 / 61 + 1 / 62),
        "b": pytest.approx(1 / 62),
        "c": pytest.approx(1 / 63 + 1 / 61),
    }
    assert _ids(fused) == ["a", "c", "b"]
    assert {item: ranks for item, _, ranks in fused} == {"a": [1, 2], "b": [2, None], "c": [3, 1]}


def test_agreement_beats_a_single_first_place() -> None:
    # second in both lists beats first in one and absent from the other: RRF rewards agreement
    assert _ids(rrf([["x", "both"], ["y", "both"]], key=str))[0] == "both"


def test_the_rank_constant_changes_how_much_the_top_dominates() -> None:
    lists = [["top", "m1", "m2", "mid"], ["n1", "n2", "n3", "mid"], ["top"]]
    assert _ids(rrf(lists, key=str, k=60))[0] == "top"
    # top: 2/(k+1); mid: 2/(k+4); with k=1, top 1.0 vs mid 0.4; the order holds but the gap grows
    small = {i: s for i, s, _ in rrf(lists, key=str, k=1)}
    assert small["top"] / small["mid"] == pytest.approx((2 / 2) / (2 / 5))
    with pytest.raises(ValueError, match="at least 1"):
        rrf(lists, key=str, k=0)


def test_ties_keep_first_appearance_and_duplicates_count_once() -> None:
    assert _ids(rrf([["a"], ["b"]], key=str)) == ["a", "b"]
    assert _ids(rrf([["b"], ["a"]], key=str)) == ["b", "a"]
    fused = rrf([["a", "a", "b"]], key=str)
    assert {i: s for i, s, _ in fused} == {"a": pytest.approx(1 / 61), "b": pytest.approx(1 / 63)}


def test_items_are_matched_by_key_and_the_first_object_is_kept() -> None:
    left = [("id1", "from-knn"), ("id2", "from-knn")]
    right = [("id2", "from-bm25"), ("id3", "from-bm25")]
    fused = rrf([left, right], key=lambda t: t[0])
    assert [item for item, _, _ in fused] == [("id2", "from-knn"), ("id1", "from-knn"), ("id3", "from-bm25")]
    assert rrf([[], []], key=str) == []
