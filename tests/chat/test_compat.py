"""Client compatibility: what DashScope's compatible mode supports is forwarded, tool calls make a
round trip through the openai SDK, and the seed's (deepwiki-open's) request body is accepted."""

from __future__ import annotations

import json
import logging
from typing import Any

import openai
import pytest

from tests.chat.conftest import TOKEN
from tests.chat.test_chat_api import ASK, stream

WEATHER: Any = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Weather for a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}
CLOCK: Any = {"type": "function", "function": {"name": "get_time", "parameters": {"type": "object", "properties": {}}}}
QUESTION: Any = [{"role": "user", "content": "What is the weather in Hangzhou?"}]


def sdk(server: Any) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key=TOKEN, max_retries=0)


def test_tool_call_round_trip_streaming_through_the_openai_sdk(server, dashscope):
    client = sdk(server)
    chunks: Any = list(
        client.chat.completions.create(
            model="qwen-plus", messages=QUESTION, tools=[WEATHER], stream=True, extra_body={"use_rag": False}
        )
    )
    pieces = [tc for c in chunks if c.choices for tc in c.choices[0].delta.tool_calls or []]
    assert len(pieces) > 1  # the arguments arrived in several deltas, relayed as they came
    assert pieces[0].id and pieces[0].function and pieces[0].function.name == "get_weather"
    arguments = "".join(p.function.arguments or "" for p in pieces if p.function)
    assert json.loads(arguments) == {"city": "What is the weather in Hangzhou?"}
    assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason] == ["tool_calls"]
    assert dashscope.state.chat_bodies[-1]["tools"] == [WEATHER]

    # the client runs the tool and sends its result back with the assistant's call
    call_id = pieces[0].id
    follow_up: Any = [
        *QUESTION,
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {"id": call_id, "type": "function", "function": {"name": "get_weather", "arguments": arguments}}
            ],
        },
        {"role": "tool", "tool_call_id": call_id, "content": "Sunny, 24 C"},
    ]
    out = client.chat.completions.create(
        model="qwen-plus", messages=follow_up, tools=[WEATHER], extra_body={"use_rag": False}
    )
    assert out.choices[0].message.content == "(stand-in model) The tool says: Sunny, 24 C"
    sent = dashscope.state.chat_bodies[-1]["messages"]
    assert [m["role"] for m in sent] == ["system", "user", "assistant", "tool"]
    assert sent[2]["tool_calls"][0]["id"] == call_id and sent[3]["tool_call_id"] == call_id


def test_tool_calls_non_streaming_parallel_and_named_choice(server, dashscope):
    client = sdk(server)
    out = client.chat.completions.create(
        model="qwen-plus",
        messages=QUESTION,
        tools=[WEATHER, CLOCK],
        parallel_tool_calls=True,
        extra_body={"use_rag": False},
    )
    calls: Any = out.choices[0].message.tool_calls or []
    assert [c.function.name for c in calls] == ["get_weather", "get_time"]
    assert out.choices[0].finish_reason == "tool_calls"
    assert dashscope.state.chat_bodies[-1]["parallel_tool_calls"] is True
    named = client.chat.completions.create(
        model="qwen-plus",
        messages=QUESTION,
        tools=[WEATHER, CLOCK],
        tool_choice={"type": "function", "function": {"name": "get_time"}},
        extra_body={"use_rag": False},
    )
    named_calls: Any = named.choices[0].message.tool_calls or []
    assert [c.function.name for c in named_calls] == ["get_time"]


def test_tool_calls_on_the_native_stream_are_events(http, dashscope):
    _, events = stream(http, {"messages": QUESTION, "tools": [WEATHER], "use_rag": False})
    calls = [d for e, d, _ in events if e == "tool_calls"]
    assert calls and calls[0]["tool_calls"][0]["function"]["name"] == "get_weather"
    usage = next(d for e, d, _ in events if e == "usage")
    assert usage["finish_reason"] == "tool_calls"


def test_sampling_options_are_forwarded_and_honoured(server, dashscope):
    client = sdk(server)
    out = client.chat.completions.create(
        model="qwen-plus",
        messages=[{"role": "developer", "content": "Be brief."}, *ASK["messages"]],
        stop=["general"],
        seed=42,
        presence_penalty=1.5,
        temperature=1.99,  # DashScope's range is [0, 2)
        extra_body={"use_rag": False},
    )
    body = dashscope.state.chat_bodies[-1]
    assert (body["stop"], body["seed"], body["presence_penalty"], body["temperature"]) == (["general"], 42, 1.5, 1.99)
    assert "general" not in (out.choices[0].message.content or "")  # the answer stopped before it
    system = [m for m in body["messages"] if m["role"] == "system"]
    assert [m["content"] for m in system][-1] == "Be brief."  # developer -> system
    assert "developer" not in {m["role"] for m in body["messages"]}


def test_json_response_format_is_forwarded(server, dashscope):
    out = sdk(server).chat.completions.create(
        model="qwen-plus",
        messages=[{"role": "user", "content": "Reply in JSON: what is RAG?"}],
        response_format={"type": "json_object"},
        extra_body={"use_rag": False},
    )
    assert dashscope.state.chat_bodies[-1]["response_format"] == {"type": "json_object"}
    assert "answer" in json.loads(out.choices[0].message.content or "")


@pytest.mark.parametrize(
    ("extra", "reason"),
    [
        ({"n": 2}, "n > 1"),
        ({"frequency_penalty": 0.5}, "presence_penalty"),
        ({"logprobs": True}, "logprobs"),
        ({"logit_bias": {"50256": -100}}, "logit_bias"),
    ],
    ids=["n", "frequency_penalty", "logprobs", "logit_bias"],
)
def test_what_dashscope_cannot_honour_is_a_clear_400(server, dashscope, extra, reason):
    with pytest.raises(openai.BadRequestError) as info:
        sdk(server).chat.completions.create(model="qwen-plus", messages=ASK["messages"], **extra)
    assert reason in str(info.value) and info.value.code == "unsupported_parameter"
    assert dashscope.calls() == []


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        ({"temperature": 2.0}, "temperature"),
        ({"seed": 2**31}, "seed"),
        ({"presence_penalty": 2.5}, "presence_penalty"),
        ({"tools": [WEATHER], "tool_choice": {"type": "function", "function": {"name": "nope"}}}, "not in tools"),
        ({"messages": [*QUESTION, {"role": "tool", "content": "x"}]}, "tool_call_id"),
        ({"response_format": {"type": "yaml"}}, "response_format"),
    ],
    ids=["temperature-2", "seed", "presence", "tool-choice", "tool-without-id", "format"],
)
def test_out_of_range_values_are_refused_with_the_field(http, dashscope, body, reason):
    r = http.post("/v1/chat/completions", json={**ASK, **body})
    assert r.status_code == 422 and reason in r.json()["error"]["message"]
    assert dashscope.calls() == []


DEEPWIKI = {
    "repo_url": "https://github.com/example/handbook",
    "type": "github",
    "token": "ghp_privateRepoToken123456",
    "provider": "dashscope",
    "model": "qwen-plus",
    "language": "ja",
    "filePath": "samples/faq-zh.md",
    "excluded_dirs": "node_modules\n.git",
    "excluded_files": None,
    "included_dirs": None,
    "included_files": None,
    "messages": [
        {"role": "user", "content": "hello"},
        {"role": "assistant", "content": "hi"},
        {"role": "user", "content": "How much are meals reimbursed per day when travelling?"},
    ],
}


def test_the_seeds_deepwiki_body_is_accepted(http, indexed, dashscope, caplog):
    caplog.set_level(logging.INFO)
    _, events = stream(http, DEEPWIKI)
    sources = next(d for e, d, _ in events if e == "sources")["sources"]
    assert sources and {s["source_key"] for s in sources} == {"samples/faq-zh.md"}  # filePath narrows retrieval
    system = dashscope.state.chat_bodies[-1]["messages"][0]["content"]
    assert "Answer in Japanese." in system
    notice = next(r for r in caplog.records if r.getMessage() == "ignored request fields")
    assert notice.__dict__["fields"] == ["repo_url", "token", "type", "excluded_dirs"]
    assert "ghp_privateRepoToken123456" not in caplog.text


@pytest.mark.parametrize(
    ("override", "reason"),
    [({"provider": "google"}, "provider"), ({"language": "x1"}, "language"), ({"file_path": "a"}, "file_path")],
)
def test_deepwiki_fields_that_cannot_apply_are_refused(http, dashscope, override, reason):
    r = http.post("/chat/completions/stream", json={**DEEPWIKI, **override})
    assert r.status_code == 422 and reason in r.json()["error"]["message"]
    assert dashscope.calls() == []


def test_history_cut_to_fit_never_leaves_an_orphaned_tool_result():
    from chat.service import keep_tool_pairs

    call = {"id": "call_1", "type": "function", "function": {"name": "f", "arguments": "{}"}}
    messages: Any = [
        {"role": "system", "content": "s"},
        {"role": "tool", "tool_call_id": "call_0", "content": "its call was dropped"},
        {"role": "assistant", "content": "", "tool_calls": [call]},
        {"role": "tool", "tool_call_id": "call_1", "content": "kept"},
    ]
    assert [m.get("content") for m in keep_tool_pairs(messages)] == ["s", "", "kept"]
