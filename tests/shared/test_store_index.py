"""The store's index management against the OpenSearch stand-in, which enforces OpenSearch's
documented facts (tests/standins/test_opensearch_facts.py): the k-NN method fits the cluster's
version, a write to a missing index cannot create it without k-NN, Serverless never gets a
DeleteIndex, 402 and 429 are retried, and concurrent writers share a big-enough connection pool."""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from rag_shared.config import load_settings
from rag_shared.errors import IndexMappingError, StoreError
from rag_shared.store import (
    ChunkDoc,
    ServerlessStore,
    VectorStore,
    choose_engine,
    index_body,
    make_client,
)

from standins.opensearch import OpenSearchStandIn

DIMS = 8
INFRA = Path(__file__).resolve().parents[2] / "infra" / "opensearch-serverless.yaml"


def _doc(key: str, n: int) -> ChunkDoc:
    vec = [0.0] * DIMS
    vec[n % DIMS] = 1.0
    return ChunkDoc(
        id=f"{key}#{n}",
        source_key=key,
        chunk_number=n,
        text=f"chunk {n}",
        start=0,
        end=1,
        content_hash=f"{key}-{n}",
        embedding_model="m",
        source_seq="0" * 40,
        version="v1",
        vector=vec,
    )


def _store(server: OpenSearchStandIn, index: str = "chunks", *, engine: str = "faiss", **kw: Any) -> VectorStore:
    settings = load_settings(opensearch_url=server.url, opensearch_index=index)
    kind = ServerlessStore if server.serverless else VectorStore
    return kind(
        make_client(settings, **kw),
        index,
        DIMS,
        engine=engine,  # type: ignore[arg-type]
        backoff_seconds=0.01,
    )


@pytest.fixture
def cluster(request: pytest.FixtureRequest) -> Iterator[OpenSearchStandIn]:
    server = OpenSearchStandIn(refresh_interval=None, realtime=True, **getattr(request, "param", {})).start()
    yield server
    server.stop()


def _engine(server: OpenSearchStandIn, index: str = "chunks") -> str:
    return str(server.indices[index].mappings["properties"]["embedding"]["method"]["engine"])


# --- the k-NN method fits the cluster -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("cluster", "expected"),
    [
        ({"version": "2.9.0"}, "lucene"),
        ({"version": "2.11.0"}, "lucene"),
        ({"version": "2.19.0"}, "faiss"),
        ({"version": "3.1.0"}, "faiss"),
        ({"serverless": True}, "faiss"),
    ],
    indirect=["cluster"],
)
def test_the_index_method_is_one_the_cluster_has(cluster: OpenSearchStandIn, expected: str) -> None:
    store = _store(cluster)
    store.ensure_index()  # faiss + cosinesimil on 2.9-2.18 would be refused by the stand-in: 400
    assert _engine(cluster) == expected
    store.write_chunks([_doc("a.md", 0), _doc("a.md", 1)])
    assert [h.chunk_number for h in store.search(_doc("a.md", 1).vector, 1)] == [1]


@pytest.mark.parametrize("cluster", [{"version": "2.11.0"}], indirect=True)
def test_a_method_the_version_lacks_is_refused(cluster: OpenSearchStandIn) -> None:
    """What the store did before: faiss + cosinesimil on every version."""
    client = _store(cluster).client
    with pytest.raises(Exception, match="does not support space type"):
        client.indices.create(index="old", body=index_body(DIMS, "faiss", serverless=False))


def test_choose_engine() -> None:
    assert choose_engine((2, 18), "faiss", serverless=False) == "lucene"
    assert choose_engine((2, 19), "faiss", serverless=False) == "faiss"
    assert choose_engine((2, 11), "lucene", serverless=False) == "lucene"
    assert choose_engine(None, "lucene", serverless=True) == "faiss"  # no lucene on Serverless
    with pytest.raises(StoreError, match="too old"):
        choose_engine((2, 3), "lucene", serverless=False)


@pytest.mark.parametrize("cluster", [{"version": "7.10.2"}], indirect=True)
def test_a_domain_in_compatibility_mode_gets_lucene(cluster: OpenSearchStandIn) -> None:
    """override_main_response_version makes a 2.x domain report 7.10.2: its real version is unknown."""
    store = _store(cluster)
    store.ensure_index()
    assert _engine(cluster) == "lucene"


@pytest.mark.parametrize("cluster", [{"version": "7.10.2"}], indirect=True)
def test_an_elasticsearch_endpoint_is_named(cluster: OpenSearchStandIn, monkeypatch: pytest.MonkeyPatch) -> None:
    store = _store(cluster)
    monkeypatch.setattr(store.client, "info", lambda: {"version": {"number": "7.10.2"}})  # Elasticsearch's answer
    with pytest.raises(StoreError, match="not OpenSearch"):
        store.ensure_index()


# --- automatic index creation is harmless ---------------------------------------------------------------


def test_a_write_to_a_missing_chunk_index_keeps_k_nn(cluster: OpenSearchStandIn) -> None:
    store = _store(cluster)
    store.ensure_index()
    store.write_chunks([_doc("a.md", 0)])
    store.client.indices.delete(index="chunks")  # someone deletes it under a warm function
    store.write_chunks([_doc("b.md", 0)])  # re-created from the template, strict and without the vector
    index = cluster.indices["chunks"]
    assert index.auto_created and index.settings["index.knn"] == "true"
    assert index.mappings["properties"]["embedding"]["method"]["space_type"] == "cosinesimil"  # adopted
    assert index.mappings["dynamic"] == "true"
    assert [h.source_key for h in store.search(_doc("b.md", 0).vector, 5)] == ["b.md"]


@pytest.mark.parametrize("cluster", [{"serverless": True}], indirect=True)
def test_on_serverless_a_re_created_chunk_index_is_adopted_not_deleted(cluster: OpenSearchStandIn) -> None:
    store = _store(cluster)
    store.ensure_index()
    cluster.indices.pop("chunks")  # an admin deleted it
    store.write_chunks([_doc("b.md", 0)])
    assert cluster.indices["chunks"].mappings["properties"]["embedding"]["type"] == "knn_vector"
    assert not [r for r in cluster.requests if r[0] == "DELETE" and r[1].count("/") == 1]


def test_an_index_auto_created_without_the_template_fails_with_the_fix(cluster: OpenSearchStandIn) -> None:
    store = _store(cluster)
    store.client.bulk(body=[{"index": {"_index": "chunks"}}, _doc("a.md", 0).body()])  # before any template
    with pytest.raises(IndexMappingError, match=r"'float' field 'embedding'.*OPENSEARCH_INDEX.*DELETE /chunks"):
        store.ensure_index()


def test_an_index_of_another_dimension_fails_with_the_fix(cluster: OpenSearchStandIn) -> None:
    _store(cluster).client.indices.create(index="chunks", body=index_body(DIMS * 2, "faiss", serverless=False))
    with pytest.raises(IndexMappingError, match=r"16-dimensional .* produces 8; set OPENSEARCH_INDEX"):
        _store(cluster).ensure_index()


# --- Serverless: only what the data access policy grants -----------------------------------------------


def _granted() -> set[str]:
    """The permissions infra/opensearch-serverless.yaml grants the functions' roles."""
    return set(re.findall(r"aoss:[A-Za-z]+", INFRA.read_text()))


def test_serverless_never_gets_a_delete_index() -> None:
    granted = _granted()
    assert "aoss:DeleteIndex" not in granted
    server = OpenSearchStandIn(serverless=True, realtime=True, refresh_interval=None, policy=granted).start()
    try:
        store = _store(server)
        store.ensure_index()
        server.indices.pop("chunks")  # the chunk index is lost (an admin deleted it)
        fresh = _store(server)  # a cold start
        fresh.ensure_index()
        assert "chunks" in server.indices and _engine(server) == "faiss"
        assert not [r for r in server.requests if r[0] == "DELETE" and r[1].count("/") == 1]
        assert server.denied == []  # nothing the policy does not grant was even attempted
    finally:
        server.stop()


# --- retries ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("cluster", [{"serverless": True}], indirect=True)
def test_402_and_429_are_retried(cluster: OpenSearchStandIn) -> None:
    store = _store(cluster)
    store.ensure_index()
    cluster.fail_requests(2, status=402, path="_bulk")  # the collection at its OCU limit
    cluster.fail_items(2, status=429)
    cluster.fail_requests(1, status=402, path="_search")
    assert len(store.write_chunks([_doc("a.md", n) for n in range(4)])) == 4
    assert len(store.search(_doc("a.md", 0).vector, 4)) == 4
    assert sorted(s for s, _ in cluster.faults_fired) == [402, 402, 402, 429, 429]
    assert store.count() == 4  # nothing written twice


# --- the connection pool ----------------------------------------------------------------------------------


def _hammer(store: VectorStore, threads: int) -> None:
    errors: list[BaseException] = []

    def work(t: int) -> None:
        try:
            for n in range(6):
                store.write_chunks([_doc(f"t{t}.md", n)])
                store.count(f"t{t}.md")
        except BaseException as exc:  # reported below
            errors.append(exc)

    workers = [threading.Thread(target=work, args=(t,)) for t in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    assert not errors


@pytest.mark.parametrize(("pool", "warned"), [(None, False), (1, True)])
def test_concurrent_writers_never_fill_the_pool(
    cluster: OpenSearchStandIn, caplog: pytest.LogCaptureFixture, pool: int | None, warned: bool
) -> None:
    """The default pool (sized to the writer threads) never discards a connection; urllib3's
    default of one connection (the control) does, under the same load."""
    store = _store(cluster, pool_maxsize=pool)
    store.ensure_index()
    caplog.set_level(logging.WARNING, logger="urllib3.connectionpool")
    _hammer(store, threads=8)
    full = [r for r in caplog.records if "Connection pool is full" in r.getMessage()]
    assert bool(full) is warned
