"""Per-answer metrics: what each answer cost and how it ended, as CloudWatch EMF."""

from __future__ import annotations

import json
import time
from typing import Any

import httpx
import pytest
from chat.app import create_app
from chat.telemetry import MetricUnit, emit_emf

from local.servers import AppServer
from standins.dashscope import Fault
from tests.chat.conftest import TOKEN
from tests.chat.test_chat_api import ASK, stream


@pytest.fixture
def recorded(deps) -> list[tuple[str, dict[str, Any]]]:
    out: list[tuple[str, dict[str, Any]]] = []
    deps.metrics = lambda model, figures: out.append((model, {k: v for k, (_, v) in figures.items()}))
    return out


def test_a_completed_answer_records_its_tokens_cost_and_latency(http, indexed, dashscope, recorded):
    _, events = stream(http, ASK)
    usage = next(d for e, d, _ in events if e == "usage")
    ((model, figures),) = recorded
    assert model == "qwen-plus" and figures["ChatCompleted"] == 1
    assert figures["PromptTokens"] == dashscope.state.last_usage["prompt_tokens"] == usage["prompt_tokens"]
    assert figures["CompletionTokens"] == usage["completion_tokens"] and figures["EmbeddingTokens"] > 0
    assert figures["EstimatedCostUSD"] == pytest.approx(usage["estimated_cost_usd"], abs=1e-8)
    assert figures["FirstTokenMs"] == usage["latency_ms"]["first_token"] and "TotalMs" in figures


def test_failures_and_refusals_before_and_during_the_stream_are_counted(http, indexed, dashscope, recorded):
    dashscope.inject(Fault(kind="drop_stream", after_chunks=5, path="/chat/completions"))
    stream(http, ASK)  # an error event mid-stream
    dashscope.inject(Fault(status=400, code="data_inspection_failed", message="inappropriate"))
    assert http.post("/chat/completions/stream", json=ASK).status_code == 400  # before the first token
    assert recorded == [("qwen-plus", {"ChatFailed": 1}), ("qwen-plus", {"ChatRejected": 1})]


def test_an_answer_the_caller_left_is_counted_as_abandoned(deps, chat_settings, indexed, dashscope, recorded):
    dashscope.chunk_delay = 0.05
    with (
        AppServer(create_app(deps, chat_settings)) as srv,
        httpx.Client(base_url=srv.url, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=30) as c,
        c.stream("POST", "/chat/completions/stream", json=ASK) as r,
    ):
        lines = r.iter_lines()
        for _ in range(8):
            next(lines)
    t0 = time.monotonic()
    while not recorded and time.monotonic() - t0 < 2:
        time.sleep(0.02)
    assert recorded == [("qwen-plus", {"ChatAbandoned": 1})]


def test_emf_line_is_what_cloudwatch_extracts(capsys, monkeypatch):
    monkeypatch.setenv("POWERTOOLS_METRICS_NAMESPACE", "QwenRagTest")
    emit_emf("qwen-max", {"ChatCompleted": (MetricUnit.Count, 1), "FirstTokenMs": (MetricUnit.Milliseconds, 51.5)})
    (line,) = capsys.readouterr().out.strip().splitlines()
    doc = json.loads(line)
    (directive,) = doc["_aws"]["CloudWatchMetrics"]
    assert directive["Namespace"] == "QwenRagTest"
    assert sorted(map(sorted, directive["Dimensions"])) == [["model", "service"], ["service"]]  # totals + by model
    assert {m["Name"]: m["Unit"] for m in directive["Metrics"]} == {
        "ChatCompleted": "Count",
        "FirstTokenMs": "Milliseconds",
    }
    assert doc["model"] == "qwen-max" and doc["service"] == "chat" and doc["FirstTokenMs"] == [51.5]
