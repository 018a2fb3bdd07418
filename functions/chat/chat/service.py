"""One chat turn: retrieve, build the prompt, stream the answer, account for it.

:meth:`ChatService.stream` pulls the model's first event before yielding anything, so failures
that happen before any text (bad key, moderation, unknown model, throttling) surface as HTTP
errors with a status code, while everything after the first token streams with no buffering.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncGenerator
from contextlib import aclosing
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from aws_lambda_powertools import Logger
from rag_shared.config import GeneratorModel, Settings, load_catalog
from rag_shared.dashscope import (
    ChatParams,
    DashScopeClient,
    ReasoningDelta,
    StreamEnd,
    StreamEvent,
    TextDelta,
    ToolCallDelta,
)
from rag_shared.embeddings import Embedder
from rag_shared.errors import BadRequestError, ContextLengthExceededError, ModelNotFoundError
from rag_shared.store import SearchFilter, SearchHit
from rag_shared.tokens import estimate_tokens, truncate_to_tokens
from rag_shared.usage import Usage

from chat.models import ChatRequest
from chat.rag import DEFAULT_SYSTEM_PROMPT, PromptTooLong, build_prompt
from chat.telemetry import MetricsSink, MetricUnit, emit_emf

if TYPE_CHECKING:
    from rag_shared.store import VectorStore  # loads opensearch-py: at first use, not at import

logger = Logger(service="chat")


# --- events -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Sources:
    sources: list[dict[str, Any]]
    note: str | None = None


@dataclass(frozen=True)
class Notice:
    message: str


@dataclass(frozen=True)
class Delta:
    text: str


@dataclass(frozen=True)
class Reasoning:
    text: str


@dataclass(frozen=True)
class ToolCalls:
    """Pieces of the model's tool calls, in OpenAI's delta shape (``index``, ``id``, ``function``)."""

    calls: tuple[dict[str, Any], ...]


@dataclass(frozen=True)
class Finished:
    model: str
    usage: Usage
    embedding_usage: Usage
    finish_reason: str | None
    latency_ms: dict[str, float]

    def payload(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "prompt_tokens": self.usage.prompt_tokens,
            "completion_tokens": self.usage.completion_tokens,
            "total_tokens": self.usage.total_tokens,
            "embedding_tokens": self.embedding_usage.prompt_tokens,
            "estimated_cost_usd": round(self.usage.cost_usd + self.embedding_usage.cost_usd, 8),
            "finish_reason": self.finish_reason,
            "latency_ms": self.latency_ms,
        }

    def figures(self) -> dict[str, tuple[MetricUnit, float]]:
        """The answer's metrics (see :mod:`chat.telemetry`)."""
        latency = {f"{k.title().replace('_', '')}Ms": v for k, v in self.latency_ms.items()}
        return {
            "ChatCompleted": (MetricUnit.Count, 1),
            "PromptTokens": (MetricUnit.Count, self.usage.prompt_tokens),
            "CompletionTokens": (MetricUnit.Count, self.usage.completion_tokens),
            "EmbeddingTokens": (MetricUnit.Count, self.embedding_usage.prompt_tokens),
            "EstimatedCostUSD": (MetricUnit.NoUnit, self.usage.cost_usd + self.embedding_usage.cost_usd),
        } | {name: (MetricUnit.Milliseconds, v) for name, v in latency.items()}


ChatEvent = Sources | Notice | Delta | Reasoning | ToolCalls | Finished


# --- service ------------------------------------------------------------------------------------


@dataclass
class ChatDeps:
    """Everything a request needs, built once per container (or injected by tests)."""

    settings: Settings
    client: DashScopeClient
    embedder: Embedder
    store: VectorStore
    system_prompt: str = DEFAULT_SYSTEM_PROMPT
    metrics: MetricsSink = emit_emf
    extra: dict[str, Any] = field(default_factory=dict)


def _ms(since: float) -> float:
    return round((time.monotonic() - since) * 1000, 1)


def source_entry(n: int, hit: SearchHit) -> dict[str, Any]:
    return {
        "n": n,
        "source_key": hit.source_key,
        "chunk_number": hit.chunk_number,
        "score": round(hit.score, 6),
        "heading": hit.heading,
        "start": hit.start,
        "end": hit.end,
    }


def keep_tool_pairs(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Drop tool results whose call was cut from the history to fit the context window: DashScope
    refuses a ``tool`` message that answers no preceding ``tool_calls``."""
    asked: set[str] = set()
    out = []
    for m in messages:
        if m["role"] == "assistant":
            asked.update(str(c["id"]) for c in m.get("tool_calls") or ())
        elif m["role"] == "tool" and m.get("tool_call_id") not in asked:
            continue
        out.append(m)
    return out


def answer_system_prompt(system_prompt: str, language: str | None) -> str:
    return f"{system_prompt}\n\nAnswer in {language}." if language else system_prompt


class ChatService:
    def __init__(self, deps: ChatDeps) -> None:
        self.deps = deps

    def model(self, name: str | None) -> GeneratorModel:
        catalog = load_catalog()
        if name is None:
            return self.deps.settings.generator
        if name not in catalog.generators:
            raise ModelNotFoundError(f"model {name!r} is not offered here; GET /v1/models lists the models")
        return catalog.generators[name]

    async def retrieve(self, query: str, k: int, flt: SearchFilter | None) -> tuple[list[SearchHit], Usage]:
        embedder = self.deps.embedder
        query = truncate_to_tokens(query, embedder.model.max_tokens_per_text)
        result = await embedder.aembed([query])
        vector = result.vectors[0]
        if vector is None:
            return [], result.usage
        hits = await asyncio.to_thread(self.deps.store.search, vector, k, flt)
        return hits, result.usage

    def metric_model(self, name: str | None) -> str:
        """A metric dimension value: a catalog model, never a caller's free text (each distinct
        dimension value is a billed custom metric)."""
        if name is None:
            return self.deps.settings.generator.name
        return name if name in load_catalog().generators else "unknown"

    async def stream(
        self, req: ChatRequest, *, request_id: str = "-", flt: SearchFilter | None = None
    ) -> AsyncGenerator[ChatEvent]:
        """One answer as events. A failure, before or during the stream, is counted and re-raised:
        the app turns it into an HTTP error or an ``error`` event."""
        async with aclosing(
            self._answer(req, request_id, req.filter if flt is None else flt)
        ) as events:  # closed at once if the caller leaves
            try:
                async for ev in events:
                    yield ev
            except Exception as exc:
                model = self.metric_model(req.model)
                # refused for the request's own sake (moderation, unknown model, too long) vs failed
                outcome = "ChatRejected" if getattr(exc, "status", 500) < 429 else "ChatFailed"
                self.deps.metrics(model, {outcome: (MetricUnit.Count, 1)})
                raise

    async def _answer(self, req: ChatRequest, request_id: str, flt: SearchFilter | None) -> AsyncGenerator[ChatEvent]:
        t0 = time.monotonic()
        model = self.model(req.model)
        settings = self.deps.settings
        history = [m.wire() for m in req.messages]
        max_output = min(req.max_tokens or model.max_tokens, model.max_output_tokens)
        k = settings.rag_top_k if req.top_k is None else req.top_k

        hits: list[SearchHit] = []
        embedding_usage = Usage()
        note: str | None = None
        if req.use_rag and k > 0:
            hits, embedding_usage = await self.retrieve(req.question(), k, flt)
            if not hits:
                note = "no indexed passages matched; answered without document context"
        else:
            note = "retrieval disabled for this request"
        retrieval_ms = _ms(t0)

        system_prompt = answer_system_prompt(self.deps.system_prompt, req.answer_language())

        def fit(passages: list[SearchHit]) -> Any:
            try:
                prompt = build_prompt(
                    history,
                    passages,
                    system_prompt=system_prompt,
                    context_window=model.context_window,
                    max_output_tokens=max_output,
                )
            except PromptTooLong as exc:
                raise BadRequestError(str(exc)) from None
            prompt.messages = keep_tool_pairs(prompt.messages)
            if prompt.messages[-1] is not history[-1]:
                raise BadRequestError("the tool result and the call it answers do not fit the context window")
            return prompt

        prompt = fit(hits)
        params = ChatParams(
            temperature=req.temperature,
            top_p=req.top_p,
            max_tokens=max_output,
            enable_thinking=req.enable_thinking,
            presence_penalty=req.presence_penalty,
            seed=req.seed,
            stop=req.stop,
            response_format=req.response_format.model_dump() if req.response_format else None,
            tools=[t.model_dump(exclude_none=True) for t in req.tools] if req.tools else None,
            tool_choice=req.tool_choice,
            parallel_tool_calls=req.parallel_tool_calls,
        )
        notices = list(prompt.notes)
        upstream = self.deps.client.stream(prompt.messages, model, params)
        try:
            first: StreamEvent = await anext(upstream)
        except ContextLengthExceededError:
            if not prompt.passages:
                raise
            # DashScope counts differently from our estimate: retry once without the passages.
            await upstream.aclose()
            prompt = fit([])
            notices.append("the prompt was too long for the model; answered without the retrieved passages")
            upstream = self.deps.client.stream(prompt.messages, model, params)
            first = await anext(upstream)

        yield Sources([source_entry(n, h) for n, h in enumerate(prompt.passages, start=1)], note)
        for message in notices:
            yield Notice(message)
        first_token_ms = _ms(t0)
        event: StreamEvent | None = first
        streamed_tokens = 0  # estimated, for the log line if the caller leaves before the usage chunk
        try:
            while event is not None:
                if isinstance(event, TextDelta):
                    streamed_tokens += estimate_tokens(event.text)
                    yield Delta(event.text)
                elif isinstance(event, ReasoningDelta):
                    yield Reasoning(event.text)
                elif isinstance(event, ToolCallDelta):
                    yield ToolCalls(event.calls)
                elif isinstance(event, StreamEnd):
                    done = Finished(
                        model.name,
                        event.usage,
                        embedding_usage,
                        event.finish_reason,
                        {"retrieval": retrieval_ms, "first_token": first_token_ms, "total": _ms(t0)},
                    )
                    logger.info(
                        "chat completed",
                        extra={"request_id": request_id, "passages": len(prompt.passages), **done.payload()},
                    )
                    self.deps.metrics(model.name, done.figures())
                    yield done
                event = await anext(upstream, None)
        except (GeneratorExit, asyncio.CancelledError):
            # The caller hung up (a closed tab, a timeout): closing the upstream stream below stops
            # DashScope generating tokens nobody will read. Its usage never arrives, hence estimates.
            logger.info(
                "chat stopped: client disconnected",
                extra={
                    "request_id": request_id,
                    "model": model.name,
                    "estimated_completion_tokens": streamed_tokens,
                    "seconds": round(time.monotonic() - t0, 3),
                },
            )
            self.deps.metrics(model.name, {"ChatAbandoned": (MetricUnit.Count, 1)})
            raise
        finally:
            await upstream.aclose()
