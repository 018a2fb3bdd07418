"""The DashScope client's async pools: calls take turns over POOL_SHARDS smaller pools (httpcore's
per-request walk grows with a pool's size), one TLS context shared; the reranker uses the same pools."""

from __future__ import annotations

import asyncio
from typing import Any

from chat.service import ChatDeps, ChatService
from pydantic import SecretStr
from rag_shared.dashscope import POOL_SHARDS, DashScopeClient


def test_calls_take_turns_over_the_shards_with_one_tls_context(client: DashScopeClient) -> None:
    async def run() -> list[Any]:
        return [client.async_client() for _ in range(POOL_SHARDS * 2)]

    got = asyncio.run(run())
    shards = got[:POOL_SHARDS]
    assert len({id(c) for c in shards}) == POOL_SHARDS  # each turn a different pool
    assert got[POOL_SHARDS:] == shards  # then the same ones again, in order (connections reused)
    contexts = {id(c._transport._pool._ssl_context) for c in shards}
    assert len(contexts) == 1


def test_a_new_key_or_a_new_loop_gets_new_pools(client: DashScopeClient, monkeypatch: Any) -> None:
    async def first() -> list[Any]:
        return [client.async_client() for _ in range(POOL_SHARDS)]

    before = asyncio.run(first())
    after_loop = asyncio.run(first())  # another event loop: connections belong to their loop
    assert not any(a is b for a in before for b in after_loop)
    monkeypatch.setattr(client.keys, "get", lambda: SecretStr("sk-rotated-key-000000"))

    async def rotated() -> list[str]:
        return [client.async_client().headers["authorization"] for _ in range(POOL_SHARDS)]

    assert set(asyncio.run(rotated())) == {"Bearer sk-rotated-key-000000"}


def test_the_chat_reranks_on_the_dashscope_pools(deps: ChatDeps, dashscope: Any, http: Any, indexed: Any) -> None:
    """The service's reranker takes its clients from the DashScope client, and a chat that reranks
    still works end to end (the rerank URL is absolute, the pools' base URL is the compatible one)."""
    service = ChatService(deps)
    assert service.deps.reranker is not None
    assert service.deps.reranker._clients == deps.client.async_client
    r = http.post("/v1/retrieve", json={"query": "meal allowance per day", "top_k": 2})
    assert r.status_code == 200, r.text
    assert any(c.path.endswith("/text-rerank/text-rerank") for c in dashscope.state.calls)
