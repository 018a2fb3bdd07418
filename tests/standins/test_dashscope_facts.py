"""The DashScope stand-in enforces the documented facts of the region it is called in, and the product's
catalog agrees with it: a catalog entry the real service would refuse fails here."""

from __future__ import annotations

from typing import Any

import httpx
import openai
import pytest
from rag_shared.config import load_catalog, load_catalog_spec

from standins.dashscope import DashScopeStandIn, Fault, count_tokens, region_of_host
from tests.conftest import API_KEY

REGION_HOST = {  # documented compatible-mode hosts (shared/REFERENCE.md)
    "ap-southeast-1": "dashscope-intl.aliyuncs.com",
    "cn-beijing": "dashscope.aliyuncs.com",
    "cn-hongkong": "cn-hongkong.dashscope.aliyuncs.com",
    "us-east-1": "dashscope-us.aliyuncs.com",
}
HELLO = [{"role": "user", "content": "Say hello to the team."}]


@pytest.fixture
def call(dashscope: DashScopeStandIn):
    """POST to the stand-in as if to a region's documented host (the Host header says which)."""
    client = httpx.Client(base_url=dashscope.base_url, headers={"Authorization": f"Bearer {API_KEY}"}, timeout=10)

    def post(region: str, path: str, body: dict[str, Any]) -> httpx.Response:
        return client.post(path, json=body, headers={"Host": REGION_HOST[region]})

    yield post
    client.close()


def _code(r: httpx.Response) -> str:
    return str(r.json()["error"]["code"])


@pytest.mark.parametrize("region", sorted(REGION_HOST))
def test_every_catalog_embedder_and_dimension_is_served_in_its_region(region, call):
    catalog = load_catalog(region)
    for model in catalog.embedders.values():
        for dims in model.dimensions:
            body: dict[str, Any] = {"model": model.name, "input": ["hello"], "encoding_format": "float"}
            if len(model.dimensions) > 1:
                body["dimensions"] = dims
            r = call(region, "/embeddings", body)
            assert r.status_code == 200, (region, model.name, dims, r.text)
            assert len(r.json()["data"][0]["embedding"]) == dims
        full = call(region, "/embeddings", {"model": model.name, "input": ["x"] * model.max_batch})
        assert full.status_code == 200, (region, model.name, "batch cap too low in the stand-in")
        over = call(region, "/embeddings", {"model": model.name, "input": ["x"] * (model.max_batch + 1)})
        assert over.status_code == 400 and _code(over) == "InvalidParameter", (region, model.name)


@pytest.mark.parametrize("region", sorted(REGION_HOST))
def test_models_a_region_does_not_serve_are_refused_there(region, call):
    spec, catalog = load_catalog_spec(), load_catalog(region)
    for name in set(spec.embedders) - set(catalog.embedders):
        r = call(region, "/embeddings", {"model": name, "input": ["hello"]})
        assert (r.status_code, _code(r)) == (404, "model_not_found"), (region, name)
    for name in set(spec.generators) - set(catalog.generators):
        r = call(region, "/chat/completions", {"model": name, "messages": HELLO, "max_tokens": 5})
        assert (r.status_code, _code(r)) == (404, "model_not_found"), (region, name)


@pytest.mark.parametrize("region", sorted(REGION_HOST))
def test_every_catalog_chat_model_is_served_within_its_limits(region, call):
    for model in load_catalog(region).generators.values():
        ok = call(region, "/chat/completions", {"model": model.name, "messages": HELLO, "max_tokens": 1})
        assert ok.status_code == 200, (region, model.name, ok.text)
        at_cap = call(
            region, "/chat/completions", {"model": model.name, "messages": HELLO, "max_tokens": model.max_output_tokens}
        )
        assert at_cap.status_code == 200, (region, model.name, "max_output_tokens above the service's")
        over = call(
            region,
            "/chat/completions",
            {"model": model.name, "messages": HELLO, "max_tokens": model.max_output_tokens + 1},
        )
        assert over.status_code == 400, (region, model.name)


def test_dimension_the_region_lacks_is_invalid_parameter(call):
    body = {"model": "text-embedding-v3", "input": ["hello"], "dimensions": 256}
    assert call("cn-beijing", "/embeddings", body).status_code == 200
    r = call("ap-southeast-1", "/embeddings", body)
    assert (r.status_code, _code(r)) == (400, "InvalidParameter")


def test_chat_model_on_the_embeddings_endpoint_is_not_supported(call):
    r = call("ap-southeast-1", "/embeddings", {"model": "qwen-plus", "input": ["hello"]})
    assert (r.status_code, _code(r)) == (404, "model_not_supported")


def test_region_follows_the_host_and_the_constructor(dashscope, call):
    assert region_of_host("ws-42.cn-hongkong.maas.aliyuncs.com:443") == "cn-hongkong"
    assert region_of_host("127.0.0.1:8080") is None
    v2 = {"model": "text-embedding-v2", "input": ["hello"]}
    assert call("cn-beijing", "/embeddings", v2).status_code == 200
    with httpx.Client(headers={"Authorization": f"Bearer {API_KEY}"}) as c:
        assert c.post(f"{dashscope.base_url}/embeddings", json=v2).status_code == 404  # loopback: its own region
        dashscope.region = "cn-beijing"
        assert c.post(f"{dashscope.base_url}/embeddings", json=v2).status_code == 200
    assert [c.region for c in dashscope.calls("/embeddings")] == ["cn-beijing", "ap-southeast-1", "cn-beijing"]


def _sdk(dashscope: DashScopeStandIn) -> openai.OpenAI:
    return openai.OpenAI(base_url=dashscope.base_url, api_key=API_KEY, max_retries=0)


def test_finish_reason_is_length_when_max_tokens_cuts_the_answer(dashscope):
    client = _sdk(dashscope)
    cut = client.chat.completions.create(model="qwen-plus", messages=HELLO, max_tokens=3)  # type: ignore[arg-type]
    assert cut.choices[0].finish_reason == "length"
    assert cut.usage is not None and cut.usage.completion_tokens <= 3
    assert count_tokens(cut.choices[0].message.content or "") <= 3
    whole = client.chat.completions.create(model="qwen-plus", messages=HELLO, max_tokens=500)  # type: ignore[arg-type]
    assert whole.choices[0].finish_reason == "stop"
    stream: Any = client.chat.completions.create(model="qwen-plus", messages=HELLO, max_tokens=3, stream=True)  # type: ignore[arg-type]
    finishes = [ch.choices[0].finish_reason for ch in stream if ch.choices and ch.choices[0].finish_reason]
    assert finishes == ["length"]


def test_an_error_can_arrive_inside_a_stream(dashscope):
    dashscope.inject(
        Fault(
            kind="stream_error",
            after_chunks=3,
            code="data_inspection_failed",
            message="Output data may contain inappropriate content.",
        )
    )
    stream: Any = _sdk(dashscope).chat.completions.create(model="qwen-plus", messages=HELLO, stream=True)  # type: ignore[arg-type]
    got: list[str] = []
    with pytest.raises(openai.APIError) as info:
        for chunk in stream:
            got += [c.delta.content or "" for c in chunk.choices]
    assert "".join(got), "the error came after some text"
    assert isinstance(info.value.body, dict) and info.value.body["code"] == "data_inspection_failed"
    assert not isinstance(info.value, openai.APIStatusError)  # HTTP 200 already sent: only the event says it


def test_tokens_are_counted_with_qwens_tokenizer():
    tokenizers = pytest.importorskip("dashscope.tokenizers", reason="dev extra: Qwen's real tokenizer")
    qwen = tokenizers.get_tokenizer("qwen-turbo")
    for text in [
        "Meals are reimbursed up to 60 USD per day.",
        "差旅餐费每天最多报销六十美元。",
        "def f(x):\n    return x**2\n",
    ]:
        assert count_tokens(text) == len(qwen.encode(text))
    assert count_tokens("Supercalifragilistic") > 1  # one word, several tokens: not a word count
