import pytest
from rag_shared.config import (
    REGION_BASE_URLS,
    Region,
    load_catalog,
    load_catalog_spec,
    load_settings,
)
from rag_shared.errors import ConfigError
from rag_shared.usage import chat_usage

SG, BJ, HK, US = "ap-southeast-1", "cn-beijing", "cn-hongkong", "us-east-1"
V4 = [2048, 1536, 1024, 768, 512, 256, 128, 64]

# Facts written here from Model Studio's pages, not read from the product, so a wrong catalog entry fails.
# Embeddings: "Synchronous API details" (alibabacloud.com/help/en/model-studio/text-embedding-synchronous-api,
# Mar 2026: Singapore, Beijing and Hong Kong tables; help.aliyun.com/en/... for v1/v2 and v3's 256/128/64 in
# Beijing; the Spanish page of Oct 2026 for qwen3.7-text-embedding).
# (dimensions, rows per call, tokens per row, USD per 1M tokens)
EMBEDDING_FACTS = {
    "text-embedding-v4": {SG: (V4, 10, 8192, 0.07), BJ: (V4, 10, 8192, 0.072), HK: (V4, 10, 8192, 0.07)},
    "text-embedding-v3": {SG: ([1024, 768, 512], 10, 8192, 0.07), BJ: ([1024, 768, 512, 256, 128, 64], 10, 8192, 0.07)},
    "text-embedding-v2": {BJ: ([1536], 25, 2048, 0.1)},
    "text-embedding-v1": {BJ: ([1536], 25, 2048, 0.1)},
    "qwen3.7-text-embedding": {SG: ([2560, 2048, 1536, 1024, 768, 512, 256], 20, 128000, 0.07)},
}
# Chat: (regions, context, max input, max output, thinking).
# qwen-turbo page (131,072 / 98,304 / 16,384, thinking and non-thinking, Beijing and Singapore tabs);
# deep-thinking page (qwen-plus is the enable_thinking example); long-context-qwen-long page (Beijing only);
# deepseek-api page (Beijing only; r1 always thinks, v3 never); models page (qwen3-max 256K/252K/64K);
# qwen-flash: Qwen3 successor of qwen-turbo, hybrid thinking, 1M context, 32K output.
CHAT_FACTS = {
    "qwen-turbo": ({SG, BJ}, 131072, 98304, 16384, "optional"),
    "qwen-plus": ({SG, BJ, US, HK}, 131072, 129024, 16384, "optional"),
    "qwen-flash": ({SG, BJ, US}, 1000000, 997000, 32768, "optional"),
    "qwen-max": ({SG, BJ}, 32768, 30720, 8192, "never"),
    "qwen-long": ({BJ}, 10000000, 10000000, 8192, "never"),
    "qwen3-max": ({SG, BJ, US, HK}, 262144, 258048, 65536, "never"),
}
# Beijing-only (deepseek-api page), then discontinued on 2026-10-10 (help.aliyun.com/document_detail/2868565).
RETIRED = {"deepseek-v3", "deepseek-r1"}
# qwen3-max is priced by prompt size (international, USD per 1M: <=32K 1.2/6, <=128K 2.4/12, <=252K 3/15).
QWEN3_MAX_SG_TIERS = [(32768, 1.2, 6.0), (131072, 2.4, 12.0), (None, 3.0, 15.0)]


@pytest.mark.parametrize("name", sorted(EMBEDDING_FACTS))
def test_embedding_catalog_matches_the_docs_in_every_region(name):
    facts = EMBEDDING_FACTS[name]
    spec = load_catalog_spec()
    assert set(spec.embedder_regions(name)) == set(facts), name
    for region, (dims, batch, tokens, per_million) in facts.items():
        model = load_catalog(region).embedders[name]
        assert model.dimensions == dims, (name, region)
        assert (model.max_batch, model.max_tokens_per_text) == (batch, tokens), (name, region)
        assert model.price_per_1k * 1000 == pytest.approx(per_million, rel=0.01), (name, region)
        assert model.source, "every entry cites its page"


@pytest.mark.parametrize("name", sorted(CHAT_FACTS))
def test_chat_catalog_matches_the_docs(name):
    regions, context, max_input, max_output, thinking = CHAT_FACTS[name]
    assert set(load_catalog_spec().generator_regions(name)) == regions
    for region in regions:
        m = load_catalog(region).generators[name]
        assert (m.context_window, m.max_input_tokens, m.max_output_tokens) == (context, max_input, max_output)
        assert m.thinking == thinking
        assert m.max_input_tokens is not None and m.max_input_tokens <= m.context_window
        assert m.source
    for region in {SG, BJ, HK, US} - regions:
        assert name not in load_catalog(region).generators


@pytest.mark.parametrize("name", sorted(RETIRED))
def test_discontinued_models_are_served_nowhere_and_refused_at_start(name, monkeypatch):
    assert load_catalog_spec().generator_regions(name) == []
    assert all(name not in load_catalog(r).generators for r in (SG, BJ, HK, US))
    monkeypatch.setenv("DASHSCOPE_REGION", BJ)
    monkeypatch.setenv("CHAT_MODEL", name)
    with pytest.raises(ConfigError, match=f"{name} was discontinued by Model Studio on 2026-10-10; set CHAT_MODEL="):
        load_settings()


def test_qwen3_max_is_priced_by_prompt_size():
    m = load_catalog(SG).generators["qwen3-max"]
    assert len(m.price_tiers) == len(QWEN3_MAX_SG_TIERS)
    for tier, (up_to, per_m_in, per_m_out) in zip(m.price_tiers, QWEN3_MAX_SG_TIERS, strict=True):
        assert tier.max_input_tokens == up_to
        assert tier.input * 1000 == pytest.approx(per_m_in)
        assert tier.output * 1000 == pytest.approx(per_m_out)
    short, long = chat_usage(m, 1000, 1000), chat_usage(m, 40000, 1000)
    assert short.cost_usd == pytest.approx((1000 * 1.2 + 1000 * 6) / 1e6)
    assert long.cost_usd == pytest.approx((40000 * 2.4 + 1000 * 12) / 1e6)


def test_defaults_work_in_the_default_region():
    s = load_settings()
    assert s.region is Region.SINGAPORE
    assert (s.generator.name, s.embedder.name, s.dimensions) == ("qwen-plus", "text-embedding-v4", 1024)
    assert s.embedder.max_batch == 10


@pytest.mark.parametrize("region", [SG, BJ, HK])
def test_each_documented_region_has_a_working_default(region, monkeypatch):
    monkeypatch.setenv("DASHSCOPE_REGION", region)
    s = load_settings()
    assert s.embedder.name == "text-embedding-v4" and s.dimensions in s.embedder.dimensions
    assert s.generator.name in load_catalog(region).generators


def test_v1_v2_keep_their_25_per_call_cap_in_beijing():
    s = load_settings(dashscope_region="cn", embedding_model="text-embedding-v2")
    assert (s.embedder.max_batch, s.dimensions) == (25, 1536)


@pytest.mark.parametrize(
    ("env", "message"),
    [
        (
            {"EMBEDDING_MODEL": "text-embedding-v2"},
            "text-embedding-v2 is offered only in cn-beijing, not in ap-southeast-1; "
            "set EMBEDDING_MODEL=text-embedding-v4 or DASHSCOPE_REGION=cn-beijing",
        ),
        (
            {"CHAT_MODEL": "qwen-long"},
            "qwen-long is offered only in cn-beijing, not in ap-southeast-1; "
            "set CHAT_MODEL=qwen-plus or DASHSCOPE_REGION=cn-beijing",
        ),
        (
            {"DASHSCOPE_REGION": "hk", "CHAT_MODEL": "qwen-turbo"},
            "qwen-turbo is offered only in ap-southeast-1, cn-beijing, not in cn-hongkong; set CHAT_MODEL=qwen-plus",
        ),
        (
            {"EMBEDDING_MODEL": "text-embedding-v3", "EMBEDDING_DIMENSIONS": "256"},
            "EMBEDDING_DIMENSIONS=256 is not offered by text-embedding-v3 in ap-southeast-1 (offered in cn-beijing)",
        ),
        ({"DASHSCOPE_REGION": "us"}, "no embedding model is documented in us-east-1"),
    ],
)
def test_a_model_the_region_does_not_offer_fails_at_start_naming_the_fix(env, message, monkeypatch):
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    with pytest.raises(ConfigError) as info:
        load_settings()
    assert message in str(info.value)


@pytest.mark.parametrize(
    ("region", "expected"),
    [
        ("cn", Region.BEIJING),
        ("cn-beijing", Region.BEIJING),
        ("intl", Region.SINGAPORE),
        ("ap-southeast-1", Region.SINGAPORE),
        ("HK", Region.HONG_KONG),
    ],
)
def test_region_selects_compatible_endpoint(region, expected, monkeypatch):
    monkeypatch.setenv("DASHSCOPE_REGION", region)
    settings = load_settings()
    assert settings.region is expected
    assert settings.base_url == REGION_BASE_URLS[expected]


@pytest.mark.parametrize(
    ("region", "url"),
    [
        ("cn-beijing", "https://ws-123.cn-beijing.maas.aliyuncs.com/compatible-mode/v1"),
        ("ap-southeast-1", "https://ws-123.ap-southeast-1.maas.aliyuncs.com/compatible-mode/v1"),
        ("cn-hongkong", "https://ws-123.cn-hongkong.maas.aliyuncs.com/compatible-mode/v1"),
    ],
)
def test_workspace_id_selects_the_recommended_workspace_domain(region, url):
    assert load_settings(dashscope_region=region, dashscope_workspace_id="ws-123").base_url == url


@pytest.mark.parametrize(
    "url",
    [
        "https://dashscope.aliyuncs.com/compatible-mode/v1",
        "https://ws-1.cn-beijing.maas.aliyuncs.com/compatible-mode/v1",
    ],
)
def test_a_base_url_of_another_region_is_refused(url):
    with pytest.raises(ConfigError, match="DASHSCOPE_BASE_URL is the cn-beijing endpoint but DASHSCOPE_REGION is"):
        load_settings(dashscope_base_url=url)
    assert load_settings(dashscope_base_url=url, dashscope_region="cn").base_url == url.rstrip("/")


def test_workspace_id_cannot_inject_a_host():
    with pytest.raises(ConfigError, match="DASHSCOPE_WORKSPACE_ID"):
        load_settings(dashscope_workspace_id="evil.example.com/x?")


def test_base_url_override_wins(monkeypatch):
    monkeypatch.setenv("DASHSCOPE_REGION", "cn")
    monkeypatch.setenv("DASHSCOPE_BASE_URL", "http://127.0.0.1:9/compatible-mode/v1/")
    assert load_settings().base_url == "http://127.0.0.1:9/compatible-mode/v1"


@pytest.mark.parametrize(
    ("env", "names"),
    [
        ({"DASHSCOPE_REGION": "mars"}, "DASHSCOPE_REGION"),
        ({"CHAT_MODEL": "gpt-4"}, "CHAT_MODEL"),
        ({"EMBEDDING_MODEL": "text-embedding-v3", "EMBEDDING_DIMENSIONS": "1536"}, "EMBEDDING_DIMENSIONS"),
        ({"CHUNK_SIZE_TOKENS": "100", "CHUNK_OVERLAP_TOKENS": "100"}, "CHUNK_OVERLAP_TOKENS"),
        (
            {"DASHSCOPE_REGION": "cn", "EMBEDDING_MODEL": "text-embedding-v2", "CHUNK_SIZE_TOKENS": "4000"},
            "CHUNK_SIZE_TOKENS",
        ),
        ({"EMBEDDING_CONCURRENCY": "zero"}, "EMBEDDING_CONCURRENCY"),
        ({"OPENSEARCH_INDEX": "Bad Name"}, "OPENSEARCH_INDEX"),
    ],
)
def test_invalid_config_names_the_field(env, names, monkeypatch):
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    with pytest.raises(ConfigError) as info:
        load_settings()
    assert names in str(info.value)


def test_env_overrides_model_choices(monkeypatch):
    monkeypatch.setenv("CHAT_MODEL", "qwen-max")
    monkeypatch.setenv("EMBEDDING_MODEL", "text-embedding-v4")
    monkeypatch.setenv("EMBEDDING_DIMENSIONS", "512")
    s = load_settings()
    assert s.generator.name == "qwen-max"
    assert s.generator.context_window == 32768
    assert s.embedder.name == "text-embedding-v4"
    assert s.dimensions == 512


def test_secret_value_not_echoed_in_config_errors(monkeypatch):
    monkeypatch.setenv("DASHSCOPE_API_KEY", "sk-very-secret-value-123")
    monkeypatch.setenv("CHAT_MODEL", "nope")
    with pytest.raises(ConfigError) as info:
        load_settings()
    assert "sk-very-secret-value-123" not in str(info.value)
