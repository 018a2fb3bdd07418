"""Retrieval against the OpenSearch stand-in (BM25 and k-NN as OpenSearch scores them, see
tests/standins/test_opensearch_search_facts.py), on a managed domain and on Serverless: each
search type, metadata filters, the committed-version visibility, and the score floor."""

from __future__ import annotations

import math
from typing import Any

import pytest
from opensearchpy.exceptions import TransportError
from rag_shared.commits import Commit, CommitStore
from rag_shared.config import load_settings
from rag_shared.store import ChunkDoc, SearchFilter, ServerlessStore, VectorStore, index_body, make_client

from standins.opensearch import OpenSearchStandIn

DIMS = 8
Q = [1.0] + [0.0] * (DIMS - 1)  # the query vector


def _vec(*pairs: tuple[int, float]) -> list[float]:
    v = [0.0] * DIMS
    for i, x in pairs:
        v[i] = x
    n = math.sqrt(sum(x * x for x in v))
    return [x / n for x in v]


class MetaDoc(ChunkDoc):
    """A chunk with metadata (as the indexer writes it from sidecars and S3 user metadata)."""

    metadata: dict[str, Any]


# key, text, vector, metadata. Semantic order for Q: travel, leave, deploy, notes, errors (orthogonal).
CORPUS: list[tuple[str, str, list[float], dict[str, Any]]] = [
    (
        "policy/travel.md",
        "Travel policy: book flights through the portal.",
        _vec((0, 1), (1, 0.1)),
        {"dept": "hr", "year": 2024, "tags": ["travel", "policy"], "public": True},
    ),
    ("policy/leave.md", "Annual leave accrues monthly.", _vec((0, 1), (2, 0.3)), {"dept": "hr", "year": 2021}),
    (
        "eng/deploy.md",
        "Deploy with the pipeline after review.",
        _vec((0, 1), (3, 0.6)),
        {"dept": "eng", "year": 2023, "tags": ["ops"], "public": False},
    ),
    ("misc/notes.md", "Meeting notes from the offsite.", _vec((0, 1), (4, 1.0)), {}),
    (
        "eng/errors.md",
        "Code E-4012 means the session token expired.",
        _vec((5, 1)),
        {"dept": "eng", "year": 2025, "rating": 4.5},
    ),
]


def _doc(key: str, text: str, vector: list[float], metadata: dict[str, Any], version: str = "v1") -> MetaDoc:
    return MetaDoc(
        id=f"{key}#{version}#0",
        source_key=key,
        version=version,
        chunk_number=0,
        text=text,
        start=0,
        end=len(text),
        content_hash=f"{key}-{version}",
        embedding_model="m",
        source_seq="0" * 40,
        vector=vector,
        metadata=metadata,
    )


def _store(server: OpenSearchStandIn, index: str, commits: CommitStore | None) -> VectorStore:
    settings = load_settings(opensearch_url=server.url, opensearch_index=index)
    kind = ServerlessStore if server.serverless else VectorStore
    return kind(make_client(settings), index, DIMS, commits=commits, backoff_seconds=0.01)


def _index(server: OpenSearchStandIn, store: VectorStore, commits: CommitStore) -> None:
    store.ensure_index()
    store.write_chunks([_doc(*row) for row in CORPUS])
    for key, *_ in CORPUS:
        assert commits.commit(Commit(key=key, sequencer="1".zfill(20), version="v1", chunks=1))
    server.refresh_all()


@pytest.fixture
def indexed(vector_store: OpenSearchStandIn, commits: CommitStore, index_name: str) -> VectorStore:
    store = _store(vector_store, index_name, commits)
    _index(vector_store, store, commits)
    return store


def _keys(hits: list[Any]) -> list[str]:
    return [h.source_key for h in hits]


# --- search types --------------------------------------------------------------------------------------


def test_keyword_finds_a_rare_term_that_semantic_ranks_last_and_hybrid_keeps(indexed: VectorStore) -> None:
    question = "what does E-4012 mean"
    semantic = indexed.search(Q, 3, text=question, search_type="semantic")
    assert _keys(semantic) == ["policy/travel.md", "policy/leave.md", "eng/deploy.md"]
    keyword = indexed.search(None, 3, text=question, search_type="keyword")  # no vector: no embedding call
    assert _keys(keyword) == ["eng/errors.md"]
    assert keyword[0].keyword_score == keyword[0].score > 0
    hybrid = indexed.search(Q, 3, text=question, search_type="hybrid")
    # errors.md: rank 1 in BM25 and rank 5 in k-NN, 1/61 + 1/65, beats travel's 1/61 (k-NN rank 1 only)
    assert _keys(hybrid) == ["eng/errors.md", "policy/travel.md", "policy/leave.md"]
    assert hybrid[0].score == pytest.approx(1 / 61 + 1 / 65)
    assert hybrid[1].score == pytest.approx(1 / 61)
    assert hybrid[1].semantic_score == pytest.approx(semantic[0].score)
    assert hybrid[0].semantic_score == pytest.approx(0.5)  # cosine 0: (2 - 1) / 2


def test_each_search_type_refuses_what_it_cannot_run(indexed: VectorStore) -> None:
    with pytest.raises(ValueError, match="needs a query vector"):
        indexed.search(None, 3, text="deploy", search_type="hybrid")
    with pytest.raises(ValueError, match="needs the query text"):
        indexed.search(None, 3, search_type="keyword")
    with pytest.raises(ValueError, match="search_type must be one of"):
        indexed.search(Q, 3, search_type="fuzzy")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="unbounded"):
        indexed.search(None, 3, text="deploy", search_type="keyword", min_score=0.5)


def test_a_query_with_no_searchable_term_finds_nothing_by_keyword(indexed: VectorStore) -> None:
    assert indexed.search(None, 3, text="?!", search_type="keyword") == []
    assert _keys(indexed.search(Q, 1, text="?!", search_type="hybrid")) == ["policy/travel.md"]


# --- metadata filters ----------------------------------------------------------------------------------

FILTERS: list[tuple[dict[str, Any], set[str]]] = [
    ({"equals": {"key": "dept", "value": "hr"}}, {"policy/travel.md", "policy/leave.md"}),
    ({"equals": {"key": "tags", "value": "ops"}}, {"eng/deploy.md"}),  # any element of a list
    ({"equals": {"key": "public", "value": True}}, {"policy/travel.md"}),
    ({"equals": {"key": "year", "value": 2021}}, {"policy/leave.md"}),
    ({"equals": {"key": "dept", "value": "nobody"}}, set()),
    ({"in": {"key": "dept", "values": ["eng", "legal"]}}, {"eng/deploy.md", "eng/errors.md"}),
    ({"in": {"key": "tags", "values": ["travel", "ops"]}}, {"policy/travel.md", "eng/deploy.md"}),
    ({"range": {"key": "year", "gte": 2023}}, {"eng/deploy.md", "eng/errors.md", "policy/travel.md"}),
    ({"range": {"key": "year", "gt": 2021, "lt": 2025}}, {"policy/travel.md", "eng/deploy.md"}),
    ({"range": {"key": "rating", "gte": 4}}, {"eng/errors.md"}),
    ({"range": {"key": "dept", "gt": "f"}}, {"policy/travel.md", "policy/leave.md"}),  # keyword: string order
    (
        {"and": [{"equals": {"key": "dept", "value": "eng"}}, {"range": {"key": "year", "gte": 2024}}]},
        {"eng/errors.md"},
    ),
    (
        {
            "or": [
                {"and": [{"equals": {"key": "dept", "value": "hr"}}, {"range": {"key": "year", "lt": 2022}}]},
                {"in": {"key": "tags", "values": ["ops"]}},
            ]
        },
        {"policy/leave.md", "eng/deploy.md"},
    ),
]


@pytest.mark.parametrize(("metadata", "expected"), FILTERS)
@pytest.mark.parametrize("search_type", ["semantic", "hybrid"])
def test_metadata_filters_restrict_every_leg(
    indexed: VectorStore, metadata: dict[str, Any], expected: set[str], search_type: str
) -> None:
    flt = SearchFilter.model_validate({"metadata": metadata})
    # the text matches every document, so the BM25 leg alone would return all five
    text = "policy leave deploy notes code"
    hits = indexed.search(Q, 10, flt, text=text, search_type=search_type)  # type: ignore[arg-type]
    assert set(_keys(hits)) == expected


def test_metadata_filters_the_keyword_leg_and_combine_with_key_filters(indexed: VectorStore) -> None:
    eng = SearchFilter.model_validate({"metadata": {"equals": {"key": "dept", "value": "eng"}}})
    hr = SearchFilter.model_validate({"metadata": {"equals": {"key": "dept", "value": "hr"}}})
    assert _keys(indexed.search(None, 5, eng, text="E-4012", search_type="keyword")) == ["eng/errors.md"]
    assert indexed.search(None, 5, hr, text="E-4012", search_type="keyword") == []
    both = SearchFilter.model_validate({"key_prefix": "policy/", "metadata": {"range": {"key": "year", "gte": 2022}}})
    assert _keys(indexed.search(Q, 5, both, text="policy", search_type="hybrid")) == ["policy/travel.md"]
    keys = SearchFilter.model_validate(
        {"keys": ["eng/deploy.md"], "metadata": {"equals": {"key": "dept", "value": "hr"}}}
    )
    assert indexed.search(Q, 5, keys, text="deploy", search_type="hybrid") == []


# --- committed versions only ---------------------------------------------------------------------------


@pytest.mark.parametrize("search_type", ["semantic", "hybrid", "keyword"])
def test_only_committed_versions_are_visible_to_every_search_type(
    vector_store: OpenSearchStandIn, commits: CommitStore, index_name: str, search_type: str
) -> None:
    store = _store(vector_store, index_name, commits)
    _index(vector_store, store, commits)
    # A newer, uncommitted write of errors.md (a try in progress), closer to Q and with the rare term
    # three times; and a key never committed. Both would win every leg if they were visible.
    store.write_chunks(
        [
            _doc("eng/errors.md", "E-4012 E-4012 E-4012 draft", _vec((0, 1)), {"dept": "eng"}, version="v2"),
            _doc("draft/new.md", "E-4012 draft of the new page", _vec((0, 1)), {"dept": "eng"}, version="v9"),
        ]
    )
    vector_store.refresh_all()
    hits = store.search(Q, 3, text="E-4012", search_type=search_type)  # type: ignore[arg-type]
    assert all(h.version == "v1" for h in hits)
    assert "draft/new.md" not in _keys(hits)
    if search_type != "semantic":
        assert _keys(hits)[0] == "eng/errors.md"
    raw = store.search_all(Q, 10)
    assert {h.version for h in raw} == {"v1", "v2", "v9"}  # they are in the index, just not visible


# --- the score floor -----------------------------------------------------------------------------------


def test_min_score_is_a_floor_on_the_cosine_score_for_every_leg(indexed: VectorStore) -> None:
    # cosine scores for Q: travel 0.997, leave 0.979, deploy 0.929, notes 0.854, errors 0.5
    found = indexed.search_result(Q, 5, text="E-4012 travel", search_type="semantic", min_score=0.9)
    assert _keys(found.hits) == ["policy/travel.md", "policy/leave.md", "eng/deploy.md"]
    assert all(h.score >= 0.9 for h in found.hits)
    assert (found.candidates, found.below_floor) == (5, 2)
    # hybrid: errors.md is BM25's first hit but its cosine score (0.5) is under the floor: dropped
    hybrid = indexed.search_result(Q, 5, text="E-4012 travel", search_type="hybrid", min_score=0.9)
    assert "eng/errors.md" not in _keys(hybrid.hits)
    assert _keys(hybrid.hits)[0] == "policy/travel.md"  # in both legs
    assert hybrid.below_floor == 2
    # under the floor everything: no hits, and the result says why
    none = indexed.search_result(Q, 5, text="E-4012", search_type="hybrid", min_score=0.999)
    assert none.hits == [] and none.candidates == 5 and none.below_floor == 5
    # a BM25-only hit above the floor stays (its cosine score computed from its stored vector)
    low = indexed.search_result(Q, 5, text="E-4012", search_type="hybrid", min_score=0.4)
    assert "eng/errors.md" in _keys(low.hits)


def test_nothing_matched_is_told_apart_from_nothing_relevant(
    vector_store: OpenSearchStandIn, commits: CommitStore, index_name: str
) -> None:
    store = _store(vector_store, index_name, commits)
    empty = store.search_result(Q, 5, text="anything", search_type="hybrid", min_score=0.5)
    assert (empty.hits, empty.candidates, empty.below_floor) == ([], 0, 0)  # no index yet: not an error


# --- the mapping ---------------------------------------------------------------------------------------


def test_an_existing_index_gets_the_metadata_templates(
    vector_store: OpenSearchStandIn, commits: CommitStore, index_name: str
) -> None:
    """An index created before metadata filters: ensure_index adds the dynamic templates in place,
    so a metadata string is then a keyword (exact filters), not text."""
    old = index_body(DIMS, "faiss", serverless=vector_store.serverless)
    old["mappings"].pop("dynamic_templates")
    old["mappings"]["properties"].pop("metadata")
    store = _store(vector_store, index_name, commits)
    store.client.indices.create(index=index_name, body=old)
    store.ensure_index()
    mappings = vector_store.indices[index_name].mappings
    assert [next(iter(t)) for t in mappings["dynamic_templates"]] == [
        "metadata_string_as_keyword",
        "metadata_date_as_keyword",
    ]
    store.write_chunks([_doc("a.md", "alpha", _vec((0, 1)), {"team": "Core Platform", "since": "2024-05-01"})])
    vector_store.refresh_all()
    meta = vector_store.indices[index_name].mappings["properties"]["metadata"]["properties"]
    assert meta["team"] == {"type": "keyword"}
    assert meta["since"] == {"type": "keyword"}  # not a date: ISO strings range-compare as keywords
    exact = SearchFilter.model_validate({"metadata": {"equals": {"key": "team", "value": "Core Platform"}}})
    assert commits.commit(Commit(key="a.md", sequencer="1".zfill(20), version="v1", chunks=1))
    assert _keys(store.search(Q, 5, exact)) == ["a.md"]
    partial = SearchFilter.model_validate({"metadata": {"equals": {"key": "team", "value": "core"}}})
    assert store.search(Q, 5, partial) == []  # a keyword matches whole values only


def test_a_long_question_is_clipped_under_the_clause_limit(indexed: VectorStore) -> None:
    """OpenSearch refuses a match of more than 1,024 fields x terms (the stand-in too): the keyword leg
    sends the question's first MAX_QUERY_TERMS terms, so a 32,000-character question still searches."""
    question = "E-4012 " + " ".join(f"filler{i}" for i in range(3000))
    assert _keys(indexed.search(None, 2, text=question, search_type="keyword")) == ["eng/errors.md"]
    assert _keys(indexed.search(Q, 1, text="出差" * 2000, search_type="hybrid")) == ["policy/travel.md"]
    with pytest.raises(TransportError) as info:  # the same question unclipped: what clipping avoids
        indexed.client.search(
            index=indexed.index,
            body={"query": {"multi_match": {"query": question, "fields": ["text", "heading"]}}},
        )
    assert info.value.status_code == 500
