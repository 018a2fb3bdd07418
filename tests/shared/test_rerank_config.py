"""RERANK_MODEL and QUERY_REWRITE_MODEL: region-aware defaults, and refusals that name the fix."""

from __future__ import annotations

import pytest
from rag_shared.config import REWRITE_MODELS, load_catalog, load_settings
from rag_shared.errors import ConfigError, ServiceUnavailableError
from rag_shared.rerank import fit_documents, native_base_url, parse_rerank

KEY = "sk-config-test-0123456789"


@pytest.mark.parametrize(
    ("region", "reranker", "rewriter"),
    [
        ("ap-southeast-1", "qwen3-rerank", "qwen-flash"),
        ("cn-beijing", "qwen3-rerank", "qwen-flash"),
        ("cn-hongkong", None, "qwen-plus"),
    ],
)
def test_defaults_follow_the_region(region, reranker, rewriter):
    s = load_settings(dashscope_api_key=KEY, dashscope_region=region)
    assert (s.reranker.name if s.reranker else None) == reranker
    assert s.rewrite_generator.name == rewriter
    # the default rewriter is the first of REWRITE_MODELS the region offers
    assert rewriter == next(m for m in REWRITE_MODELS if m in load_catalog(region).generators)


def test_empty_rerank_model_turns_reranking_off():
    assert load_settings(dashscope_api_key=KEY, rerank_model="").reranker is None


def test_a_reranker_the_region_lacks_is_refused_naming_both_fixes():
    with pytest.raises(ConfigError, match=r"gte-rerank-v2 is offered only in cn-beijing.*RERANK_MODEL=qwen3-rerank"):
        load_settings(dashscope_api_key=KEY, rerank_model="gte-rerank-v2")
    assert load_settings(dashscope_api_key=KEY, dashscope_region="cn-beijing", rerank_model="gte-rerank-v2").reranker


def test_unknown_models_are_refused():
    with pytest.raises(ConfigError, match="RERANK_MODEL='bge-reranker' is not in the catalog"):
        load_settings(dashscope_api_key=KEY, rerank_model="bge-reranker")
    with pytest.raises(ConfigError, match="QUERY_REWRITE_MODEL='gpt-4o' is not in the catalog"):
        load_settings(dashscope_api_key=KEY, query_rewrite_model="gpt-4o")
    with pytest.raises(ConfigError, match="qwen-turbo is offered only in"):
        load_settings(dashscope_api_key=KEY, dashscope_region="cn-hongkong", query_rewrite_model="qwen-turbo")
    with pytest.raises(ConfigError, match="QUERY_REWRITE"):
        load_settings(dashscope_api_key=KEY, query_rewrite="always")


def test_the_rerank_endpoint_is_on_the_compatible_mode_host():
    assert native_base_url("https://dashscope-intl.aliyuncs.com/compatible-mode/v1/") == (
        "https://dashscope-intl.aliyuncs.com"
    )
    assert native_base_url("https://ws1.ap-southeast-1.maas.aliyuncs.com/compatible-mode/v1") == (
        "https://ws1.ap-southeast-1.maas.aliyuncs.com"
    )


def test_fit_documents_cuts_items_and_the_request_to_the_caps():
    model = load_catalog("cn-beijing").rerankers["gte-rerank-v2"].model_copy(update={"max_documents": 3})
    long = "word " * 10_000
    q, docs = fit_documents("question", [long, "short", "x", "y"], model)
    assert q == "question" and len(docs) == 3  # the document cap
    assert len(docs[0]) < len(long) and docs[1:] == ["short", "x"]  # the item cut to 4,000 tokens


def test_a_malformed_rerank_answer_is_retryable_not_a_crash():
    model = load_catalog("ap-southeast-1").rerankers["qwen3-rerank"]
    with pytest.raises(ServiceUnavailableError):
        parse_rerank({"output": {}}, model, 2)
    with pytest.raises(ServiceUnavailableError, match="out of range"):
        parse_rerank({"output": {"results": [{"index": 5, "relevance_score": 0.1}]}}, model, 2)
    ok = parse_rerank(
        {"output": {"results": [{"index": 1, "relevance_score": 0.9}]}, "usage": {"total_tokens": 10}}, model, 2
    )
    assert ok.order == [(1, 0.9)] and ok.usage.prompt_tokens == 10
