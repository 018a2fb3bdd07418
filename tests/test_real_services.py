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
from typing import Any

import pytest
from rag_shared.config import Settings, load_settings
from rag_shared.dashscope import ChatParams, DashScopeClient, StreamEnd, TextDelta
from rag_shared.embeddings import Embedder
from rag_shared.errors import IndexMappingError, InvalidApiKeyError, ModelNotFoundError
from rag_shared.secrets import ApiKeyProvider
from rag_shared.store import ChunkDoc, SearchFilter, VectorStore, make_client

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
    assert result.calls == 2  # 30 texts: 25 + 5
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
