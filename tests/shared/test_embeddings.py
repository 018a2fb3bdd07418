import asyncio
import logging

import pytest
from rag_shared.config import load_catalog
from rag_shared.dashscope import DashScopeClient
from rag_shared.embeddings import Embedder, content_hash, plan_batches
from rag_shared.errors import EmbeddingDimensionError, ThrottledError
from rag_shared.pacing import Pacer
from rag_shared.secrets import ApiKeyProvider

from standins.dashscope import DashScopeStandIn, Fault, Quota, fake_embedding


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
    # the hashes it looked the cache up with come back, so the indexer need not hash again
    assert again.hashes == {
        i: content_hash(t, embedder.model.name, embedder.dimensions)
        for i, t in enumerate(["one two", "three four", "five six"])
    }


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


# --- paced: the embedder retries every 429 itself, through a pacer that learns from it -------------


@pytest.fixture
def limited(dashscope):
    """The stand-in with a quota for the test's duration (the server is shared by the session), in
    Beijing: these tests count calls of text-embedding-v2's 25 texts."""
    saved = dashscope.quota
    dashscope.region = "cn-beijing"
    yield dashscope
    dashscope.quota = saved


def _paced(make_settings, pacer: Pacer) -> Embedder:
    # the SDK must not retry 429s out of the pacer's sight
    s = make_settings(dashscope_max_retries=0, dashscope_region="cn-beijing", embedding_model="text-embedding-v2")
    return Embedder(DashScopeClient(s, ApiKeyProvider.from_settings(s)), s.embedder, concurrency=8, pacer=pacer)


def test_paced_embedder_under_both_limits_retries_every_429(make_settings, limited):
    limited.quota = Quota(requests_per_second=4, tokens_per_second=2000)
    pacer = Pacer()  # no configured quota: both limits are learned from the 429s
    embedder = _paced(make_settings, pacer)

    small = [f"short text {i}" for i in range(200)]  # 8 calls at once against 4 requests/s
    first = embedder.embed(small)
    assert pacer.requests.rate is not None and pacer.tokens.rate is None  # RateQuota fired, learned

    words = " ".join(f"w{j}" for j in range(39))
    big = [f"{words} doc{i}" for i in range(200)]  # 8 calls of 1,000 tokens against 2,000 tokens/s
    second = embedder.embed(big)
    assert pacer.tokens.rate is not None  # AllocationQuota fired too, and was learned

    refused = limited.calls("/embeddings", status=429)
    admitted = limited.calls("/embeddings", status=200)
    assert refused, "the quota never refused a call: the test proves nothing"
    assert len(refused) == pacer.throttled  # every 429 reached the pacer and was retried
    assert len(admitted) == 16  # each batch admitted exactly once
    for texts, result in ((small, first), (big, second)):
        assert all(v == pytest.approx(fake_embedding(t, 1536)) for t, v in zip(texts, result.vectors, strict=True))


def test_paced_embedder_honours_retry_after(make_settings, limited):
    limited.inject(Fault(status=429, code="Throttling.RateQuota", retry_after=0.4))
    pacer = Pacer(requests_per_minute=600)
    result = _paced(make_settings, pacer).embed(["one two three"])
    assert result.vectors[0] is not None
    refused, admitted = limited.calls("/embeddings", status=429), limited.calls("/embeddings", status=200)
    assert len(refused) == 1 and len(admitted) == 1 and pacer.throttled == 1
    assert admitted[0].started - refused[0].started >= 0.4


def test_paced_embedder_gives_up_after_its_attempts(make_settings, limited):
    limited.inject(Fault(status=429, code="Throttling.RateQuota"), times=20)
    s = make_settings(dashscope_max_retries=0)
    e = Embedder(DashScopeClient(s, ApiKeyProvider.from_settings(s)), s.embedder, pacer=Pacer(), max_attempts=3)
    with pytest.raises(ThrottledError):
        e.embed(["a b c"])
    assert len(limited.calls("/embeddings", status=429)) == 3


def test_check_skips_the_estimator_for_short_texts(embedder, monkeypatch):
    import rag_shared.embeddings as module

    calls: list[str] = []

    def counting(text: str) -> int:
        calls.append(text)
        return 10**6

    monkeypatch.setattr(module, "estimate_tokens", counting)
    embedder._check(["short"])  # 5 characters cannot be over the limit in tokens
    assert calls == []
    with pytest.raises(ValueError, match="exceed"):
        embedder._check(["x" * (embedder.model.max_tokens_per_text + 1)])
