"""The function URL events in events/ through the adapter-facing app (as on Lambda with LWA)."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest
from chat.app import create_app
from chat.settings import ChatSettings

from local.servers import AppServer
from tests.events import load
from tests.lwa import invoke

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def on_lambda(monkeypatch):
    """As on Lambda: outside it, iam mode serves loopback callers only (and these events carry the
    caller's address in x-forwarded-for)."""
    monkeypatch.setenv("AWS_LAMBDA_FUNCTION_NAME", "chat")
    monkeypatch.setenv("AWS_LAMBDA_RUNTIME_API", "127.0.0.1:9001")


def test_function_url_event_streams_sse_with_the_lambda_request_id(deps, indexed, dashscope):
    dashscope.chunk_delay = 0.03
    event = load("chat-function-url.json")
    with AppServer(create_app(deps, ChatSettings(chat_auth_mode="iam"))) as srv:
        out = invoke(event, srv.url)
    assert out.status == 200
    assert out.headers["x-request-id"] == event["requestContext"]["requestId"]
    text = out.body.decode()
    assert text.startswith("event: query\n")
    assert "event: delta" in text
    last_event, last_data = text.rstrip().split("\n")[-2:]
    assert last_event == "event: done"
    assert json.loads(last_data.removeprefix("data: ")) == {"request_id": event["requestContext"]["requestId"]}
    sources = json.loads(text.split("\n")[4].removeprefix("data: "))["sources"]
    assert len(sources) == 3  # top_k from the event body
    assert len(out.chunks) > 5  # relayed in pieces as written, not one buffered body


def test_openai_function_url_event_with_base64_body(deps, indexed):
    event = load("chat-openai-function-url.json")
    with AppServer(create_app(deps, ChatSettings(chat_auth_mode="iam"))) as srv:
        out = invoke(event, srv.url)
    assert out.status == 200
    lines = [ln for ln in out.body.decode().splitlines() if ln.startswith("data: ")]
    assert lines[-1] == "data: [DONE]"
    first = json.loads(lines[0][6:])
    assert first["object"] == "chat.completion.chunk"
    assert first["sources"][0]["source_key"] == "samples/release-notes.html"


def test_run_sh_starts_the_app_as_the_adapter_expects():
    run = ROOT / "functions" / "chat" / "run.sh"
    assert os.stat(run).st_mode & stat.S_IXUSR
    script = run.read_text()
    assert "uvicorn" in script and "chat.app:app" in script and "$PORT" in script.replace("${PORT:-8000}", "$PORT")
