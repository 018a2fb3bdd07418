import asyncio
import logging

import pytest
from rag_shared.config import load_catalog
from rag_shared.embeddings import Embedder, content_hash, plan_batches
from rag_shared.errors import EmbeddingDimensionError, ThrottledError

from standins.dashscope import DashScopeStandIn, Fault, fake_embedding


@pytest.fixture
def settings(make_settings, dashscope: DashScopeStandIn):
    """These tests are written around text-embedding-v2 (25 texts per call, 1,536 dimensions): Beijing only."""
    dashscope.region = "cn-beijing"
    return make_settings(dashscope_region="cn-beijing", embedding_model="text-embedding-v2")


def test_plan_batches_caps_skips_empty_and_dedupes():
    texts = ["a", "", "b", "a", "  ", *[f"t{i}" for i in range(30)]]
    batches, skipped = plan_batches(texts, 25)
    assert skipped == [1, 4]
    assert all(len(b) <= 25 for b in batches)
    sent = [texts[i] for b in batches for i in b]
    assert sent.count("a") == 1 and "" not in sent
    assert len(sent) == 32


def test_sixty_texts_make_three_calls_of_at_most_25(embedder, dashscope):
    texts = [f"chunk number {i} about topic {i % 7}" for i in range(60)]
    result = embedder.embed(texts)
    sizes = sorted(c.size for c in dashscope.calls("/embeddings"))
    assert sizes == [10, 25, 25]
    assert result.calls == 3
    # order preserved: each vector is the one for its own text
    assert all(v == pytest.approx(fake_embedding(t, 1536)) for t, v in zip(texts, result.vectors, strict=True))


def test_order_preserved_with_empty_texts(embedder):
    texts = ["alpha beta", "", "gamma delta", "   ", "epsilon"]
    result = embedder.embed(texts)
    assert result.skipped == [1, 3]
    assert result.vectors[1] is None and result.vectors[3] is None
    assert result.vectors[2] == pytest.approx(fake_embedding("gamma delta", 1536))


def test_v3_cap_is_ten_and_oversized_batch_setting_is_capped(client, dashscope, caplog):
    caplog.set_level(logging.WARNING)
    model = load_catalog("cn-beijing").embedders["text-embedding-v3"]
    e = Embedder(client, model, 512, batch_size=25)
    assert e.batch_size == 10
    assert "exceeds text-embedding-v3's cap of 10" in caplog.text
    result = e.embed([f"text {i}" for i in range(23)])
    assert sorted(c.size for c in dashscope.calls("/embeddings")) == [3, 10, 10]
    assert all(len(v) == 512 for v in result.vectors if v)


def test_dimension_mismatch_is_an_error(client, dashscope):
    model = load_catalog("cn-beijing").embedders["text-embedding-v2"]
    wrong = Embedder(client, model.model_copy(update={"default_dimensions": 1024}), 1024)
    with pytest.raises(EmbeddingDimensionError, match="1536-dimensional"):
        wrong.embed(["hello"])


def test_concurrent_calls_are_bounded(embedder, dashscope):
    dashscope.latency = 0.1
    embedder.concurrency = 3
    embedder.embed([f"text {i}" for i in range(200)])  # 8 calls
    assert dashscope.max_in_flight == 3


def test_async_path_matches_sync(embedder, dashscope):
    texts = [f"x {i}" for i in range(30)] + [""]
    a = asyncio.run(embedder.aembed(texts))
    b = embedder.embed(texts)
    assert a.vectors == b.vectors and a.skipped == b.skipped == [30]


class DictCache:
    def __init__(self):
        self.data = {}

    def get_many(self, hashes):
        return {h: self.data[h] for h in hashes if h in self.data}


def test_cache_hits_are_not_embedded_again(embedder, dashscope):
    cache = DictCache()
    embedder.cache = cache
    first = embedder.embed(["one two", "three four"])
    for text, vec in zip(["one two", "three four"], first.vectors, strict=True):
        cache.data[content_hash(text, embedder.model.name, embedder.dimensions)] = vec
    dashscope.reset()
    again = embedder.embed(["one two", "three four", "five six"])
    assert [c.size for c in dashscope.calls("/embeddings")] == [1]
    assert again.cached == 2
    assert again.vectors[0] == first.vectors[0]


def test_429_storm_is_survived(embedder, dashscope):
    dashscope.inject(Fault(status=429, code="Throttling.RateQuota", retry_after=0.05), times=6)
    result = embedder.embed([f"t {i}" for i in range(100)])
    assert all(v is not None for v in result.vectors)
    assert len(dashscope.calls("/embeddings", status=429)) == 6


def test_throttle_that_outlasts_retries_fails_loudly(make_settings, dashscope):
    from rag_shared.dashscope import DashScopeClient
    from rag_shared.secrets import ApiKeyProvider

    s = make_settings(dashscope_max_retries=1)
    e = Embedder(DashScopeClient(s, ApiKeyProvider.from_settings(s)), s.embedder)
    dashscope.inject(Fault(status=429, retry_after=0.01), times=10)
    with pytest.raises(ThrottledError):
        e.embed(["a b c"])
