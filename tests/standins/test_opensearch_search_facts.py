"""The OpenSearch stand-in's full-text search and query DSL, over real HTTP, pinned to the documents
cited in standins/opensearch.py: BM25 as Lucene computes it (k1 = 1.2, b = 0.75), the standard
analyzer (lowercase, UAX #29 words, one token per CJK ideograph), bool semantics, term-level queries
on object paths and arrays, the search body's min_score, dynamic templates, and refusals."""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from standins.opensearch import OpenSearchStandIn, analyze


@pytest.fixture
def http() -> Iterator[httpx.Client]:
    server = OpenSearchStandIn(refresh_interval=None, realtime=True).start()
    with httpx.Client(base_url=server.url, timeout=10) as client:
        yield client
    server.stop()


def _put(http: httpx.Client, docs: dict[str, dict[str, Any]], mappings: dict[str, Any] | None = None) -> None:
    assert (
        http.put("/idx", json={"mappings": mappings or {"properties": {"body": {"type": "text"}}}}).status_code == 200
    )
    for doc_id, doc in docs.items():
        assert http.put(f"/idx/_doc/{doc_id}", json=doc).status_code in (200, 201)


def _search(http: httpx.Client, query: dict[str, Any], **body: Any) -> list[tuple[str, float]]:
    resp = http.post("/idx/_search", json={"query": query, **body})
    assert resp.status_code == 200, resp.text
    return [(h["_id"], h["_score"]) for h in resp.json()["hits"]["hits"]]


def _bm25(tf: int, dl: int, avgdl: float, n: int, docs: int) -> float:
    """Lucene BM25Similarity: idf * tf / (tf + k1 * (1 - b + b * dl / avgdl)), k1 = 1.2, b = 0.75."""
    idf = math.log(1 + (docs - n + 0.5) / (n + 0.5))
    return idf * tf / (tf + 1.2 * (1 - 0.75 + 0.75 * dl / avgdl))


# --- analysis ------------------------------------------------------------------------------------------


def test_standard_analyzer_lowercases_splits_words_and_each_cjk_ideograph() -> None:
    assert analyze("Error E-4012: Token EXPIRED, v3.14 don't") == [
        "error",
        "e",
        "4012",
        "token",
        "expired",
        "v3.14",
        "don't",
    ]
    assert analyze("出差报销ABC") == ["出", "差", "报", "销", "abc"]
    assert analyze("the a of") == ["the", "a", "of"]  # no stop words by default


# --- BM25 ----------------------------------------------------------------------------------------------


def test_match_scores_are_lucene_bm25(http: httpx.Client) -> None:
    docs = {
        "1": {"body": "the quick brown fox"},
        "2": {"body": "the lazy dog"},
        "3": {"body": "fox fox fox jumps over the fox den tonight"},
    }
    _put(http, docs)
    avgdl = (4 + 3 + 9) / 3
    hits = dict(_search(http, {"match": {"body": "fox"}}))
    assert set(hits) == {"1", "3"}  # 2 has no fox
    assert hits["1"] == pytest.approx(_bm25(1, 4, avgdl, 2, 3))
    assert hits["3"] == pytest.approx(_bm25(4, 9, avgdl, 2, 3))
    # a match sums its terms; "the" is in every document, so its idf is small but not zero
    both = dict(_search(http, {"match": {"body": "Fox THE"}}))
    assert both["1"] == pytest.approx(_bm25(1, 4, avgdl, 2, 3) + _bm25(1, 4, avgdl, 3, 3))
    assert both["2"] == pytest.approx(_bm25(1, 3, avgdl, 3, 3))
    # operator and: every term must be present
    assert {i for i, _ in _search(http, {"match": {"body": {"query": "lazy fox", "operator": "and"}}})} == set()


def test_rarer_terms_weigh_more_and_cjk_matches_by_character(http: httpx.Client) -> None:
    _put(http, {"1": {"body": "出差补贴标准"}, "2": {"body": "差旅 报销"}, "3": {"body": "会议 安排"}})
    ranked = _search(http, {"match": {"body": "出差"}})
    assert [i for i, _ in ranked] == ["1", "2"]  # 1 has both characters; 2 only 差


def test_multi_match_best_fields_takes_the_better_field_with_boosts(http: httpx.Client) -> None:
    _put(
        http,
        {"a": {"body": "deploy notes", "title": "deploy"}, "b": {"body": "deploy deploy guide", "title": "guide"}},
        {"properties": {"body": {"type": "text"}, "title": {"type": "text"}}},
    )
    one = dict(_search(http, {"match": {"body": "deploy"}}))
    two = dict(_search(http, {"match": {"title": "deploy"}}))
    best = dict(_search(http, {"multi_match": {"query": "deploy", "fields": ["body", "title"]}}))
    assert best["a"] == pytest.approx(max(one["a"], two["a"]))
    assert best["b"] == pytest.approx(one["b"])
    boosted = dict(_search(http, {"multi_match": {"query": "deploy", "fields": ["body", "title^3"]}}))
    assert boosted["a"] == pytest.approx(max(one["a"], 3 * two["a"]))


def test_bool_must_should_filter_must_not_and_min_score(http: httpx.Client) -> None:
    _put(
        http,
        {
            "1": {"body": "alpha beta", "tag": "x"},
            "2": {"body": "alpha", "tag": "y"},
            "3": {"body": "beta gamma", "tag": "x"},
        },
        {"properties": {"body": {"type": "text"}, "tag": {"type": "keyword"}}},
    )
    alpha = dict(_search(http, {"match": {"body": "alpha"}}))
    # filter restricts without scoring; must scores; must_not excludes
    q = {"bool": {"must": [{"match": {"body": "alpha"}}], "filter": [{"term": {"tag": "x"}}]}}
    ((only, score),) = _search(http, q)
    assert only == "1" and score == pytest.approx(alpha["1"])
    assert [i for i, _ in _search(http, {"bool": {"must_not": [{"term": {"tag": "x"}}]}})] == ["2"]
    # a bool of filters only scores 0; should alone needs one match, beside a filter none
    assert _search(http, {"bool": {"filter": [{"term": {"tag": "y"}}]}}) == [("2", 0.0)]
    only_should = {"bool": {"should": [{"match": {"body": "gamma"}}]}}
    assert [i for i, _ in _search(http, only_should)] == ["3"]
    with_filter = {"bool": {"filter": [{"term": {"tag": "x"}}], "should": [{"match": {"body": "gamma"}}]}}
    assert [i for i, _ in _search(http, with_filter)] == ["3", "1"]  # 3 scores by its should, 1 stays at 0
    # the search body's min_score drops hits scoring below it
    assert [i for i, _ in _search(http, with_filter, min_score=0.01)] == ["3"]


# --- term-level queries on object paths and arrays -----------------------------------------------------


@pytest.fixture
def meta(http: httpx.Client) -> httpx.Client:
    _put(
        http,
        {
            "a": {"metadata": {"year": 2024, "dept": "hr", "tags": ["x", "y"], "ok": True}},
            "b": {"metadata": {"year": 2019, "dept": "eng", "tags": ["z"], "ok": False}},
            "c": {"other": 1},
        },
        {
            "dynamic_templates": [
                {
                    "meta_kw": {
                        "path_match": "metadata.*",
                        "match_mapping_type": "string",
                        "mapping": {"type": "keyword"},
                    }
                }
            ],
            "properties": {"metadata": {"type": "object"}},
        },
    )
    return http


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ({"term": {"metadata.dept": "hr"}}, {"a"}),
        ({"term": {"metadata.tags": "y"}}, {"a"}),
        ({"terms": {"metadata.tags": ["z", "q"]}}, {"b"}),
        ({"term": {"metadata.ok": True}}, {"a"}),
        ({"term": {"metadata.year": "2019"}}, {"b"}),  # numeric strings are coerced
        ({"range": {"metadata.year": {"gte": 2020}}}, {"a"}),
        ({"range": {"metadata.year": {"gt": 2019, "lte": 2024}}}, {"a"}),
        ({"prefix": {"metadata.dept": "en"}}, {"b"}),
        ({"term": {"metadata.missing": "x"}}, set()),
        (
            {
                "bool": {
                    "should": [{"term": {"metadata.dept": "eng"}}, {"term": {"metadata.tags": "x"}}],
                    "minimum_should_match": 1,
                }
            },
            {"a", "b"},
        ),
    ],
)
def test_term_level_queries_on_metadata_paths(meta: httpx.Client, query: dict[str, Any], expected: set[str]) -> None:
    assert {i for i, _ in _search(meta, {"bool": {"filter": [query]}})} == expected


def test_dynamic_templates_map_new_metadata_strings_as_keyword(meta: httpx.Client) -> None:
    props = meta.get("/idx/_mapping").json()["idx"]["mappings"]["properties"]
    fields = props["metadata"]["properties"]
    assert fields["dept"] == {"type": "keyword"}
    assert fields["tags"] == {"type": "keyword"}
    assert fields["year"] == {"type": "long"}  # not a string: dynamic mapping as usual
    assert fields["ok"] == {"type": "boolean"}
    # a string outside metadata gets the default: text with a keyword subfield
    meta.put("/idx/_doc/d", json={"note": "free text"})
    assert meta.get("/idx/_mapping").json()["idx"]["mappings"]["properties"]["note"]["type"] == "text"


def test_put_mapping_adds_dynamic_templates_to_an_existing_index(http: httpx.Client) -> None:
    _put(http, {"1": {"metadata": {"dept": "hr"}}}, {"properties": {"metadata": {"type": "object"}}})
    assert (
        http.get("/idx/_mapping").json()["idx"]["mappings"]["properties"]["metadata"]["properties"]["dept"]["type"]
        == "text"
    )
    templates = [{"kw": {"path_match": "metadata.*", "match_mapping_type": "string", "mapping": {"type": "keyword"}}}]
    resp = http.put(
        "/idx/_mapping", json={"dynamic_templates": templates, "properties": {"metadata": {"type": "object"}}}
    )
    assert resp.status_code == 200, resp.text
    http.put("/idx/_doc/2", json={"metadata": {"team": "core"}})
    fields = http.get("/idx/_mapping").json()["idx"]["mappings"]["properties"]["metadata"]["properties"]
    assert fields["dept"]["type"] == "text"  # templates apply to new fields only
    assert fields["team"] == {"type": "keyword"}


# --- refusals ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("query", "etype", "reason"),
    [
        ({"fuzzy_match": {"body": "x"}}, "parsing_exception", "unknown query [fuzzy_match]"),
        ({"range": {"metadata.year": {"gte": "last year"}}}, "query_shard_exception", 'For input string: "last year"'),
        ({"term": {"metadata.ok": "yes"}}, "query_shard_exception", "Can't parse boolean value [yes]"),
        ({"prefix": {"metadata.year": "20"}}, "query_shard_exception", "Can only use prefix queries on keyword"),
        ({"term": {"a": 1}, "match_all": {}}, "parsing_exception", "malformed"),
    ],
)
def test_queries_opensearch_refuses(meta: httpx.Client, query: dict[str, Any], etype: str, reason: str) -> None:
    resp = meta.post("/idx/_search", json={"query": query})
    assert resp.status_code == 400
    assert resp.json()["error"]["type"] == etype
    assert reason in resp.json()["error"]["reason"]


def test_a_match_over_max_clause_count_fails_the_search(http: httpx.Client) -> None:
    _put(http, {"1": {"body": "w1 w2"}}, {"properties": {"body": {"type": "text"}, "title": {"type": "text"}}})
    words = " ".join(f"w{i}" for i in range(513))  # 513 terms x 2 fields > 1,024
    resp = http.post("/idx/_search", json={"query": {"multi_match": {"query": words, "fields": ["body", "title"]}}})
    assert resp.status_code == 500
    assert resp.json()["error"]["root_cause"][0] == {
        "type": "too_many_clauses",
        "reason": "maxClauseCount is set to 1024",
    }
    ok = " ".join(f"w{i}" for i in range(512))
    resp = http.post("/idx/_search", json={"query": {"multi_match": {"query": ok, "fields": ["body", "title"]}}})
    assert resp.status_code == 200 and resp.json()["hits"]["hits"][0]["_id"] == "1"
