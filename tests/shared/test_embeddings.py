import asyncio
import logging

import pytest
from rag_shared.config import load_catalog
from rag_shared.dashscope import DashScopeClient
from rag_shared.embeddings import Embedder, content_hash, plan_batches
from rag_shared.errors import EmbeddingDimensionError, RagError, ThrottledError
from rag_shared.pacing import Pacer, Permit
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


# --- packing small files' texts into shared calls (issue 14 item 2) ------------------------------


def _concurrent_embeds(embedder: Embedder, groups: list[list[str]]) -> list[object]:
    """Run one embed() per group on its own thread, all released at once; result or exception each."""
    import threading

    gate = threading.Barrier(len(groups))
    out: list[object] = [None] * len(groups)

    def run(n: int) -> None:
        gate.wait()
        try:
            out[n] = embedder.embed(groups[n])
        except Exception as exc:
            out[n] = exc

    threads = [threading.Thread(target=run, args=(n,)) for n in range(len(groups))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    return out


def _small_files(n: int) -> list[list[str]]:
    return [[f"file {f} chunk {c} about topic {f % 5}" for c in range(1 + f % 2)] for f in range(n)]


@pytest.mark.parametrize("model", ["text-embedding-v2", "text-embedding-v4"])
def test_small_files_share_calls_up_to_the_models_cap(make_settings, dashscope, model):
    """17 files of 1-2 texts (26 texts): ceil(26 / cap) calls at the stand-in (25 for v2, 10 for v4:
    REFERENCE.md, Model Studio embedding page), each file gets its own texts' vectors."""
    region = "cn-beijing" if model == "text-embedding-v2" else "ap-southeast-1"
    dashscope.region = region
    s = make_settings(dashscope_region=region, embedding_model=model)
    pacer = Pacer(requests_per_minute=6000)
    reserved: list[float] = []
    reserve = pacer.reserve

    def counting(tokens: float) -> Permit:
        reserved.append(tokens)
        return reserve(tokens)

    pacer.reserve = counting  # type: ignore[method-assign]
    client = DashScopeClient(s, ApiKeyProvider.from_settings(s), max_retries=0)
    embedder = Embedder(client, s.embedder, s.dimensions, pacer=pacer, pack_linger=2.0)
    groups = _small_files(17)
    total = sum(len(g) for g in groups)
    results = _concurrent_embeds(embedder, groups)
    calls = dashscope.calls("/embeddings")
    cap = s.embedder.max_batch
    assert len(calls) == -(-total // cap) and max(c.size for c in calls) <= cap
    assert len(reserved) == len(calls)  # the pacer saw every shared call
    for texts, result in zip(groups, results, strict=True):
        assert not isinstance(result, Exception), result
        vectors = result.vectors  # type: ignore[attr-defined]
        assert all(v == pytest.approx(fake_embedding(t, s.dimensions)) for t, v in zip(texts, vectors, strict=True))
    assert sum(r.usage.calls for r in results) == len(calls)  # type: ignore[attr-defined]
    assert sum(r.usage.prompt_tokens for r in results) > 0  # type: ignore[attr-defined]


def test_without_linger_each_file_makes_its_own_call(embedder, dashscope):
    groups = _small_files(6)
    results = _concurrent_embeds(embedder, groups)
    assert all(not isinstance(r, Exception) for r in results)
    assert len(dashscope.calls("/embeddings")) == 6


def test_a_text_refused_in_a_shared_call_fails_only_its_file(settings, client, dashscope):
    """A 400 naming one text (moderation here) in a shared call: the call is split until the text
    is alone, so only the file that sent it fails and the others get their vectors."""
    from rag_shared.errors import ContentModerationError

    flagged = "file 3 chunk 0 about topic 3"

    class Moderated:
        """The stand-in behind a check that refuses ``flagged`` as DashScope's moderation would
        (the stand-in has no content moderation on embeddings)."""

        refused = 0

        def embed_batch(self, texts, model, dimensions):
            if flagged in texts:
                Moderated.refused += 1
                raise ContentModerationError("Input data may contain inappropriate content.")
            return client.embed_batch(texts, model, dimensions)

        async def aembed_batch(self, texts, model, dimensions):  # pragma: no cover - not used
            raise NotImplementedError

    embedder = Embedder(Moderated(), settings.embedder, settings.dimensions, pack_linger=2.0)
    groups = _small_files(12)
    results = _concurrent_embeds(embedder, groups)
    assert isinstance(results[3], ContentModerationError)
    assert all(not isinstance(r, Exception) for n, r in enumerate(results) if n != 3)
    assert 1 < Moderated.refused <= 6  # the split found it: log2(18) + 1 refusals at most
    sent = [c.size for c in dashscope.calls("/embeddings", status=200)]
    assert sum(sent) == sum(len(g) for n, g in enumerate(groups)) - 1  # every other text once


def test_a_shared_call_failing_for_good_fails_each_of_its_files(settings, dashscope):
    """A retryable failure that outlasts the retries fails every file in the call (each SQS record
    is then retried on its own); a later call is not affected."""
    dashscope.inject(Fault(status=503, code="ServiceUnavailable"))
    client = DashScopeClient(settings, ApiKeyProvider.from_settings(settings), max_retries=0)
    embedder = Embedder(client, settings.embedder, settings.dimensions, pack_linger=2.0)
    first = _concurrent_embeds(embedder, _small_files(5))
    assert all(isinstance(r, RagError) and r.retryable for r in first), first
    assert [c.status for c in dashscope.calls("/embeddings")] == [503]  # one shared call, the fault fired
    again = _concurrent_embeds(embedder, _small_files(5))
    assert all(not isinstance(r, Exception) for r in again), again


def test_a_shared_calls_tokens_are_charged_to_each_file_by_its_texts_tokens(settings, client, dashscope):
    """Two files of the same length in one call, English and Chinese: each file's usage follows its
    own text's tokens (the stand-in's count, not the product's), not its share of the characters."""
    from standins.dashscope import count_tokens

    english = "The travel policy reimburses meals up to sixty dollars per day. " * 3
    chinese = ("差旅政策规定每天的餐费报销上限为六十美元并需提供发票" * 8)[: len(english)]
    embedder = Embedder(client, settings.embedder, settings.dimensions, pack_linger=2.0)
    en, zh = _concurrent_embeds(embedder, [[english], [chinese]])
    assert len(dashscope.calls("/embeddings")) == 1  # one shared call
    total = en.usage.prompt_tokens + zh.usage.prompt_tokens  # type: ignore[attr-defined]
    assert total == pytest.approx(count_tokens(english) + count_tokens(chinese), abs=1)
    expected_zh = count_tokens(chinese) / (count_tokens(english) + count_tokens(chinese))
    assert zh.usage.prompt_tokens > 2 * en.usage.prompt_tokens  # type: ignore[attr-defined]
    assert zh.usage.prompt_tokens / total == pytest.approx(expected_zh, abs=0.15)  # type: ignore[attr-defined]
