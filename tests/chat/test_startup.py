"""Start-up work (the openai SDK import and the key lookup) happens before the first request, and a
key that cannot be read at start-up does not stop the app from starting."""

from __future__ import annotations

import json
import logging
import time
import uuid

import boto3
import httpx
from chat.app import create_app
from chat.service import ChatDeps
from rag_shared.dashscope import DashScopeClient
from rag_shared.secrets import ApiKeyProvider

from local.servers import AppServer
from tests.chat.conftest import TOKEN
from tests.conftest import API_KEY
from tests.sse import read_sse

ASK = {"messages": [{"role": "user", "content": "What is the on-call rotation?"}]}


def _app(make_settings, embedder, store, secret_name, chat_settings):
    settings = make_settings(dashscope_api_key=None, dashscope_secret_arn=secret_name)
    client = DashScopeClient(settings, ApiKeyProvider.from_settings(settings))
    return create_app(ChatDeps(settings, client, embedder, store), chat_settings)


def _ask(url: str) -> list[str]:
    headers = {"Authorization": f"Bearer {TOKEN}"}
    with httpx.stream("POST", f"{url}/chat/completions/stream", json=ASK, headers=headers, timeout=30) as r:
        assert r.status_code == 200, r.read()
        return [event for event, _, _ in read_sse(r)]


def test_the_key_is_read_at_start_up_not_in_the_first_request(aws, make_settings, embedder, store, chat_settings):
    sm = boto3.client("secretsmanager", region_name="us-east-1")
    name = f"qwen-rag/{uuid.uuid4().hex[:8]}"
    sm.create_secret(Name=name, SecretString=json.dumps({"api_key": API_KEY}))
    with AppServer(_app(make_settings, embedder, store, name, chat_settings)) as server:
        # gone after start-up: the first request can only succeed with the key read while starting
        sm.delete_secret(SecretId=name, ForceDeleteWithoutRecovery=True)
        events = _ask(server.url)
    assert events[-1] == "done" and "delta" in events and "error" not in events


def test_an_unreadable_key_at_start_up_is_logged_and_retried_by_the_first_request(
    aws, make_settings, embedder, store, chat_settings, caplog
):
    caplog.set_level(logging.WARNING)
    sm = boto3.client("secretsmanager", region_name="us-east-1")
    name = f"qwen-rag/{uuid.uuid4().hex[:8]}"
    with AppServer(_app(make_settings, embedder, store, name, chat_settings)) as server:
        assert httpx.get(f"{server.url}/health").status_code == 200
        assert any("not ready at start-up" in r.getMessage() for r in caplog.records)
        sm.create_secret(Name=name, SecretString=json.dumps({"api_key": API_KEY}))  # the operator fixes it
        time.sleep(1.05)  # a failed read is remembered for 1 s (no Secrets Manager call per request meanwhile)
        events = _ask(server.url)
    assert events[-1] == "done" and "delta" in events and "error" not in events
