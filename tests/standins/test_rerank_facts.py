"""The rerank API of the DashScope stand-in holds the documented limits of the region it is called in,
and the product's rerank catalog agrees with it: an entry the real service would refuse fails here."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import pytest
from rag_shared.config import load_catalog, load_catalog_spec
from rag_shared.rerank import Reranker, fit_documents, native_base_url
from rag_shared.secrets import ApiKeyProvider

from standins.dashscope import RERANK_PATH, DashScopeStandIn, bm25_scores, count_tokens
from tests.conftest import API_KEY
from tests.standins.test_dashscope_facts import REGION_HOST


@pytest.fixture
def rerank(dashscope: DashScopeStandIn):
    client = httpx.Client(
        base_url=native_base_url(dashscope.base_url), headers={"Authorization": f"Bearer {API_KEY}"}, timeout=10
    )

    def post(region: str, body: dict[str, Any]) -> httpx.Response:
        return client.post(RERANK_PATH, json=body, headers={"Host": REGION_HOST[region]})

    yield post
    client.close()


def _body(model: str, query: str, docs: list[str], **params: Any) -> dict[str, Any]:
    return {"model": model, "input": {"query": query, "documents": docs}, "parameters": params}


@pytest.mark.parametrize("region", sorted(REGION_HOST))
def test_every_catalog_reranker_is_served_in_its_region_within_its_limits(region, rerank):
    spec, catalog = load_catalog_spec(), load_catalog(region)
    assert catalog.default_reranker is None or catalog.default_reranker in catalog.rerankers
    for name in spec.rerankers:
        r = rerank(region, _body(name, "q", ["a doc"]))
        if name in catalog.rerankers:
            assert r.status_code == 200, (region, name, r.text)
        else:  # not offered there: refused like an unknown model
            assert r.status_code == 404 and r.json()["code"] == "ModelNotFound", (region, name)
    for model in catalog.rerankers.values():
        full = rerank(region, _body(model.name, "q", ["x"] * model.max_documents))
        assert full.status_code == 200, (region, model.name, "document cap too low in the stand-in")
        over = rerank(region, _body(model.name, "q", ["x"] * (model.max_documents + 1)))
        assert over.status_code == 400 and over.json()["code"] == "InvalidParameter"
        # per request: query tokens x documents + document tokens; one token over the catalog's cap is refused
        doc = "word " * 999
        per_doc = count_tokens("q") + count_tokens(doc)
        n = model.max_tokens_per_request // per_doc
        fits = rerank(region, _body(model.name, "q", [doc] * n))
        assert fits.status_code == 200, (region, model.name, "per-request cap too low in the stand-in")
        assert fits.json()["usage"]["total_tokens"] == n * per_doc
        too_many = rerank(region, _body(model.name, "q", [doc] * (n + 1)))
        assert too_many.status_code == 400 and too_many.json()["code"] == "InvalidParameter", (region, model.name)


def test_gte_rerank_v2_is_not_offered_in_singapore(rerank):
    """The Text rerank page's Singapore table lists only qwen3-rerank (gte-rerank-v2 is under Beijing)."""
    assert "gte-rerank-v2" not in load_catalog("ap-southeast-1").rerankers
    assert rerank("ap-southeast-1", _body("gte-rerank-v2", "q", ["d"])).status_code == 404
    assert rerank("cn-beijing", _body("gte-rerank-v2", "q", ["d"])).status_code == 200


def test_results_are_best_first_with_the_documented_shape(rerank):
    docs = ["the cafeteria opens at noon", "error E4012 means the badge reader lost its controller", "badges"]
    r = rerank("ap-southeast-1", _body("qwen3-rerank", "what is error E4012", docs, top_n=2, return_documents=True))
    assert r.status_code == 200
    body = r.json()
    results = body["output"]["results"]
    assert results[0]["index"] == 1
    assert len(results) == 2 and results[0]["document"] == {"text": docs[1]}
    assert results[0]["relevance_score"] >= results[1]["relevance_score"]
    scores = bm25_scores("what is error E4012", docs)
    assert max(range(3), key=lambda i: scores[i]) == 1
    assert body["usage"]["total_tokens"] > 0 and body["request_id"]


def test_the_product_fits_candidates_to_the_region_limit(dashscope, make_settings):
    """Beijing's qwen3-rerank takes 30,000 tokens per request: the product cuts the candidates to fit,
    where sending them all is refused."""
    settings = make_settings(dashscope_region="cn-beijing", embedding_model="text-embedding-v4")
    model = settings.reranker
    assert model is not None and model.max_tokens_per_request == 30000
    docs = ["alpha beta gamma " * 300] * 60  # ~900 tokens each: ~54,000 in all
    q, fitted = fit_documents("alpha", docs, model)
    assert 0 < len(fitted) < len(docs)
    dashscope.region = "cn-beijing"
    reranker = Reranker(settings, ApiKeyProvider.from_settings(settings), model, max_retries=0)
    result = asyncio.run(reranker.rerank(q, fitted, 5))
    assert len(result.order) == 5 and result.usage.prompt_tokens > 0
    assert result.usage.cost_usd == pytest.approx(result.usage.prompt_tokens * model.price_per_1k / 1000)
    with pytest.raises(Exception, match="InvalidParameter"):
        asyncio.run(reranker.rerank(q, docs, 5))
