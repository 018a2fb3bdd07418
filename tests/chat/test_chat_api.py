"""The chat app under uvicorn on loopback, called over real HTTP (httpx and the openai SDK)."""

from __future__ import annotations

import json
import logging
import time
from typing import Any

import httpx
import openai
import pytest

from standins.dashscope import Fault
from tests.chat.conftest import TOKEN
from tests.sse import read_sse

ASK: Any = {"messages": [{"role": "user", "content": "How much are meals reimbursed per day when travelling?"}]}


def stream(http, body, **kw):
    with http.stream("POST", "/chat/completions/stream", json=body, **kw) as r:
        assert r.status_code == 200, r.read()
        return r.headers, list(read_sse(r))


def test_tokens_arrive_as_produced_not_buffered(http, indexed, dashscope):
    dashscope.chunk_delay = 0.05
    with http.stream("POST", "/chat/completions/stream", json=ASK) as r:
        assert r.headers["content-type"].startswith("text/event-stream")
        assert "content-length" not in r.headers and "content-encoding" not in r.headers
        assert r.headers["cache-control"] == "no-cache"
        events = list(read_sse(r))
    deltas = [(d, t) for e, d, t in events if e == "delta"]
    assert len(deltas) > 10
    upstream_done = dashscope.state.stream_times[-1]
    assert deltas[0][1] < upstream_done - 0.3  # first token in hand long before DashScope finished
    gaps = [b[1] - a[1] for a, b in zip(deltas, deltas[1:], strict=False)]
    assert sorted(gaps)[len(gaps) // 2] > 0.03  # inter-arrival preserved, not one burst at the end
    assert [e for e, _, _ in events][-2:] == ["usage", "done"]


def test_sources_match_indexed_chunks_and_usage_matches_upstream(http, indexed, dashscope):
    _, events = stream(http, ASK)
    kinds = [e for e, _, _ in events]
    assert kinds[:2] == ["query", "sources"] and kinds[-1] == "done"
    assert events[0][1] == {
        "query": ASK["messages"][-1]["content"],
        "original": ASK["messages"][-1]["content"],
        "rewritten": False,
    }
    sources = events[1][1]["sources"]
    assert sources and sources[0]["source_key"] == "samples/handbook.md"
    assert {s["source_key"] for s in sources} <= set(indexed)
    # reranked by default (the region's rerank model): in relevance order, not search order
    assert all(a["rerank_score"] >= b["rerank_score"] for a, b in zip(sources, sources[1:], strict=False))
    usage = next(d for e, d, _ in events if e == "usage")
    upstream = dashscope.state.last_usage
    assert usage["prompt_tokens"] == upstream["prompt_tokens"]
    assert usage["completion_tokens"] == upstream["completion_tokens"]
    assert usage["embedding_tokens"] > 0 and usage["estimated_cost_usd"] > 0
    assert set(usage["latency_ms"]) == {"retrieval", "rerank", "first_token", "total"}
    assert usage["rerank_tokens"] == dashscope.rerank_tokens_total() > 0
    answer = "".join(d["text"] for e, d, _ in events if e == "delta")
    assert "[1] samples/handbook.md" in answer  # the model was given the passages with sources


def test_filter_by_key_prefix(http, indexed):
    body = {**ASK, "filter": {"key_prefix": "samples/faq"}}
    _, events = stream(http, body)
    assert {s["source_key"] for s in events[1][1]["sources"]} == {"samples/faq-zh.md"}


def test_empty_index_answers_without_context_and_says_so(http, dashscope):
    _, events = stream(http, ASK)
    assert [e for e, _, _ in events][:2] == ["query", "sources"]
    assert events[1][1]["sources"] == [] and "without document context" in events[1][1]["note"]
    assert any(e == "delta" for e, _, _ in events)


def test_context_length_error_retries_once_without_passages(http, indexed, dashscope):
    dashscope.context_limit = 150  # system prompt and question fit, the passages do not
    _, events = stream(http, ASK)
    chat_calls = dashscope.calls("/chat/completions")
    assert [c.status for c in chat_calls] == [400, 200]
    assert events[1][1]["sources"] == []
    notices = [d["message"] for e, d, _ in events if e == "notice"]
    assert any("without the retrieved passages" in n for n in notices)
    assert any(e == "delta" for e, _, _ in events)


def test_failure_mid_stream_is_an_error_event(http, indexed, dashscope):
    dashscope.inject(Fault(kind="drop_stream", after_chunks=5, path="/chat/completions"))
    _, events = stream(http, ASK)
    kinds = [e for e, _, _ in events]
    assert "delta" in kinds and kinds[-2:] == ["error", "done"]
    err = events[-2][1]
    assert err["code"] == "dashscope_unavailable" and err["retryable"] is True


@pytest.mark.parametrize(
    ("fault", "status", "code"),
    [
        (
            Fault(status=400, code="data_inspection_failed", message="Input data may contain inappropriate content."),
            400,
            "content_moderation",
        ),
        (
            Fault(status=429, code="Throttling.RateQuota", message="Requests rate limit exceeded", retry_after=0.01),
            429,
            "throttled",
        ),
    ],
    ids=["moderation", "throttled"],
)
def test_errors_before_the_first_token_are_http_errors(
    make_settings, dashscope, deps, chat_settings, fault, status, code
):
    from chat.app import create_app
    from rag_shared.dashscope import DashScopeClient
    from rag_shared.secrets import ApiKeyProvider

    from local.servers import AppServer

    s = make_settings(dashscope_max_retries=1)
    deps.client = DashScopeClient(s, ApiKeyProvider.from_settings(s))
    deps.embedder.backend = deps.client
    dashscope.inject(fault, times=2 if status == 429 else 1)
    with AppServer(create_app(deps, chat_settings)) as srv:
        r = httpx.post(
            f"{srv.url}/chat/completions/stream",
            json={**ASK, "use_rag": False},
            headers={"Authorization": f"Bearer {TOKEN}"},
            timeout=30,
        )
    assert r.status_code == status
    assert r.json()["error"]["code"] == code


BAD_INPUTS = [
    ("malformed-json", b'{"messages": [', 400, "not valid JSON"),
    ("wrong-types", json.dumps({"messages": "hello"}).encode(), 422, "messages"),
    ("empty-messages", json.dumps({"messages": []}).encode(), 422, "messages"),
    ("last-not-user", json.dumps({"messages": [{"role": "assistant", "content": "hi"}]}).encode(), 422, "last message"),
    ("empty-content", json.dumps({"messages": [{"role": "user", "content": "  "}]}).encode(), 422, "empty"),
    ("bad-role", json.dumps({"messages": [{"role": "wizard", "content": "x"}]}).encode(), 422, "role"),
    ("too-many-messages", json.dumps({"messages": [{"role": "user", "content": "x"}] * 101}).encode(), 422, "messages"),
    (
        "too-long-content",
        json.dumps({"messages": [{"role": "user", "content": "x" * 32_001}]}).encode(),
        422,
        "content",
    ),
    ("bad-temperature", json.dumps({**ASK, "temperature": 5}).encode(), 422, "temperature"),
    ("unknown-field", json.dumps({**ASK, "tempreature": 0.5}).encode(), 422, "tempreature"),
    ("unknown-model", json.dumps({**ASK, "model": "gpt-5"}).encode(), 400, "not offered here"),
    ("oversized-body", json.dumps({"messages": [{"role": "user", "content": "x" * 70_000}]}).encode(), 413, "exceeds"),
]


@pytest.mark.parametrize(("name", "body", "status", "reason"), BAD_INPUTS, ids=[b[0] for b in BAD_INPUTS])
def test_bad_input_gets_a_4xx_with_reason_and_no_dashscope_call(http, dashscope, name, body, status, reason):
    r = http.post("/chat/completions/stream", content=body, headers={"Content-Type": "application/json"})
    assert r.status_code == status, r.text
    assert reason in r.json()["error"]["message"]
    assert dashscope.calls() == []


def test_oversized_chunked_body_is_refused(http, dashscope):
    def gen():
        yield b'{"messages": [{"role": "user", "content": "'
        for _ in range(100):
            yield b"x" * 1000
        yield b'"}]}'

    r = http.post("/chat/completions/stream", content=gen(), headers={"Content-Type": "application/json"})
    assert r.status_code == 413
    assert dashscope.calls() == []


@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer wrong-token"}, {"Authorization": "Basic abc"}])
def test_unauthenticated_calls_are_refused_before_any_work(server, dashscope, headers):
    r = httpx.post(f"{server.url}/chat/completions/stream", json=ASK, headers=headers)
    assert r.status_code == 401
    assert r.json()["error"]["code"] == "unauthorized"
    r = httpx.post(f"{server.url}/v1/chat/completions", json=ASK, headers=headers)
    assert r.status_code == 401
    assert dashscope.calls() == []
    assert httpx.get(f"{server.url}/health").status_code == 200  # health stays open for the adapter


def test_openai_sdk_streaming_against_v1(server, indexed, dashscope):
    client = openai.OpenAI(base_url=f"{server.url}/v1", api_key=TOKEN)
    stream = client.chat.completions.create(
        model="qwen-plus",
        messages=ASK["messages"],
        stream=True,
        stream_options={"include_usage": True},
        extra_body={"top_k": 3},
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text.startswith("(stand-in model)")
    assert chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == dashscope.state.last_usage["completion_tokens"]
    sources = (chunks[0].model_extra or {})["sources"]
    assert len(sources) == 3 and sources[0]["source_key"] == "samples/handbook.md"


def test_openai_sdk_non_streaming(server, indexed, dashscope):
    client = openai.OpenAI(base_url=f"{server.url}/v1", api_key=TOKEN)
    out = client.chat.completions.create(model="qwen-plus", messages=ASK["messages"])
    assert (out.choices[0].message.content or "").startswith("(stand-in model)")
    assert out.usage is not None and out.usage.prompt_tokens == dashscope.state.last_usage["prompt_tokens"]
    assert (out.model_extra or {})["sources"][0]["source_key"] == "samples/handbook.md"


def test_openai_sdk_sees_clear_errors(server, dashscope):
    client = openai.OpenAI(base_url=f"{server.url}/v1", api_key=TOKEN, max_retries=0)
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(model="no-such-model", messages=ASK["messages"])
    assert "not offered here" in str(info.value)
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=f"{server.url}/v1", api_key="nope", max_retries=0).chat.completions.create(
            model="qwen-plus", messages=ASK["messages"]
        )


def test_models_and_health(http):
    models = http.get("/v1/models").json()
    ids = {m["id"] for m in models["data"]}
    assert {"qwen-plus", "qwen-max", "qwen-turbo"} <= ids
    assert next(m for m in models["data"] if m["id"] == "qwen-plus")["default"] is True
    health = http.get("/health").json()
    assert health["status"] == "ok" and health["embedding_model"] == "text-embedding-v4"


def test_reasoning_events_for_thinking_models(http, dashscope):
    _, events = stream(http, {**ASK, "model": "qwen-plus", "enable_thinking": True, "use_rag": False})
    kinds = [e for e, _, _ in events]
    assert "reasoning" in kinds and "delta" in kinds
    assert kinds.index("reasoning") < kinds.index("delta")


def test_logs_have_counts_but_no_key_or_document_text(http, indexed, dashscope, caplog):
    caplog.set_level(logging.DEBUG)
    stream(http, ASK)
    text = caplog.text
    assert "sk-standin-test-key" not in text and TOKEN not in text
    assert "60 USD per day" not in text  # retrieved passage text
    done = [r for r in caplog.records if r.getMessage() == "chat completed"]
    assert done and done[0].__dict__["completion_tokens"] > 0 and done[0].__dict__["model"] == "qwen-plus"


@pytest.mark.parametrize("path", ["/chat/completions/stream", "/v1/chat/completions"])
def test_a_client_that_hangs_up_stops_the_generation_it_pays_for(server, indexed, dashscope, caplog, path):
    dashscope.chunk_delay = 0.05  # ~60 pieces: a 3 s answer
    body = {**ASK, "stream": True} if path.startswith("/v1") else ASK
    with (
        httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=30) as c,
        c.stream("POST", path, json=body) as r,
    ):
        assert r.status_code == 200
        lines = r.iter_lines()
        for _ in range(12):  # a few deltas in, the browser tab is closed
            next(lines)
    t0 = time.monotonic()
    while not dashscope.state.streams_abandoned and time.monotonic() - t0 < 2:
        time.sleep(0.02)
    assert dashscope.state.streams_abandoned, "the upstream stream ran on after the client left"
    assert dashscope.state.streams_abandoned[0] < 30  # stopped within a few pieces, not at the end
    assert time.monotonic() - t0 < 0.5
    with caplog.at_level(logging.INFO):
        t1 = time.monotonic()
        while "client disconnected" not in caplog.text and time.monotonic() - t1 < 2:
            time.sleep(0.02)
    stopped = next(r for r in caplog.records if r.getMessage() == "chat stopped: client disconnected")
    assert 0 < stopped.__dict__["estimated_completion_tokens"] < 60
    assert not [r for r in caplog.records if r.getMessage() == "chat completed"]
