"""Search request bodies and result parsing (pure): the BM25 leg, hits, the cosine score."""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from rag_shared.store.documents import SEARCH_TYPES, VECTOR_FIELD, SearchHit

# The chunk fields BM25 searches (multi_match best_fields: a chunk scores by its better field).
KEYWORD_FIELDS = ("text", "heading")
# OpenSearch refuses a query whose fields x terms exceed indices.query.bool.max_clause_count, 1,024 by
# default (documentation-website configuring-opensearch/index-settings.md, "the maximum product of
# fields and terms"; too_many_clauses). Two fields: at most 512 terms; keep well under, with room for
# the filter clauses. A CJK ideograph is one term (the standard tokenizer emits one per character).
MAX_QUERY_TERMS = 256
_CJK = "\u3040-\u309f\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff"  # hiragana, CJK ideographs
_TERM = re.compile(rf"[{_CJK}]|[^\W{_CJK}]+")


@dataclass(frozen=True)
class SearchResult:
    """Hits, and what the floor did: ``candidates`` visible chunks matched before ``min_score``,
    ``below_floor`` of them scored under it. No hits with ``candidates == 0`` means nothing matched
    (an empty index, or a filter nothing satisfies); with ``below_floor > 0``, nothing was relevant enough."""

    hits: list[SearchHit]
    candidates: int = 0
    below_floor: int = 0


def check_search(vector: Sequence[float] | None, text: str | None, search_type: str, min_score: float | None) -> None:
    """Refuse a search that cannot run as asked (ValueError, with the reason)."""
    if search_type not in SEARCH_TYPES:
        raise ValueError(f"search_type must be one of {', '.join(SEARCH_TYPES)}, not {search_type!r}")
    if search_type != "keyword" and vector is None:
        raise ValueError(f"{search_type} search needs a query vector")
    if search_type != "semantic" and not (text or "").strip():
        raise ValueError(f"{search_type} search needs the query text")
    if min_score is not None:
        if search_type == "keyword":
            raise ValueError(
                "min_score is a floor on the semantic (cosine) score; keyword search ranks by BM25, "
                "whose scores are unbounded and corpus-dependent: use semantic or hybrid with min_score"
            )
        if not 0 <= min_score <= 1:
            raise ValueError("min_score is a cosine score in [0, 1]")


def keyword_terms(text: str) -> int:
    return sum(1 for _ in _TERM.finditer(text))


def clip_query(text: str, max_terms: int = MAX_QUERY_TERMS) -> str:
    """``text`` up to its ``max_terms``-th term (see MAX_QUERY_TERMS)."""
    for n, m in enumerate(_TERM.finditer(text), start=1):
        if n == max_terms:
            return text[: m.end()]
    return text


def keyword_query(
    text: str, size: int, clauses: list[dict[str, Any]], *, with_vectors: bool = False
) -> dict[str, Any] | None:
    """The BM25 leg: ``multi_match`` over the chunk text and heading, the filter clauses in the bool's
    filter context (no effect on scores). None when the text has no searchable term."""
    query = clip_query(text)
    if keyword_terms(query) == 0:
        return None
    bool_: dict[str, Any] = {"must": [{"multi_match": {"query": query, "fields": list(KEYWORD_FIELDS)}}]}
    if clauses:
        bool_["filter"] = clauses
    return {
        "size": size,
        "_source": True if with_vectors else {"excludes": [VECTOR_FIELD]},
        "query": {"bool": bool_},
    }


def to_hit(hit: dict[str, Any]) -> SearchHit:
    src = hit["_source"]
    return SearchHit(
        id=hit["_id"],
        score=float(hit["_score"]),
        source_key=src["source_key"],
        chunk_number=int(src["chunk_number"]),
        text=src["text"],
        heading=src.get("heading"),
        start=int(src.get("start", 0)),
        end=int(src.get("end", 0)),
        version=src.get("version"),
        metadata=src.get("metadata") if isinstance(src.get("metadata"), dict) else None,
    )


def cosine_score(query: Sequence[float], stored: Sequence[float]) -> float:
    """OpenSearch's score for cosinesimil, ``(2 - d) / 2`` with ``d = 1 - cos`` (k-NN knn-spaces.md)."""
    dot = sum(a * b for a, b in zip(query, stored, strict=False))
    norm = math.sqrt(sum(a * a for a in query)) * math.sqrt(sum(b * b for b in stored))
    if norm == 0:
        return 0.0
    return (1 + dot / norm) / 2
