"""The product against real services, when given: skipped unless ``OPENSEARCH_URL`` or
``DASHSCOPE_API_KEY`` is set in the environment that runs pytest.

    OPENSEARCH_URL=https://admin:pw@localhost:9200 pytest -m real_opensearch
    DASHSCOPE_API_KEY=sk-... DASHSCOPE_REGION=ap-southeast-1 pytest -m real_dashscope

The OpenSearch test runs the same store operations against the stand-in and the real cluster and
compares what comes back, so it also checks that the stand-in scores as OpenSearch does.
"""

from __future__ import annotations

import asyncio
import math
import os
import time
import uuid
from collections.abc import Callable, Iterator
from functools import partial
from typing import Any

import pytest
from rag_shared.config import Settings, load_catalog, load_catalog_spec, load_settings
from rag_shared.dashscope import ChatParams, DashScopeClient, StreamEnd, TextDelta
from rag_shared.embeddings import Embedder
from rag_shared.errors import IndexMappingError, InvalidApiKeyError, ModelNotFoundError
from rag_shared.secrets import ApiKeyProvider
from rag_shared.store import ChunkDoc, SearchFilter, VectorStore, choose_engine, index_body, make_client, parse_version

from standins.opensearch import OpenSearchStandIn

# read at import, before any fixture points these variables at a stand-in
REAL_OPENSEARCH_URL = os.environ.get("OPENSEARCH_URL")
REAL_DASHSCOPE_KEY = os.environ.get("DASHSCOPE_API_KEY")

DIMS = 8
VECTORS: dict[str, list[list[float]]] = {  # unit-ish vectors at known angles, so the nearest neighbours are unambiguous
    "a.md": [[1, 0, 0, 0, 0, 0, 0, 0], [0.9, 0.1, 0, 0, 0, 0, 0, 0]],
    "b.md": [[0, 1, 0, 0, 0, 0, 0, 0], [0.5, 0.5, 0, 0, 0, 0, 0, 0]],
    "docs/c.md": [[0, 0, 1, 0, 0, 0, 0, 0], [0.7, 0, 0.7, 0, 0, 0, 0, 0]],
}
QUERY = [1.0, 0.2, 0.1, 0, 0, 0, 0, 0]


def _docs() -> list[ChunkDoc]:
    out = []
    for key, vectors in VECTORS.items():
        for n, v in enumerate(vectors):
            out.append(
                ChunkDoc(
                    id=f"{key}#{n}",
                    source_key=key,
                    version="v1",
                    chunk_number=n,
                    text=f"chunk {n} of {key}",
                    start=0,
                    end=10,
                    content_hash=f"{key}-{n}",
                    embedding_model="fixture",
                    source_seq="0" * 40,
                    vector=[float(x) for x in v],
                )
            )
    return out


def _until(what: Callable[[], Any], ok: Callable[[Any], bool], store: VectorStore) -> Any:
    """Serverless publishes writes to search some seconds later; a domain is refreshed at once."""
    deadline = time.monotonic() + (60 if store.serverless else 0)
    while True:
        store.refresh()
        value = what()
        if ok(value) or time.monotonic() > deadline:
            return value
        time.sleep(2)


def _name(hit: Any) -> str:
    return f"{hit.source_key}#{hit.chunk_number}"  # not the id: Serverless assigns its own


def _exercise(store: VectorStore) -> dict[str, Any]:
    """Create, write, search (with and without a filter), delete one source; report what was seen."""
    store.ensure_index()
    store.write_chunks(_docs())
    count = _until(store.count, lambda n: n == 6, store)
    seen: dict[str, Any] = {
        "top": [(_name(h), round(h.score, 4)) for h in store.search(QUERY, 4)],
        "filtered": [_name(h) for h in store.search(QUERY, 4, SearchFilter(key_prefix="docs/"))],
        "count": count,
    }
    store.delete_chunks("a.md")
    seen["count_a"] = _until(lambda: store.count("a.md"), lambda n: n == 0, store)
    seen["after_delete"] = sorted(_name(h) for h in store.search(QUERY, 10))
    return seen


def _expected_cosine_score(v: list[float]) -> float:
    """OpenSearch's documented cosinesimil score for lucene/faiss: (1 + cos) / 2."""
    dot = sum(a * b for a, b in zip(QUERY, v, strict=True))
    cos = dot / (math.hypot(*QUERY) * math.hypot(*v))
    return (1 + cos) / 2


def _drop(store: VectorStore) -> None:
    store.client.indices.delete(index=store.index, ignore_unavailable=True)
    store.client.indices.delete_index_template(name=store.index, params={"ignore": 404})  # ensure_index's


@pytest.fixture
def real_store() -> Iterator[VectorStore]:
    if not REAL_OPENSEARCH_URL:
        pytest.skip("OPENSEARCH_URL is not set")
    index = f"qwen-rag-test-{uuid.uuid4().hex[:8]}"
    settings = load_settings(opensearch_url=REAL_OPENSEARCH_URL, opensearch_index=index)
    store = VectorStore.from_settings(settings)
    store.dimensions = DIMS
    yield store
    _drop(store)


@pytest.mark.real_opensearch
def test_real_cluster_answers_as_the_stand_in_does(real_store: VectorStore, opensearch: Any) -> None:
    stand_in = VectorStore(
        make_client(load_settings(opensearch_url=opensearch.url)), f"conformance-{uuid.uuid4().hex[:8]}", DIMS
    )
    expected = _exercise(stand_in)
    got = _exercise(real_store)

    assert [i for i, _ in got["top"]] == [i for i, _ in expected["top"]]
    for (_, real_score), (_, standin_score) in zip(got["top"], expected["top"], strict=True):
        assert real_score == pytest.approx(standin_score, abs=1e-3)
    top_id = got["top"][0][0]
    key, n = top_id.split("#")
    assert got["top"][0][1] == pytest.approx(_expected_cosine_score(VECTORS[key][int(n)]), abs=1e-3)
    assert got["filtered"] == expected["filtered"] == ["docs/c.md#1", "docs/c.md#0"]
    assert got["count"] == expected["count"] == 6
    assert got["after_delete"] == expected["after_delete"]
    assert got["count_a"] == expected["count_a"] == 0


@pytest.mark.real_opensearch
def test_real_cluster_refuses_an_index_of_another_dimension(real_store: VectorStore) -> None:
    real_store.ensure_index()
    other = VectorStore(real_store.client, real_store.index, DIMS * 2, engine=real_store.engine)
    with pytest.raises(IndexMappingError, match=str(DIMS)):
        other.ensure_index()


# The facts the stand-in enforces (tests/standins/test_opensearch_facts.py), checked against the real
# cluster: where they disagree, the stand-in is wrong and these tests say so.


def _real_version(store: VectorStore) -> str:
    return str(store.client.info()["version"]["number"])


def _outcome(fn: Callable[[], Any]) -> tuple[int, str]:
    """(HTTP status, error type) of a call; (200, "") when it succeeds."""
    try:
        fn()
    except Exception as exc:  # opensearch-py raises per status; compare status and type only
        return int(getattr(exc, "status_code", 0) or 0), str(getattr(exc, "error", ""))
    return 200, ""


@pytest.mark.real_opensearch
def test_real_cluster_accepts_the_methods_the_stand_in_accepts_for_its_version(real_store: VectorStore) -> None:
    if real_store.serverless:
        pytest.skip("Serverless has no GET /; its method rules are tested against the stand-in")
    version = _real_version(real_store)
    stand_in = OpenSearchStandIn(version=version, refresh_interval=None).start()
    try:
        local = make_client(load_settings(opensearch_url=stand_in.url))
        for engine in ("faiss", "lucene"):
            name = f"{real_store.index}-{engine}"
            body = index_body(DIMS, engine, serverless=False)
            real = _outcome(partial(real_store.client.indices.create, index=name, body=body))
            mine = _outcome(partial(local.indices.create, index=name, body=body))
            real_store.client.indices.delete(index=name, ignore_unavailable=True)
            assert real == mine, f"{engine} + cosinesimil on {version}: real {real}, stand-in {mine}"
    finally:
        stand_in.stop()
    real_store.ensure_index()
    mapping = real_store.client.indices.get_mapping(index=real_store.index)[real_store.index]["mappings"]
    expected = choose_engine(parse_version(version), real_store.engine, serverless=False)
    assert mapping["properties"]["embedding"]["method"]["engine"] == expected


@pytest.mark.real_opensearch
def test_real_cluster_auto_creates_with_the_dynamic_mappings_the_stand_in_uses(
    real_store: VectorStore, opensearch: Any
) -> None:
    doc = _docs()[0].body()
    name = f"{real_store.index}-auto"
    local = make_client(load_settings(opensearch_url=opensearch.url))
    got = {}
    for label, client in (("real", real_store.client), ("stand-in", local)):
        client.bulk(body=[{"index": {"_index": name}}, doc])
        props = client.indices.get_mapping(index=name)[name]["mappings"]["properties"]
        got[label] = {k: props[k] for k in ("embedding", "source_key", "chunk_number", "text")}
        client.indices.delete(index=name, ignore_unavailable=True)
    assert got["real"] == got["stand-in"]
    assert got["real"]["embedding"] == {"type": "float"}  # what a write to a missing index does to k-NN


@pytest.mark.real_opensearch
def test_real_cluster_limits_ids_to_512_bytes(real_store: VectorStore, opensearch: Any) -> None:
    if real_store.serverless:
        pytest.skip("Serverless vector collections accept no document ids at all")
    local = make_client(load_settings(opensearch_url=opensearch.url))
    for size, ok in ((512, True), (513, False)):
        for client in (real_store.client, local):
            body = [{"index": {"_index": real_store.index, "_id": "a" * size}}, {"a": 1}]
            status, _ = _outcome(partial(client.bulk, body=body))
            assert (status == 200) is ok
    real_store.client.indices.delete(index=real_store.index, ignore_unavailable=True)


@pytest.mark.real_opensearch
def test_real_cluster_write_to_a_deleted_chunk_index_keeps_k_nn(real_store: VectorStore) -> None:
    real_store.ensure_index()
    real_store.write_chunks(_docs()[:1])
    if real_store.serverless:
        pytest.skip("the functions' roles cannot delete a Serverless index (no aoss:DeleteIndex)")
    real_store.client.indices.delete(index=real_store.index)
    real_store.write_chunks(_docs()[1:2])  # re-created by the write from the store's template
    mapping = real_store.client.indices.get_mapping(index=real_store.index)[real_store.index]["mappings"]
    assert mapping["properties"]["embedding"]["type"] == "knn_vector"


# --- DashScope ------------------------------------------------------------------------------------


@pytest.fixture
def real_settings() -> Settings:
    if not REAL_DASHSCOPE_KEY:
        pytest.skip("DASHSCOPE_API_KEY is not set")
    return load_settings(dashscope_api_key=REAL_DASHSCOPE_KEY)


@pytest.mark.real_dashscope
def test_real_dashscope_embeds_in_order_with_the_configured_dimension(real_settings: Settings) -> None:
    client = DashScopeClient(real_settings, ApiKeyProvider.from_settings(real_settings))
    embedder = Embedder(client, real_settings.embedder, real_settings.dimensions)
    texts = [f"passage number {i} about topic {i % 3}" for i in range(30)] + ["  "]
    result = embedder.embed(texts)
    assert result.skipped == [30]
    assert result.calls == -(-30 // real_settings.embedder.max_batch)  # 30 texts at the model's cap per call
    vectors = [v for v in result.vectors if v is not None]
    assert len(vectors) == 30 and all(len(v) == real_settings.dimensions for v in vectors)
    assert result.usage.prompt_tokens > 0


@pytest.mark.real_dashscope
def test_real_dashscope_streams_deltas_and_reports_usage(real_settings: Settings) -> None:
    client = DashScopeClient(real_settings, ApiKeyProvider.from_settings(real_settings))
    messages = [{"role": "user", "content": "Count from 1 to 5, separated by spaces."}]

    async def collect() -> list[Any]:
        return [e async for e in client.stream(messages, real_settings.generator, ChatParams(max_tokens=30))]

    events = asyncio.run(collect())
    deltas = [e for e in events if isinstance(e, TextDelta)]
    end = events[-1]
    assert len(deltas) > 1 and "3" in "".join(d.text for d in deltas)
    assert isinstance(end, StreamEnd) and end.usage.prompt_tokens > 0 and end.usage.completion_tokens > 0


@pytest.mark.real_dashscope
def test_real_dashscope_errors_map_to_our_classes(real_settings: Settings) -> None:
    client = DashScopeClient(real_settings, ApiKeyProvider.from_settings(real_settings))
    model = real_settings.generator.model_copy(update={"name": "qwen-no-such-model"})
    with pytest.raises(ModelNotFoundError):
        client.complete([{"role": "user", "content": "hi"}], model, ChatParams(max_tokens=5))
    bad = load_settings(dashscope_api_key="sk-" + "0" * 32)
    bad_client = DashScopeClient(bad, ApiKeyProvider.from_settings(bad))
    with pytest.raises(InvalidApiKeyError):
        bad_client.complete([{"role": "user", "content": "hi"}], bad.generator, ChatParams(max_tokens=5))


@pytest.mark.real_dashscope
def test_real_dashscope_serves_what_the_catalog_says_its_region_serves(real_settings: Settings) -> None:
    """The same facts the stand-in enforces, checked against the real region: every catalog model and
    dimension is served, the other catalog models are refused there, and a one-token answer is cut
    with finish_reason "length"."""
    client = DashScopeClient(real_settings, ApiKeyProvider.from_settings(real_settings), max_retries=2)
    region = real_settings.region.value
    spec, catalog = load_catalog_spec(), load_catalog(region)
    for model in catalog.embedders.values():
        for dims in model.dimensions:
            batch = client.embed_batch(["hello"], model, dims)
            assert len(batch.vectors[0] or []) == dims, (region, model.name, dims)
    for name in sorted(set(spec.embedders) - set(catalog.embedders)):
        other = spec.for_region(spec.embedder_regions(name)[0]).embedders[name]
        with pytest.raises(ModelNotFoundError):
            client.embed_batch(["hello"], other, other.default_dimensions)
    hello = [{"role": "user", "content": "Write three sentences about the sea."}]
    for generator in catalog.generators.values():
        out = client.complete(hello, generator, ChatParams(max_tokens=1))
        assert out.finish_reason == "length", (region, generator.name)
    for name in sorted(set(spec.generators) - set(catalog.generators)):
        other_gen = spec.for_region(spec.generator_regions(name)[0]).generators[name]
        with pytest.raises(ModelNotFoundError):
            client.complete(hello, other_gen, ChatParams(max_tokens=1))


@pytest.mark.real_dashscope
def test_real_dashscope_passes_the_doctors_checks(real_settings: Settings) -> None:
    from rag_shared.doctor import Doctor, Report

    doctor = Doctor(
        real_settings,
        DashScopeClient(real_settings, ApiKeyProvider.from_settings(real_settings), max_retries=2),
        VectorStore.from_settings(real_settings),  # not called by these two checks
    )
    report = Report()
    doctor.check_dashscope(report)
    doctor.check_chat(report)
    assert report.ok and len(report.checks) == 4, report.render()
