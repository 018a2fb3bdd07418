"""Per-request retrieval options over real HTTP: search_type, min_score and metadata filters, on the
native stream endpoint and as the openai SDK's extra body fields; bad values are 4xx with the reason
before any DashScope call; the note says whether nothing matched or nothing was relevant enough."""

from __future__ import annotations

import json
from typing import Any

import openai
import pytest

from tests.chat.conftest import TOKEN
from tests.chat.test_chat_api import ASK
from tests.chat.test_chat_api import stream as stream_events


def stream(http: Any, body: dict[str, Any]) -> tuple[Any, list[tuple[str, Any]]]:
    """The stream's events after the leading ``query`` event (what was searched)."""
    response, events = stream_events(http, body)
    return response, [e for e in events if e[0] != "query"]


ERROR_CODE_ASK: Any = {"messages": [{"role": "user", "content": "Which channel holds open incidents at handover?"}]}

BAD_OPTIONS = [
    ("search-type", {"search_type": "fuzzy"}, "search_type"),
    ("min-score-above-1", {"min_score": 1.5}, "min_score"),
    ("min-score-negative", {"min_score": -0.1}, "min_score"),
    ("min-score-with-keyword", {"search_type": "keyword", "min_score": 0.5}, "unbounded"),
    (
        "filter-two-operators",
        {"filter": {"metadata": {"equals": {"key": "a", "value": 1}, "in": {"key": "a", "values": [1]}}}},
        "exactly one",
    ),
    ("filter-no-operator", {"filter": {"metadata": {}}}, "exactly one"),
    ("filter-unknown-operator", {"filter": {"metadata": {"like": {"key": "a", "value": "x%"}}}}, "like"),
    ("filter-bad-key", {"filter": {"metadata": {"equals": {"key": "a b", "value": 1}}}}, "pattern"),
    ("filter-long-key", {"filter": {"metadata": {"equals": {"key": "k" * 101, "value": 1}}}}, "100"),
    ("filter-range-unbounded", {"filter": {"metadata": {"range": {"key": "year"}}}}, "at least one"),
    ("filter-range-mixed", {"filter": {"metadata": {"range": {"key": "y", "gte": 1, "lt": "z"}}}}, "all numbers"),
    ("filter-value-object", {"filter": {"metadata": {"equals": {"key": "a", "value": {"x": 1}}}}}, "value"),
    ("filter-empty-and", {"filter": {"metadata": {"and": []}}}, "at least 1"),
    ("filter-unknown-field", {"filter": {"key_prefx": "docs/"}}, "key_prefx"),
]


def _deep(depth: int) -> dict[str, Any]:
    node: dict[str, Any] = {"equals": {"key": "a", "value": 1}}
    for _ in range(depth - 1):
        node = {"and": [node]}
    return node


BAD_OPTIONS += [
    ("filter-too-deep", {"filter": {"metadata": _deep(6)}}, "at most 5 levels"),
    (
        "filter-too-many-leaves",
        {"filter": {"metadata": {"or": [{"equals": {"key": "a", "value": i}} for i in range(51)]}}},
        "50",
    ),
]


@pytest.mark.parametrize("path", ["/chat/completions/stream", "/v1/chat/completions"])
@pytest.mark.parametrize(("name", "options", "reason"), BAD_OPTIONS, ids=[b[0] for b in BAD_OPTIONS])
def test_bad_retrieval_options_are_4xx_with_the_reason_before_any_call(http, dashscope, path, name, options, reason):
    body = json.dumps({**ASK, **options}).encode()
    r = http.post(path, content=body, headers={"Content-Type": "application/json"})
    assert r.status_code == 422, r.text
    assert reason in r.json()["error"]["message"]
    assert dashscope.calls() == []


def test_the_deepest_allowed_filter_is_accepted(http, indexed):
    _, events = stream(http, {**ASK, "filter": {"metadata": _deep(5)}})
    assert events[0][0] == "sources" and events[0][1]["sources"] == []  # the samples have no metadata


@pytest.mark.parametrize("search_type", ["semantic", "hybrid", "keyword"])
def test_each_search_type_answers_with_sources(http, indexed, dashscope, search_type):
    before = len(dashscope.calls("/embeddings"))
    _, events = stream(http, {**ERROR_CODE_ASK, "search_type": search_type, "top_k": 3})
    sources = events[0][1]["sources"]
    assert sources and sources[0]["source_key"] == "samples/handbook.md"
    assert events[0][1]["note"] is None
    embedded = len(dashscope.calls("/embeddings")) - before
    assert embedded == (0 if search_type == "keyword" else 1)  # keyword search needs no embedding


def test_a_floor_nothing_passes_is_reported_as_nothing_relevant(http, indexed, dashscope):
    _, events = stream(http, {**ASK, "min_score": 0.999})
    first = events[0][1]
    assert first["sources"] == []
    assert "no passage scored above min_score 0.999" in first["note"]
    # the model was given no passages: the prompt holds only the question
    prompt = json.dumps(dashscope.state.chat_bodies[-1]["messages"], ensure_ascii=False)
    assert "samples/handbook.md" not in prompt
    # a low floor keeps them, and the note is gone
    _, events = stream(http, {**ASK, "min_score": 0.1})
    assert events[0][1]["sources"] and events[0][1]["note"] is None


def test_a_filter_nothing_satisfies_is_reported_as_nothing_matched(http, indexed):
    flt = {"metadata": {"equals": {"key": "dept", "value": "nobody"}}}
    _, events = stream(http, {**ASK, "filter": flt, "min_score": 0.1})
    first = events[0][1]
    assert first["sources"] == []
    assert "nothing satisfies the filter" in first["note"] and "min_score" not in first["note"]


def test_openai_sdk_passes_the_options_as_extra_body(server, indexed, dashscope):
    client = openai.OpenAI(base_url=f"{server.url}/v1", api_key=TOKEN, max_retries=0)
    before = len(dashscope.calls("/embeddings"))
    out = client.chat.completions.create(
        model="qwen-plus",
        messages=ERROR_CODE_ASK["messages"],
        extra_body={"search_type": "keyword", "top_k": 2, "filter": {"key_prefix": "samples/"}},
    )
    sources = (out.model_extra or {})["sources"]
    assert 0 < len(sources) <= 2 and sources[0]["source_key"] == "samples/handbook.md"
    assert len(dashscope.calls("/embeddings")) == before
    with pytest.raises(openai.UnprocessableEntityError) as info:
        client.chat.completions.create(
            model="qwen-plus", messages=ASK["messages"], extra_body={"search_type": "keyword", "min_score": 0.3}
        )
    assert "unbounded" in str(info.value)
