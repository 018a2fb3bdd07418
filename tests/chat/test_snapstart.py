"""SnapStart hooks (chat/snapstart.py): served to the adapter only; before the snapshot every pooled
connection is closed and the secrets forgotten; after a restore new connections are opened, the key
is read again and ``random`` is re-seeded. Connections are counted by a TCP relay in front of the
DashScope and OpenSearch stand-ins, so "closed" and "new" are what the stand-ins' side sees."""

from __future__ import annotations

import json
import random
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any
from urllib.parse import urlsplit

import boto3
import httpx
import pytest
from chat.app import create_app
from chat.service import ChatDeps
from rag_shared.dashscope import DashScopeClient
from rag_shared.secrets import ApiKeyProvider

from local.servers import AppServer
from standins.proxy import FlakyProxy as Relay
from tests.chat.conftest import TOKEN
from tests.conftest import API_KEY
from tests.sse import read_sse

BEFORE, AFTER = "/snapstart/before", "/snapstart/after"
ASK = {"messages": [{"role": "user", "content": "What is the on-call rotation?"}]}
CONTEXT = json.dumps({"requestId": "r-1", "http": {"method": "POST", "path": BEFORE}})


def _relay_for(url: str) -> Relay:
    parts = urlsplit(url)
    assert parts.hostname and parts.port
    return Relay(parts.hostname, parts.port)


@pytest.fixture
def relays(dashscope: Any, opensearch: Any) -> Iterator[dict[str, Relay]]:
    found = {"dashscope": _relay_for(dashscope.base_url), "opensearch": _relay_for(opensearch.url)}
    yield found
    for relay in found.values():
        relay.close()


@pytest.fixture
def settings(make_settings: Callable[..., Any], relays: dict[str, Relay], dashscope: Any, opensearch: Any) -> Any:
    """Every fixture built on ``settings`` (client, store, indexed...) reaches the stand-ins through the relays."""
    return make_settings(
        dashscope_base_url=relays["dashscope"].in_front_of(dashscope.base_url),
        opensearch_url=relays["opensearch"].in_front_of(opensearch.url),
    )


@pytest.fixture
def hook_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_LWA_SNAPSTART_BEFORE_CHECKPOINT_PATH", BEFORE)
    monkeypatch.setenv("AWS_LWA_SNAPSTART_AFTER_RESTORE_PATH", AFTER)


def _wait(condition: Callable[[], bool], what: str, seconds: float = 5.0) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, what
        time.sleep(0.02)


def _ask(url: str) -> list[str]:
    headers = {"Authorization": f"Bearer {TOKEN}"}
    with httpx.stream("POST", f"{url}/chat/completions/stream", json=ASK, headers=headers, timeout=30) as r:
        assert r.status_code == 200, r.read()
        return [event for event, _, _ in read_sse(r)]


def test_hooks_answer_only_the_adapter(hook_env: None, deps: ChatDeps, chat_settings: Any) -> None:
    with AppServer(create_app(deps, chat_settings)) as server:
        # a request relayed from the function URL carries the adapter's request context
        relayed = httpx.post(f"{server.url}{BEFORE}", headers={"x-amzn-request-context": CONTEXT})
        assert relayed.status_code == 403, relayed.text
        # a caller that is not on loopback (uvicorn takes the client from a loopback proxy's x-forwarded-for)
        remote = httpx.post(f"{server.url}{AFTER}", headers={"x-forwarded-for": "203.0.113.7"})
        assert remote.status_code == 403, remote.text
        assert httpx.get(f"{server.url}{AFTER}").status_code == 405
        # the adapter itself: loopback, no request context, no bearer token (the Guard is behind the hooks)
        assert httpx.post(f"{server.url}{BEFORE}").status_code == 200
        assert httpx.post(f"{server.url}{AFTER}").status_code == 200
        assert _ask(server.url)[-1] == "done"


def test_without_the_adapter_settings_there_are_no_hook_routes(deps: ChatDeps, chat_settings: Any) -> None:
    with AppServer(create_app(deps, chat_settings)) as server:
        answer = httpx.post(f"{server.url}{BEFORE}")
        assert answer.status_code == 401, answer.text  # an ordinary path, behind the Guard
        authed = httpx.post(f"{server.url}{BEFORE}", headers={"Authorization": f"Bearer {TOKEN}"})
        assert authed.status_code == 404, authed.text


def test_connections_closed_before_the_snapshot_and_new_ones_after_restore(
    hook_env: None, deps: ChatDeps, chat_settings: Any, relays: dict[str, Relay], indexed: list[str]
) -> None:
    with AppServer(create_app(deps, chat_settings)) as server:
        events = _ask(server.url)
        assert "delta" in events and "sources" in events, events
        for name, relay in relays.items():
            _wait(lambda r=relay: r.open > 0, f"{name}: no pooled connection after a request")  # type: ignore[misc]

        assert httpx.post(f"{server.url}{BEFORE}").status_code == 200
        for name, relay in relays.items():
            _wait(lambda r=relay: r.open == 0, f"{name}: a connection is still open in the snapshot")  # type: ignore[misc]
        made = {name: relay.accepted for name, relay in relays.items()}

        state = random.getstate()
        assert httpx.post(f"{server.url}{AFTER}").status_code == 200
        replay = random.Random()
        replay.setstate(state)
        assert [random.random() for _ in range(4)] != [replay.random() for _ in range(4)], "random not re-seeded"

        events = _ask(server.url)
        assert "delta" in events and "sources" in events and "error" not in events, events
        for name, relay in relays.items():
            assert relay.accepted > made[name], f"{name}: no new connection after restore"


@pytest.mark.parametrize("init_type", ["on-demand", "snap-start"])
def test_a_key_rotated_while_in_the_snapshot_is_read_again_on_restore(
    init_type: str,
    hook_env: None,
    aws: str,
    make_settings: Callable[..., Any],
    embedder: Any,
    store: Any,
    chat_settings: Any,
    dashscope: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("AWS_LAMBDA_INITIALIZATION_TYPE", init_type)
    sm = boto3.client("secretsmanager", region_name="us-east-1")
    name = f"qwen-rag/{uuid.uuid4().hex[:8]}"
    old_key = "sk-rotated-away-" + uuid.uuid4().hex  # the stand-in does not accept it
    sm.create_secret(Name=name, SecretString=json.dumps({"api_key": old_key}))
    settings = make_settings(dashscope_api_key=None, dashscope_secret_arn=name)
    client = DashScopeClient(settings, ApiKeyProvider.from_settings(settings))
    with AppServer(create_app(ChatDeps(settings, client, embedder, store), chat_settings)) as server:
        assert httpx.post(f"{server.url}{BEFORE}").status_code == 200
        sm.put_secret_value(SecretId=name, SecretString=json.dumps({"api_key": API_KEY}))  # rotated
        assert httpx.post(f"{server.url}{AFTER}").status_code == 200
        # gone now: the request can only succeed with the key read by the after-restore hook (a 401
        # on the old key would re-read the secret, and find none)
        sm.delete_secret(SecretId=name, ForceDeleteWithoutRecovery=True)
        events = _ask(server.url)
    assert events[-1] == "done" and "delta" in events and "error" not in events, events
