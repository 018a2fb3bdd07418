"""The function URL events in events/ through the adapter-facing app (as on Lambda with LWA)."""

from __future__ import annotations

import json
import os
import socket
import stat
import subprocess
import sys
import time
from pathlib import Path

import httpx
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


def test_run_sh_starts_the_app_as_the_adapter_expects(settings, tmp_path):
    """run.sh (`python -m chat`) serves the app on 127.0.0.1:$PORT, where the adapter's readiness check looks."""
    run = ROOT / "functions" / "chat" / "run.sh"
    assert os.stat(run).st_mode & stat.S_IXUSR
    with socket.socket() as s:  # a free port, as Lambda's PORT would be
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {
        **os.environ,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
        "LAMBDA_TASK_ROOT": str(ROOT / "functions" / "chat"),
        "PORT": str(port),
        "CHAT_AUTH_MODE": "token",
        "CHAT_API_TOKEN": "run-sh-token-0123456789",
        "DASHSCOPE_BASE_URL": settings.dashscope_base_url,
        "DASHSCOPE_API_KEY": settings.dashscope_api_key.get_secret_value(),
        "OPENSEARCH_URL": settings.opensearch_url,
        "OPENSEARCH_INDEX": settings.opensearch_index,
    }
    log = (tmp_path / "run.log").open("w")
    proc = subprocess.Popen(  # noqa: S603 - the repository's run.sh, fixed arguments
        [str(run)], env=env, stdout=log, stderr=subprocess.STDOUT, cwd=tmp_path
    )
    try:
        deadline = time.monotonic() + 60
        while True:
            assert proc.poll() is None, (tmp_path / "run.log").read_text()
            try:
                health = httpx.get(f"http://127.0.0.1:{port}/health", timeout=2)
                break
            except httpx.TransportError:
                assert time.monotonic() < deadline, (tmp_path / "run.log").read_text()
                time.sleep(0.1)
        assert health.status_code == 200 and health.json()["index"] == settings.opensearch_index
        assert httpx.get(f"http://127.0.0.1:{port}/v1/models", timeout=5).status_code == 401  # the app's Guard
        assert "access" not in (tmp_path / "run.log").read_text().lower()  # --no-access-log as before
    finally:
        proc.terminate()
        proc.wait(timeout=20)
        log.close()
