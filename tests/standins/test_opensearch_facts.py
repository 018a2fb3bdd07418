"""The OpenSearch stand-in enforces OpenSearch's documented behaviour over real HTTP, so a product
request that a real cluster (of a given version, or Serverless) would refuse fails in the tests.

Each fact is cited in standins/opensearch.py; here every one is exercised through a socket.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import orjson
import pytest

from standins.opensearch import OpenSearchStandIn


def _knn_body(engine: str, space: str, *, dims: int = 4, name: str = "hnsw") -> dict[str, Any]:
    return {
        "settings": {"index": {"knn": True}},
        "mappings": {
            "properties": {
                "v": {
                    "type": "knn_vector",
                    "dimension": dims,
                    "method": {"name": name, "engine": engine, "space_type": space},
                },
                "k": {"type": "keyword"},
            }
        },
    }


@pytest.fixture
def cluster(request: pytest.FixtureRequest) -> Iterator[tuple[OpenSearchStandIn, httpx.Client]]:
    kwargs = getattr(request, "param", {})
    server = OpenSearchStandIn(refresh_interval=None, realtime=True, **kwargs).start()
    with httpx.Client(base_url=server.url, timeout=10) as http:
        yield server, http
    server.stop()


def _ndjson(lines: list[Any]) -> bytes:
    return b"".join(orjson.dumps(line) + b"\n" for line in lines)


def _error(resp: httpx.Response) -> dict[str, Any]:
    body = resp.json()
    assert body["error"]["root_cause"][0]["type"] == body["error"]["type"]
    return body["error"]  # type: ignore[no-any-return]


# --- versions and k-NN methods -------------------------------------------------------------------------

SUPPORTED = [  # (version, engine, space, accepted?) per knn-methods-engines.md
    ("2.9.0", "faiss", "cosinesimil", False),
    ("2.11.0", "faiss", "cosinesimil", False),
    ("2.18.0", "faiss", "cosinesimil", False),
    ("2.19.0", "faiss", "cosinesimil", True),
    ("3.0.0", "faiss", "cosinesimil", True),
    ("2.9.0", "lucene", "cosinesimil", True),
    ("2.11.0", "lucene", "cosinesimil", True),
    ("2.11.0", "lucene", "innerproduct", False),
    ("2.13.0", "lucene", "innerproduct", True),
    ("2.9.0", "faiss", "l2", True),
    ("2.11.0", "nmslib", "cosinesimil", True),
    ("3.0.0", "nmslib", "cosinesimil", False),
    ("2.1.0", "lucene", "l2", False),
]


@pytest.mark.parametrize(("version", "engine", "space", "accepted"), SUPPORTED)
def test_each_version_accepts_only_the_methods_it_has(version: str, engine: str, space: str, accepted: bool) -> None:
    server = OpenSearchStandIn(version=version, refresh_interval=None).start()
    try:
        with httpx.Client(base_url=server.url) as http:
            assert http.get("/").json()["version"] == {"number": version, "distribution": "opensearch"}
            resp = http.put("/idx", json=_knn_body(engine, space))
        if accepted:
            assert resp.status_code == 200, resp.text
        else:
            assert resp.status_code == 400
            error = _error(resp)
            assert error["type"] == "mapper_parsing_exception"
            assert error["reason"].startswith("Failed to parse mapping [_doc]: ")
    finally:
        server.stop()


def test_faiss_cosine_before_2_19_gets_the_k_nn_plugins_own_message() -> None:
    server = OpenSearchStandIn(version="2.11.0", refresh_interval=None).start()
    try:
        reason = _error(httpx.put(f"{server.url}/idx", json=_knn_body("faiss", "cosinesimil")))["reason"]
        assert 'Validation Failed: 1: "hnsw" with "faiss" configuration does not support space type: "cosinesimil"' in (
            reason
        )
        nmslib = OpenSearchStandIn(version="3.0.0", refresh_interval=None).start()
        try:
            reason = _error(httpx.put(f"{nmslib.url}/idx", json=_knn_body("nmslib", "l2")))["reason"]
            assert "nmslib engine is deprecated in OpenSearch and cannot be used for new index creation" in reason
        finally:
            nmslib.stop()
    finally:
        server.stop()


def test_filtered_knn_needs_an_engine_version_that_filters() -> None:
    server = OpenSearchStandIn(version="2.4.0", refresh_interval=None, realtime=True).start()
    try:
        with httpx.Client(base_url=server.url) as http:
            assert http.put("/f", json=_knn_body("faiss", "l2")).status_code == 200
            assert http.put("/l", json=_knn_body("lucene", "l2")).status_code == 200
            query = {"query": {"knn": {"v": {"vector": [1, 0, 0, 0], "k": 1, "filter": {"term": {"k": "a"}}}}}}
            assert http.post("/l/_search", json=query).status_code == 200  # lucene filters from 2.4
            resp = http.post("/f/_search", json=query)  # faiss only from 2.9
            assert resp.status_code == 400 and "does not support filters" in _error(resp)["reason"]
    finally:
        server.stop()


# --- automatic index creation and templates --------------------------------------------------------------


def test_bulk_to_a_missing_index_creates_it_with_dynamic_mappings(cluster: Any) -> None:
    server, http = cluster
    doc = {"embedding": [0.1, 0.2], "source_key": "a.md", "chunk_number": 3, "deleted": False, "at": "2026-01-02"}
    resp = http.post("/_bulk", content=_ndjson([{"index": {"_index": "auto", "_id": "1"}}, doc]))
    assert resp.status_code == 200 and not resp.json()["errors"]
    props = http.get("/auto/_mapping").json()["auto"]["mappings"]["properties"]
    assert props["embedding"] == {"type": "float"}  # the vector lost k-NN: a plain float array
    assert props["source_key"] == {"type": "text", "fields": {"keyword": {"type": "keyword", "ignore_above": 256}}}
    assert props["chunk_number"] == {"type": "long"}
    assert props["deleted"] == {"type": "boolean"}
    assert props["at"] == {"type": "date"}
    knn = {"query": {"knn": {"embedding": {"vector": [0.1, 0.2], "k": 1}}}}
    resp = http.post("/auto/_search", json=knn)
    assert resp.status_code == 400 and "not knn_vector type" in _error(resp)["reason"]
    assert server.indices["auto"].auto_created
    # a single-document write auto-creates too
    assert http.put("/auto2/_doc/x", json={"t": "hello"}).status_code == 201


def test_a_matching_index_template_shapes_an_auto_created_index(cluster: Any) -> None:
    _, http = cluster
    body = _knn_body("faiss", "cosinesimil") | {}
    assert http.put("/_index_template/t", json={"index_patterns": ["chunks*"], "template": body}).status_code == 200
    got = http.get("/_index_template/t").json()["index_templates"][0]
    assert got["name"] == "t" and got["index_template"]["index_patterns"] == ["chunks*"]
    assert http.head("/_index_template/t").status_code == 200 and http.head("/_index_template/u").status_code == 404
    resp = http.post("/_bulk", content=_ndjson([{"index": {"_index": "chunks-1"}}, {"v": [1, 0, 0, 0], "k": "a"}]))
    assert not resp.json()["errors"]
    assert http.get("/chunks-1/_mapping").json()["chunks-1"]["mappings"]["properties"]["v"]["type"] == "knn_vector"
    # the create request overrides the template (settings key by key)
    created = http.put("/chunks-2", json={"settings": {"index.blocks.write": False}})
    assert created.status_code == 200
    flat = http.get("/chunks-2/_settings", params={"flat_settings": "true"}).json()["chunks-2"]["settings"]
    assert flat["index.knn"] == "true" and flat["index.blocks.write"] == "false"


def test_templates_are_validated_and_may_not_tie(cluster: Any) -> None:
    _, http = cluster
    bad = OpenSearchStandIn(version="2.11.0", refresh_interval=None).start()
    try:
        resp = httpx.put(
            f"{bad.url}/_index_template/t",
            json={"index_patterns": ["x"], "template": _knn_body("faiss", "cosinesimil")},
        )
        assert resp.status_code == 400 and _error(resp)["type"] == "mapper_parsing_exception"
    finally:
        bad.stop()
    assert http.put("/_index_template/a", json={"index_patterns": ["logs-*"], "priority": 5}).status_code == 200
    resp = http.put("/_index_template/b", json={"index_patterns": ["logs-x*"], "priority": 5})
    assert resp.status_code == 400 and "multiple index templates may not match" in _error(resp)["reason"]
    assert http.put("/_index_template/b", json={"index_patterns": ["logs-x*"], "priority": 6}).status_code == 200


def test_a_strict_mapping_refuses_new_fields_and_put_mapping_adds_them(cluster: Any) -> None:
    _, http = cluster
    body = _knn_body("faiss", "cosinesimil")
    vector = body["mappings"]["properties"].pop("v")
    body["mappings"]["dynamic"] = "strict"
    assert http.put("/strict", json=body).status_code == 200
    resp = http.post("/_bulk", content=_ndjson([{"index": {"_index": "strict"}}, {"k": "a", "v": [1, 0, 0, 0]}]))
    error = resp.json()["items"][0]["index"]["error"]
    assert error["type"] == "strict_dynamic_mapping_exception"
    assert error["reason"] == "mapping set to strict, dynamic introduction of [v] within [_doc] is not allowed"
    retyped = http.put("/strict/_mapping", json={"properties": {"k": {"type": "text"}}})
    assert retyped.status_code == 400 and "cannot be changed from type [keyword] to [text]" in _error(retyped)["reason"]
    assert http.put("/strict/_mapping", json={"dynamic": "true", "properties": {"v": vector}}).status_code == 200
    resp = http.post("/_bulk", content=_ndjson([{"index": {"_index": "strict"}}, {"k": "a", "v": [1, 0, 0, 0]}]))
    assert not resp.json()["errors"]
    assert http.put("/plain", json={}).status_code == 200  # index.knn false: no k-NN field may be added
    assert http.put("/plain/_mapping", json={"properties": {"v": vector}}).status_code == 400


def test_a_write_blocked_index_refuses_writes_with_a_cluster_block(cluster: Any) -> None:
    _, http = cluster
    http.put("/ro", json={"settings": {"index.blocks.write": True}})
    resp = http.post("/_bulk", content=_ndjson([{"index": {"_index": "ro", "_id": "1"}}, {"a": 1}]))
    item = resp.json()["items"][0]["index"]
    assert item["status"] == 403 and item["error"]["type"] == "cluster_block_exception"
    assert "FORBIDDEN/8/index write (api)" in item["error"]["reason"]


# --- ids, error names, faults --------------------------------------------------------------------------


def test_an_id_over_512_bytes_fails_the_whole_bulk_request(cluster: Any) -> None:
    server, http = cluster
    long_id = "é" * 257  # 514 bytes in UTF-8, 257 characters
    lines = [
        {"index": {"_index": "ids", "_id": "ok"}},
        {"a": 1},
        {"index": {"_index": "ids", "_id": long_id}},
        {"a": 2},
    ]
    resp = http.post("/_bulk", content=_ndjson(lines))
    assert resp.status_code == 400
    error = _error(resp)
    assert error["type"] == "action_request_validation_exception"
    assert "must be no longer than 512 bytes but was: 514" in error["reason"]
    assert "ids" not in server.indices  # nothing ran
    assert http.put("/ids2/_doc/" + "a" * 512, json={"a": 1}).status_code == 201
    assert http.put("/ids2/_doc/" + "a" * 513, json={"a": 1}).status_code == 400


def test_rejections_use_opensearch_names(cluster: Any) -> None:
    server, http = cluster
    server.fail_items(1, status=429)
    resp = http.post("/_bulk", content=_ndjson([{"index": {"_index": "n", "_id": "1"}}, {"a": 1}]))
    error = resp.json()["items"][0]["index"]["error"]
    assert error["type"] == "rejected_execution_exception"  # not Elasticsearch's es_rejected_execution_exception
    server.fail_requests(1, status=429)
    assert _error(http.get("/n/_count"))["type"] == "rejected_execution_exception"
    server.fail_requests(1, status=402)
    resp = http.post("/_bulk", content=_ndjson([{"index": {"_index": "n"}}, {"a": 1}]))
    assert resp.status_code == 402 and _error(resp)["type"] == "service_quota_exceeded_exception"
    assert [s for s, _ in server.faults_fired] == [429, 429, 402]


# --- Serverless -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("cluster", [{"serverless": True}], indirect=True)
def test_serverless_refuses_what_serverless_does_not_support(cluster: Any) -> None:
    _, http = cluster
    assert http.get("/").status_code == 404  # no GET / on a collection
    assert http.put("/s", json=_knn_body("lucene", "cosinesimil")).status_code == 400  # no lucene engine
    assert http.put("/s", json=_knn_body("faiss", "cosinesimil")).status_code == 200
    named = http.post("/_bulk", content=_ndjson([{"index": {"_index": "s", "_id": "1"}}, {"v": [1, 0, 0, 0]}]))
    assert named.json()["items"][0]["index"]["error"]["reason"] == (
        "Document ID is not supported in create/index operation request"
    )
    assert http.put("/s/_doc/1", json={"v": [1, 0, 0, 0]}).status_code == 400
    unnamed = http.post("/_bulk", content=_ndjson([{"index": {"_index": "s"}}, {"v": [1, 0, 0, 0], "k": "a"}]))
    assert unnamed.json()["items"][0]["index"]["status"] == 201
    assert http.post("/s/_refresh").status_code == 404
    assert http.post("/s/_delete_by_query", json={"query": {"match_all": {}}}).status_code == 404
    assert http.post("/s/_count", json={"query": {"match_all": {}}}).json() == {"count": 1}  # supported
    collapse = {"query": {"match_all": {}}, "collapse": {"field": "k"}}
    assert http.post("/s/_search", json=collapse).status_code == 200  # not listed as unsupported


@pytest.mark.parametrize(
    "cluster",
    [{"serverless": True, "policy": {"aoss:CreateIndex", "aoss:DescribeIndex", "aoss:WriteDocument"}}],
    indirect=True,
)
def test_serverless_answers_403_for_what_the_data_access_policy_does_not_grant(cluster: Any) -> None:
    server, http = cluster
    assert http.put("/p", json={}).status_code == 200
    resp = http.delete("/p")
    assert resp.status_code == 403 and resp.json()["error"]["type"] == "Forbidden"
    assert http.put("/_index_template/t", json={"index_patterns": ["p"]}).status_code == 403
    assert http.post("/p/_search", json={}).status_code == 403
    assert [d[0] for d in server.denied] == ["aoss:DeleteIndex", "aoss:UpdateCollectionItems", "aoss:ReadDocument"]
    assert "p" in server.indices
