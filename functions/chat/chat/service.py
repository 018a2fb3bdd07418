"""One chat turn: retrieve, build the prompt, stream the answer, account for it.

:meth:`ChatService.stream` pulls the model's first event before yielding anything, so failures
that happen before any text (bad key, moderation, unknown model, throttling) surface as HTTP
errors with a status code, while everything after the first token streams with no buffering.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import AsyncGenerator
from contextlib import aclosing
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from aws_lambda_powertools import Logger
from rag_shared.config import GeneratorModel, Settings, load_catalog
from rag_shared.dashscope import (
    ChatParams,
    Completion,
    DashScopeClient,
    ReasoningDelta,
    StreamEnd,
    StreamEvent,
    TextDelta,
    ToolCallDelta,
)
from rag_shared.embeddings import Embedder
from rag_shared.errors import BadRequestError, ContextLengthExceededError, ModelNotFoundError, RagError
from rag_shared.rerank import Reranker, fit_documents
from rag_shared.store import SearchFilter, SearchHit, SearchResult, SearchType
from rag_shared.tokens import estimate_tokens, truncate_to_tokens
from rag_shared.usage import Usage

from chat.models import ChatMessage, ChatRequest, RetrievalOptions
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
class Query:
    """What retrieval searched for: the question, or its standalone rewrite."""

    query: str
    original: str
    rewritten: bool

    def payload(self) -> dict[str, Any]:
        return {"query": self.query, "original": self.original, "rewritten": self.rewritten}


@dataclass(frozen=True)
class Citations:
    """The numbered sources the answer cited (``[n]`` markers), in order of first citation."""

    citations: list[dict[str, Any]]


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
class RetrievalUsage:
    """Tokens and cost of the retrieval calls: embedding, rerank, follow-up rewrite."""

    embedding: Usage = field(default_factory=Usage)
    rerank: Usage = field(default_factory=Usage)
    rewrite: Usage = field(default_factory=Usage)
    rerank_fallback: bool = False
    rewrite_fallback: bool = False

    @property
    def cost_usd(self) -> float:
        return self.embedding.cost_usd + self.rerank.cost_usd + self.rewrite.cost_usd

    def payload(self) -> dict[str, Any]:
        return {
            "embedding_tokens": self.embedding.prompt_tokens,
            "rerank_tokens": self.rerank.prompt_tokens,
            "rewrite_tokens": self.rewrite.total_tokens,
        }

    def figures(self) -> dict[str, tuple[MetricUnit, float]]:
        out: dict[str, tuple[MetricUnit, float]] = {"EmbeddingTokens": (MetricUnit.Count, self.embedding.prompt_tokens)}
        if self.rerank.calls or self.rerank_fallback:
            out["RerankTokens"] = (MetricUnit.Count, self.rerank.prompt_tokens)
            out["RerankFallback"] = (MetricUnit.Count, int(self.rerank_fallback))
        if self.rewrite.calls or self.rewrite_fallback:
            out["RewriteTokens"] = (MetricUnit.Count, self.rewrite.total_tokens)
            out["RewriteFallback"] = (MetricUnit.Count, int(self.rewrite_fallback))
        return out


@dataclass(frozen=True)
class Finished:
    model: str
    usage: Usage
    embedding_usage: Usage
    finish_reason: str | None
    latency_ms: dict[str, float]
    retrieval: RetrievalUsage | None = None

    def _retrieval(self) -> RetrievalUsage:
        return self.retrieval or RetrievalUsage(embedding=self.embedding_usage)

    def payload(self) -> dict[str, Any]:
        r = self._retrieval()
        return {
            "model": self.model,
            "prompt_tokens": self.usage.prompt_tokens,
            "completion_tokens": self.usage.completion_tokens,
            "total_tokens": self.usage.total_tokens,
            **r.payload(),
            "estimated_cost_usd": round(self.usage.cost_usd + r.cost_usd, 8),
            "finish_reason": self.finish_reason,
            "latency_ms": self.latency_ms,
        }

    def figures(self) -> dict[str, tuple[MetricUnit, float]]:
        """The answer's metrics (see :mod:`chat.telemetry`)."""
        r = self._retrieval()
        latency = {f"{k.title().replace('_', '')}Ms": v for k, v in self.latency_ms.items()}
        return (
            {
                "ChatCompleted": (MetricUnit.Count, 1),
                "PromptTokens": (MetricUnit.Count, self.usage.prompt_tokens),
                "CompletionTokens": (MetricUnit.Count, self.usage.completion_tokens),
                "EstimatedCostUSD": (MetricUnit.NoUnit, self.usage.cost_usd + r.cost_usd),
            }
            | r.figures()
            | {name: (MetricUnit.Milliseconds, v) for name, v in latency.items()}
        )


ChatEvent = Query | Sources | Notice | Delta | Reasoning | ToolCalls | Citations | Finished


@dataclass
class Retrieval:
    """The outcome of :meth:`ChatService.retrieval`: what was searched and what came back."""

    query: Query
    hits: list[SearchHit]
    usage: RetrievalUsage
    notices: list[str]
    note: str | None
    latency_ms: dict[str, float]
    rerank_scores: dict[str, float] = field(default_factory=dict)  # hit id -> relevance score

    def sources(self) -> list[dict[str, Any]]:
        return [self.source(n, h) for n, h in enumerate(self.hits, start=1)]

    def source(self, n: int, hit: SearchHit) -> dict[str, Any]:
        entry = source_entry(n, hit)
        if hit.id in self.rerank_scores:
            entry["rerank_score"] = round(self.rerank_scores[hit.id], 6)
        return entry


# --- follow-up rewrite and citations (pure) -------------------------------------------------------

REWRITE_PROMPT = (
    "Rewrite the user's last message as a standalone search query that can be understood without the "
    "conversation: resolve pronouns and references from the earlier turns, keep names, codes and numbers "
    "exactly, keep the language of the last message. Reply with the query only; do not answer it."
)
REWRITE_MAX_TOKENS = 96  # a query, not an answer
REWRITE_TURN_TOKENS = 400  # each earlier turn is cut to this: the rewrite needs the gist, not the whole
REWRITE_TURNS = 6  # earlier turns kept


def rewrite_messages(conversation: list[ChatMessage]) -> list[dict[str, Any]] | None:
    """The rewrite call's messages, or None when there is nothing to rewrite (no earlier user turn)."""
    turns = [m for m in conversation if m.role in ("user", "assistant") and (m.content or "").strip()]
    last = max((i for i, m in enumerate(turns) if m.role == "user"), default=None)
    if last is None or not any(m.role == "user" for m in turns[:last]):
        return None
    earlier = [
        {"role": m.role, "content": truncate_to_tokens(m.content or "", REWRITE_TURN_TOKENS)}
        for m in turns[:last][-REWRITE_TURNS:]
    ]
    return [
        {"role": "system", "content": REWRITE_PROMPT},
        *earlier,
        {"role": "user", "content": truncate_to_tokens(turns[last].content or "", REWRITE_TURN_TOKENS)},
    ]


def clean_rewrite(text: str, limit: int = 1000) -> str:
    """The model's rewrite as a query: its first non-empty line, unquoted, bounded."""
    line = next((ln.strip() for ln in text.strip().splitlines() if ln.strip()), "")
    line = line.removeprefix("Query:").removeprefix("query:").strip().strip("\"'“”「」").strip()
    return line[:limit]


_CITE = re.compile(r"\[(\d{1,3}(?:\s*[,，、]\s*\d{1,3})*)\]")


def cited_numbers(answer: str, passages: int) -> list[int]:
    """The passage numbers cited as ``[n]`` (or ``[n, m]``) in ``answer``, first citation first,
    each once; numbers outside 1..passages (a model's invention) are left out."""
    seen: list[int] = []
    for group in _CITE.findall(answer):
        for part in re.split(r"[,，、]", group):
            n = int(part)
            if 1 <= n <= passages and n not in seen:
                seen.append(n)
    return seen


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
    # None: built from settings.reranker (RERANK_MODEL or the region's default) with the client's key
    reranker: Reranker | None = None


NOTHING_MATCHED = (
    "no indexed passages matched (the index is empty or nothing satisfies the filter); "
    "answered without document context"
)


@dataclass(frozen=True)
class Found:
    """One search: the hits, the embedding usage, and why nothing came back if nothing did."""

    hits: list[SearchHit]
    usage: Usage
    note: str | None = None


def retrieval_note(found: SearchResult, floor: float | None) -> str | None:
    """Why no passage came back: nothing matched at all, or nothing was relevant enough."""
    if found.hits:
        return None
    if found.below_floor and floor is not None:
        return (
            f"no passage scored above min_score {floor:g} ({found.below_floor} below it); "
            "answered without document context"
        )
    return NOTHING_MATCHED


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
        model = deps.settings.reranker
        if deps.reranker is None and model is not None:
            # on the DashScope client's pools (see rag_shared.dashscope.POOL_SHARDS)
            deps.reranker = Reranker(deps.settings, deps.client.keys, model, clients=deps.client.async_client)

    def model(self, name: str | None) -> GeneratorModel:
        catalog = load_catalog()
        if name is None:
            return self.deps.settings.generator
        if name not in catalog.generators:
            raise ModelNotFoundError(f"model {name!r} is not offered here; GET /v1/models lists the models")
        return catalog.generators[name]

    async def retrieve(
        self,
        query: str,
        k: int,
        flt: SearchFilter | None,
        *,
        search_type: SearchType | None = None,
        min_score: float | None = None,
    ) -> tuple[list[SearchHit], Usage]:
        """The ``k`` passages for ``query`` and the embedding usage (see :meth:`find`)."""
        found = await self.find(query, k, flt, search_type=search_type, min_score=min_score)
        return found.hits, found.usage

    async def find(
        self,
        query: str,
        k: int,
        flt: SearchFilter | None,
        *,
        search_type: SearchType | None = None,
        min_score: float | None = None,
    ) -> Found:
        """Retrieve with the request's search type and floor, else the deployment's (SEARCH_TYPE,
        RAG_MIN_SCORE; the default floor is not applied to keyword search, which has none). Keyword
        search makes no embedding call. The note says why nothing came back, if nothing did."""
        settings = self.deps.settings
        kind: SearchType = search_type or settings.search_type
        floor = min_score if min_score is not None else (settings.min_score if kind != "keyword" else None)
        vector: list[float] | None = None
        usage = Usage()
        if kind != "keyword":
            embedder = self.deps.embedder
            result = await embedder.aembed([truncate_to_tokens(query, embedder.model.max_tokens_per_text)])
            usage = result.usage
            if result.vectors[0] is None:
                return Found([], usage, NOTHING_MATCHED)
            vector = result.vectors[0]
        try:
            found = await asyncio.to_thread(
                self.deps.store.search_result, vector, k, flt, text=query, search_type=kind, min_score=floor
            )
        except ValueError as exc:  # a search the store cannot run as asked (e.g. a query with no terms)
            raise BadRequestError(str(exc)) from None
        return Found(found.hits, usage, retrieval_note(found, floor))

    # --- the retrieval pipeline: rewrite -> search -> rerank -> top k (chat and /v1/retrieve) ---

    async def retrieval(
        self, conversation: list[ChatMessage], k: int, flt: SearchFilter | None, opts: RetrievalOptions
    ) -> Retrieval:
        """Retrieve the ``k`` passages for the conversation's last user message. Rewriting and
        reranking degrade to the plain question and the search order (with a notice) when they
        fail: they improve an answer, they never cost one."""
        t0 = time.monotonic()
        settings = self.deps.settings
        notices: list[str] = []
        latency: dict[str, float] = {}
        question = next((m.content or "" for m in reversed(conversation) if m.role == "user"), "")
        usage = RetrievalUsage()

        query = Query(question, question, False)
        rewrite = settings.query_rewrite == "history" if opts.rewrite_query is None else opts.rewrite_query
        prompt = rewrite_messages(conversation) if rewrite else None
        if prompt is not None:
            t = time.monotonic()
            text, rewrite_usage = await self._rewrite(prompt)
            latency["rewrite"] = _ms(t)
            if text:
                query = Query(text, question, text != question)
                usage = RetrievalUsage(rewrite=rewrite_usage)
            else:
                notices.append("the follow-up question could not be rewritten; searched for it as asked")
                usage = RetrievalUsage(rewrite=rewrite_usage, rewrite_fallback=True)

        reranker = self.deps.reranker
        if opts.rerank and reranker is None:
            raise BadRequestError("rerank=true, but no rerank model is configured here (RERANK_MODEL)")
        use_rerank = reranker is not None and opts.rerank is not False
        n = min(max(k * 4, k), max(settings.rerank_max_candidates, k)) if use_rerank else k

        t = time.monotonic()
        searched = await self.find(query.query, n, flt, search_type=opts.search_type, min_score=opts.min_score)
        hits, embedding_usage = searched.hits, searched.usage
        latency["search"] = _ms(t)
        usage = RetrievalUsage(
            embedding=embedding_usage,
            rewrite=usage.rewrite,
            rewrite_fallback=usage.rewrite_fallback,
        )

        scores: dict[str, float] = {}
        if use_rerank and reranker is not None and len(hits) > 1:
            t = time.monotonic()
            try:
                hits, scores, rerank_usage = await self._rerank(reranker, query.query, hits, k)
                usage = RetrievalUsage(usage.embedding, rerank_usage, usage.rewrite, False, usage.rewrite_fallback)
            except (RagError, TimeoutError) as exc:
                logger.warning("rerank failed; kept the search order", extra={"error": str(exc)})
                notices.append("reranking failed; the passages are in search order")
                usage = RetrievalUsage(usage.embedding, Usage(), usage.rewrite, True, usage.rewrite_fallback)
            latency["rerank"] = _ms(t)
        hits = hits[:k]
        latency["retrieval"] = _ms(t0)
        return Retrieval(query, hits, usage, notices, searched.note if not hits else None, latency, scores)

    async def _rewrite(self, messages: list[dict[str, Any]]) -> tuple[str, Usage]:
        """The standalone query ('' on failure, logged) and the call's usage."""
        settings = self.deps.settings
        model = settings.rewrite_generator
        params = ChatParams(temperature=0, max_tokens=REWRITE_MAX_TOKENS, enable_thinking=False)
        try:
            done: Completion = await asyncio.wait_for(
                self.deps.client.acomplete(
                    messages, model, params, call_timeout=settings.query_rewrite_timeout_seconds, max_retries=1
                ),
                settings.query_rewrite_timeout_seconds * 2 + 1,  # two tries, then give up
            )
        except (RagError, TimeoutError) as exc:
            logger.warning("query rewrite failed; searched for the question as asked", extra={"error": str(exc)})
            return "", Usage()
        return clean_rewrite(done.text), done.usage

    async def _rerank(
        self, reranker: Reranker, query: str, hits: list[SearchHit], k: int
    ) -> tuple[list[SearchHit], dict[str, float], Usage]:
        """The hits in the reranker's order; candidates cut to fit its limits keep their search order after."""
        q, docs = fit_documents(query, [h.text for h in hits], reranker.model)
        result = await asyncio.wait_for(
            reranker.rerank(q, docs, len(docs)), self.deps.settings.rerank_timeout_seconds * 3
        )
        order = [i for i, _ in result.order]
        rest = [i for i in range(len(hits)) if i not in set(order)]
        scores = {hits[i].id: score for i, score in result.order}
        return [hits[i] for i in order + rest], scores, result.usage

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

        found: Retrieval | None = None
        hits: list[SearchHit] = []
        note: str | None = None
        if req.use_rag and k > 0:
            found = await self.retrieval(req.messages, k, flt, req)
            hits, note = found.hits, found.note
        else:
            note = "retrieval disabled for this request"
        retrieval_ms = _ms(t0)
        retrieval_usage = found.usage if found else RetrievalUsage()

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

        if found is not None:
            yield found.query
        entries = [found.source(n, h) if found else source_entry(n, h) for n, h in enumerate(prompt.passages, start=1)]
        yield Sources(entries, note)
        for message in (found.notices if found else []) + notices:
            yield Notice(message)
        first_token_ms = _ms(t0)
        event: StreamEvent | None = first
        answer: list[str] = []  # for the citations and, if the caller leaves early, a token estimate
        try:
            while event is not None:
                if isinstance(event, TextDelta):
                    answer.append(event.text)
                    yield Delta(event.text)
                elif isinstance(event, ReasoningDelta):
                    yield Reasoning(event.text)
                elif isinstance(event, ToolCallDelta):
                    yield ToolCalls(event.calls)
                elif isinstance(event, StreamEnd):
                    if prompt.passages:
                        cited = cited_numbers("".join(answer), len(prompt.passages))
                        yield Citations([entries[n - 1] for n in cited])
                    latency = {"retrieval": retrieval_ms, "first_token": first_token_ms, "total": _ms(t0)}
                    for step in ("rewrite", "rerank"):
                        if found is not None and step in found.latency_ms:
                            latency[step] = found.latency_ms[step]
                    done = Finished(
                        model.name,
                        event.usage,
                        retrieval_usage.embedding,
                        event.finish_reason,
                        latency,
                        retrieval_usage,
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
                    # estimated once here, not per piece: the usage chunk never arrives
                    "estimated_completion_tokens": estimate_tokens("".join(answer)),
                    "seconds": round(time.monotonic() - t0, 3),
                },
            )
            self.deps.metrics(model.name, {"ChatAbandoned": (MetricUnit.Count, 1)})
            raise
        finally:
            await upstream.aclose()
