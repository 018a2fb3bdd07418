"""DashScope text rerank (Model Studio "Text rerank" API page,
alibabacloud.com/help/en/model-studio/text-rerank-api, checked 2026-11).

``POST {host}/api/v1/services/rerank/text-rerank/text-rerank`` (the native API, same host as the
compatible mode, same key) with ``{"model", "input": {"query", "documents": [str]},
"parameters": {"return_documents", "top_n"}}``; the answer is ``{"output": {"results": [{"index",
"relevance_score"}]}, "usage": {"total_tokens"}, "request_id"}``, best first. Limits per model and
region (catalog/rerankers.json): documents per request, tokens per item (longer items are truncated
by the service), tokens per request = query tokens x documents + all document tokens. Requests are
shaped to fit (pure functions below) so a limit refusal never reaches the user; failures are
retried like the chat stream (:func:`rag_shared.dashscope.retry_delay`) and then raised as our errors.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import httpx
import orjson

from rag_shared.config import RerankModel, Settings
from rag_shared.dashscope import (
    POOL_LIMITS,
    WORKSPACE_HEADER,
    Retries,
    _loads_or_none,
    status_failure,
    transport_failure,
)
from rag_shared.errors import ServiceUnavailableError
from rag_shared.secrets import ApiKeyProvider
from rag_shared.tokens import estimate_tokens, truncate_to_tokens
from rag_shared.usage import Usage

RERANK_PATH = "/api/v1/services/rerank/text-rerank/text-rerank"


def native_base_url(compatible_base_url: str) -> str:
    """The native API's root for a compatible-mode base URL (same host: ``.../compatible-mode/v1``)."""
    base = compatible_base_url.rstrip("/")
    return base.removesuffix("/compatible-mode/v1")


@dataclass(frozen=True)
class RerankResult:
    """Indices into the documents sent, best first, with their relevance scores."""

    order: list[tuple[int, float]]
    usage: Usage


def fit_documents(query: str, documents: Sequence[str], model: RerankModel) -> tuple[str, list[str]]:
    """The query and documents cut to the model's limits: each to the per-item cap, and as many
    documents (in the order given) as keep query tokens x documents + document tokens under the
    per-request cap and the document count cap. Estimates err high, so DashScope's own count fits."""
    q = truncate_to_tokens(query, model.max_tokens_per_item)
    q_tokens = estimate_tokens(q)
    kept: list[str] = []
    total = 0
    for doc in documents[: model.max_documents]:
        d = truncate_to_tokens(doc, model.max_tokens_per_item)
        cost = q_tokens + estimate_tokens(d)
        if total + cost > model.max_tokens_per_request:
            break
        kept.append(d)
        total += cost
    return q, kept


def rerank_body(query: str, documents: Sequence[str], model: RerankModel, top_n: int) -> dict[str, object]:
    return {
        "model": model.name,
        "input": {"query": query, "documents": list(documents)},
        "parameters": {"return_documents": False, "top_n": max(1, min(top_n, len(documents)))},
    }


def parse_rerank(body: object, model: RerankModel, sent: int) -> RerankResult:
    """The results of a 200 answer; a malformed one is a :class:`ServiceUnavailableError` (retryable)."""
    try:
        assert isinstance(body, dict)
        results = body["output"]["results"]
        order = [(int(r["index"]), float(r["relevance_score"])) for r in results]
        tokens = int((body.get("usage") or {}).get("total_tokens") or 0)
    except (AssertionError, KeyError, TypeError, ValueError) as exc:
        raise ServiceUnavailableError("DashScope rerank answered with an unexpected body") from exc
    if any(not 0 <= i < sent for i, _ in order):
        raise ServiceUnavailableError("DashScope rerank answered with an index out of range")
    return RerankResult(order, Usage(prompt_tokens=tokens, cost_usd=tokens * model.price_per_1k / 1000, calls=1))


class Reranker:
    """Async rerank calls for one model; one pooled httpx client per key and event loop."""

    def __init__(
        self,
        settings: Settings,
        keys: ApiKeyProvider,
        model: RerankModel,
        *,
        timeout: float | None = None,
        max_retries: int | None = None,
        clients: Callable[[], httpx.AsyncClient] | None = None,
    ) -> None:
        """``clients``: where to take a pooled client for each call (the chat passes its DashScope
        client's, so reranks share its pools, same key and headers); else one of its own."""
        self.settings = settings
        self._clients = clients
        self.keys = keys
        self.model = model
        self.timeout = timeout or settings.rerank_timeout_seconds
        self.max_retries = settings.dashscope_max_retries if max_retries is None else max_retries
        self.url = native_base_url(settings.base_url) + RERANK_PATH
        self._lock = threading.Lock()
        self._client: tuple[str, asyncio.AbstractEventLoop, httpx.AsyncClient] | None = None

    def _http(self, key: str) -> httpx.AsyncClient:
        loop = asyncio.get_running_loop()
        with self._lock:
            cached = self._client
            if cached is None or cached[0] != key or cached[1] is not loop:
                headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
                if self.settings.dashscope_workspace_id:
                    headers[WORKSPACE_HEADER] = self.settings.dashscope_workspace_id
                client = httpx.AsyncClient(
                    headers=headers, timeout=httpx.Timeout(self.timeout, connect=5.0), limits=POOL_LIMITS
                )
                cached = self._client = (key, loop, client)
            return cached[2]

    async def aclose(self) -> None:
        """Close the pooled connections (SnapStart's before-checkpoint hook); the next call opens new ones."""
        with self._lock:
            cached, self._client = self._client, None
        if cached is not None:
            await cached[2].aclose()

    async def rerank(self, query: str, documents: Sequence[str], top_n: int) -> RerankResult:
        """Rerank ``documents`` (already cut by :func:`fit_documents`) for ``query``."""
        if not documents:
            return RerankResult([], Usage())
        content = orjson.dumps(rerank_body(query, documents, self.model, top_n))
        retries = Retries(self.keys, self.max_retries)
        while True:
            key = self.keys.get().get_secret_value()
            answer: httpx.Response | None = None
            try:
                http = self._clients() if self._clients is not None else self._http(key)
                answer = await http.post(self.url, content=content, timeout=httpx.Timeout(self.timeout, connect=5.0))
            except httpx.TransportError as exc:
                failure = transport_failure(exc, "DashScope rerank")
            else:
                if answer.status_code == 200:
                    return parse_rerank(_loads_or_none(answer.content), self.model, len(documents))
                failure = status_failure(answer, self.settings.region, self.keys.source)
            await asyncio.sleep(retries.delay(failure, answer))
