"""Chat edges (issue 13): hostile headers, bodies and upstream replies never crash, leak or hang."""

from __future__ import annotations

import json
import logging
import socket
import time
from typing import Any

import httpx
import pytest
from chat.app import create_app
from chat.settings import ChatSettings
from rag_shared.dashscope import DashScopeClient
from rag_shared.embeddings import Embedder
from rag_shared.secrets import ApiKeyProvider

from local.servers import AppServer
from standins.base import Request, StandInServer
from tests.chat.conftest import TOKEN
from tests.chat.test_chat_api import ASK, stream
from tests.sse import read_sse

AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.mark.parametrize(
    "context",
    [
        json.dumps({"requestId": "abc\r\nSet-Cookie: session=stolen"}),
        json.dumps({"requestId": "请求-ü-\u2028"}),
        json.dumps({"requestId": "x" * 500}),
    ],
    ids=["crlf", "non-latin-1", "too-long"],
)
def test_a_hostile_request_id_never_reaches_a_response_header(http, dashscope, context):
    headers, events = stream(http, {**ASK, "use_rag": False}, headers={"x-amzn-request-context": context})
    rid = headers["x-request-id"]
    assert len(rid) == 32 and rid.isalnum()  # a fresh id instead of the caller's text
    assert "set-cookie" not in headers
    assert events[-1] == ("done", {"request_id": rid}, events[-1][2])


def test_a_plain_request_id_is_kept(http, dashscope):
    headers, _ = stream(http, {**ASK, "use_rag": False}, headers={"x-request-id": "req-123.abc:9"})
    assert headers["x-request-id"] == "req-123.abc:9"


def test_an_unknown_model_never_becomes_a_metric_dimension(http, deps, dashscope):
    recorded: list[str] = []
    deps.metrics = lambda model, figures: recorded.append(model)
    for name in ("gpt-attacker-1", "gpt-attacker-2"):
        r = http.post("/chat/completions/stream", json={**ASK, "model": name})
        assert r.status_code == 400
    assert recorded == ["unknown", "unknown"]


class BrokenEmbeddings(StandInServer):
    """Answers embeddings with a 200 whose body is not valid JSON (NaN, as a buggy proxy might)."""

    def handle(self, req: Request) -> None:
        body = b'{"data": [{"index": 0, "embedding": [NaN, 0.1]}], "usage": {"total_tokens": 1}}'
        req.handler.send_response(200)
        req.handler.send_header("Content-Type", "application/json")
        req.handler.send_header("Content-Length", str(len(body)))
        req.handler.end_headers()
        req.handler.wfile.write(body)


def test_malformed_upstream_json_is_a_json_error_with_a_code(make_settings, deps, chat_settings):
    broken = BrokenEmbeddings().start()
    try:
        s = make_settings(dashscope_base_url=f"{broken.url}/compatible-mode/v1", dashscope_max_retries=0)
        client = DashScopeClient(s, ApiKeyProvider.from_settings(s))
        deps.embedder = Embedder(client, s.embedder, s.dimensions)
        with AppServer(create_app(deps, chat_settings)) as srv:
            r = httpx.post(f"{srv.url}/chat/completions/stream", json=ASK, headers=AUTH, timeout=30)
    finally:
        broken.stop()
    assert r.status_code == 502 and r.headers["content-type"] == "application/json"
    assert r.json()["error"]["code"] == "dashscope_error" and "not valid JSON" in r.json()["error"]["message"]


def test_an_unexpected_exception_is_a_json_500_not_text(http, deps, dashscope):
    def boom(*args: Any) -> Any:
        raise RuntimeError("store exploded at https://internal.example/search")

    deps.store.search_result = boom  # what ChatService.find calls
    r = http.post("/chat/completions/stream", json=ASK)
    assert r.status_code == 500 and r.headers["content-type"] == "application/json"
    assert r.json()["error"] == {
        "message": "internal error",
        "type": "api_error",
        "code": "internal_error",
        "param": None,
    }


def test_secrets_manager_failures_are_json_503s_without_the_arn(aws, deps, dashscope):
    arn = "arn:aws:secretsmanager:us-east-1:123456789012:secret:chat-token-missing-AbCdEf"
    settings = ChatSettings(chat_auth_mode="token", chat_token_secret_arn=arn)
    with AppServer(create_app(deps, settings)) as srv:
        responses = [httpx.post(f"{srv.url}/v1/chat/completions", json=ASK, headers=AUTH) for _ in range(3)]
    for r in responses:
        assert r.status_code == 503 and r.json()["error"]["code"] == "secret_unavailable"
        assert "123456789012" not in r.text and "arn:" not in r.text
        assert "CHAT_TOKEN_SECRET_ARN" in r.json()["error"]["message"]
    assert dashscope.calls() == []


def test_a_rejected_key_from_secrets_manager_names_the_setting_not_the_arn(aws, make_settings, deps, chat_settings):
    import boto3

    sm = boto3.client("secretsmanager", region_name="us-east-1")
    arn = sm.create_secret(Name="edge-wrong-key", SecretString="sk-not-a-valid-key-0000")["ARN"]
    s = make_settings(dashscope_api_key=None, dashscope_secret_arn=arn, dashscope_max_retries=0)
    deps.client = DashScopeClient(s, ApiKeyProvider.from_settings(s))
    with AppServer(create_app(deps, chat_settings)) as srv:
        r = httpx.post(f"{srv.url}/chat/completions/stream", json={**ASK, "use_rag": False}, headers=AUTH)
    assert r.status_code == 502 and r.json()["error"]["code"] == "invalid_api_key"
    assert "DASHSCOPE_SECRET_ARN" in r.text and arn not in r.text and ":secret:" not in r.text


@pytest.mark.parametrize("path", ["/docs", "/redoc", "/openapi.json"])
def test_docs_pages_are_off_unless_configured(deps, path):
    for docs, status in ((False, 404), (True, 200)):
        settings = ChatSettings(chat_auth_mode="token", chat_api_token=TOKEN, chat_api_docs=docs)
        with AppServer(create_app(deps, settings)) as srv:
            assert httpx.get(f"{srv.url}{path}", headers=AUTH).status_code == status


def test_iam_mode_outside_lambda_warns_and_serves_only_loopback(deps, dashscope, caplog, monkeypatch):
    monkeypatch.delenv("AWS_LAMBDA_FUNCTION_NAME", raising=False)
    caplog.set_level(logging.WARNING)
    with AppServer(create_app(deps, ChatSettings(chat_auth_mode="iam"))) as srv:
        assert any("iam outside Lambda" in r.getMessage() for r in caplog.records)
        assert httpx.get(f"{srv.url}/v1/models").status_code == 200  # this test is on loopback
        # a caller behind a local proxy (uvicorn takes the client from x-forwarded-for)
        r = httpx.post(f"{srv.url}/v1/chat/completions", json=ASK, headers={"x-forwarded-for": "203.0.113.9"})
        assert r.status_code == 403 and r.json()["error"]["code"] == "forbidden"
    assert dashscope.calls() == []


def test_line_separators_in_answers_are_escaped_in_sse(http, dashscope):
    dashscope.reply = "one\u2028two\u2029three\x85four"
    with http.stream("POST", "/chat/completions/stream", json={**ASK, "use_rag": False}) as r:
        raw = r.read()
    text = raw.decode()
    assert "\u2028" not in text and "\u2029" not in text and "\x85" not in text
    assert all(line.startswith(("event:", "data:")) or not line for line in text.splitlines())
    with http.stream("POST", "/chat/completions/stream", json={**ASK, "use_rag": False}) as r:
        events = list(read_sse(r))
    assert "".join(d["text"] for e, d, _ in events if e == "delta") == dashscope.reply
    with http.stream("POST", "/v1/chat/completions", json={**ASK, "use_rag": False, "stream": True}) as r:
        body = r.read().decode()
    assert "\u2028" not in body and "two" in body


def test_a_body_slower_than_its_content_length_is_cut_off(deps, dashscope):
    settings = ChatSettings(chat_auth_mode="token", chat_api_token=TOKEN, body_timeout_seconds=0.5)
    with AppServer(create_app(deps, settings)) as srv:
        host, port = srv.url.removeprefix("http://").split(":")
        with socket.create_connection((host, int(port)), timeout=5) as sock:
            t0 = time.monotonic()
            sock.sendall(
                b"POST /chat/completions/stream HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                b"Authorization: Bearer " + TOKEN.encode() + b'\r\nContent-Length: 500\r\n\r\n{"messages": ['
            )
            reply = sock.recv(4096).decode()
            elapsed = time.monotonic() - t0
            while reply.count("}") < 2 and (more := sock.recv(4096)):
                reply += more.decode()
    assert reply.startswith("HTTP/1.1 408") and '"code":"body_timeout"' in reply
    assert 0.4 < elapsed < 3
    assert dashscope.calls() == []
