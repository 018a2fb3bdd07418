import pytest
from rag_shared.config import REGION_BASE_URLS, Region, load_catalog, load_settings
from rag_shared.errors import ConfigError


def test_catalog_limits_match_dashscope_reference():
    catalog = load_catalog()
    assert catalog.default_generator == "qwen-plus"
    assert {"qwen-plus", "qwen-turbo", "qwen-max", "qwen-long", "deepseek-r1"} <= set(catalog.generators)
    assert catalog.embedders["text-embedding-v2"].max_batch == 25
    assert catalog.embedders["text-embedding-v2"].default_dimensions == 1536
    assert catalog.embedders["text-embedding-v3"].max_batch == 10
    assert catalog.embedders["text-embedding-v4"].max_batch == 10
    assert catalog.embedders["text-embedding-v4"].max_tokens_per_text == 8192
    assert catalog.generators["deepseek-r1"].thinking == "always"


@pytest.mark.parametrize(
    ("region", "expected"),
    [
        ("cn", Region.BEIJING),
        ("cn-beijing", Region.BEIJING),
        ("intl", Region.SINGAPORE),
        ("ap-southeast-1", Region.SINGAPORE),
        ("us", Region.US_VIRGINIA),
        ("HK", Region.HONG_KONG),
    ],
)
def test_region_selects_compatible_endpoint(region, expected, monkeypatch):
    monkeypatch.setenv("DASHSCOPE_REGION", region)
    settings = load_settings()
    assert settings.region is expected
    assert settings.base_url == REGION_BASE_URLS[expected]


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
        ({"CHUNK_SIZE_TOKENS": "4000"}, "CHUNK_SIZE_TOKENS"),
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
