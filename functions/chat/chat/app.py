"""The chat function: a FastAPI app streamed through the AWS Lambda Web Adapter.

On Lambda, ``run.sh`` starts uvicorn and the adapter (``AWS_LWA_INVOKE_MODE=response_stream``)
relays each function URL request to it and streams the response back as it is written. Locally
the same app runs under uvicorn directly.

Endpoints: ``POST /chat/completions/stream`` (Server-Sent Events: ``query``, ``sources``, ``notice``,
``delta``, ``reasoning``, ``citations``, ``usage``, ``error``, ``done``); ``POST /v1/chat/completions``
(OpenAI-compatible, streaming or not); ``POST /v1/retrieve`` (retrieval only, JSON);
``GET /v1/models``; ``GET /health``.
"""

from __future__ import annotations

import asyncio
import gc
import json
import re
import time
import uuid
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import orjson
from aws_lambda_powertools import Logger
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import JSONResponse, StreamingResponse
from rag_shared.commits import CommitStore
from rag_shared.config import load_catalog, load_settings
from rag_shared.dashscope import DashScopeClient
from rag_shared.embeddings import Embedder
from rag_shared.errors import ConfigError, RagError
from rag_shared.secrets import ApiKeyProvider
from starlette.exceptions import HTTPException as StarletteHTTPException

from chat import page, snapstart
from chat.commits import SharedCommitReads
from chat.guard import Guard, on_lambda, token_source
from chat.models import ChatRequest, OpenAIChatRequest, RetrieveRequest, StreamRequest, UnsupportedParameter
from chat.service import (
    ChatDeps,
    ChatEvent,
    ChatService,
    Citations,
    Delta,
    Finished,
    Notice,
    Query,
    Reasoning,
    Sources,
    ToolCalls,
)
from chat.settings import ChatSettings

logger = Logger(service="chat")

SSE_HEADERS = {
    "Cache-Control": "no-cache",
    "X-Accel-Buffering": "no",  # tell any proxy not to buffer
    "Connection": "keep-alive",
}


def build_deps(chat_settings: ChatSettings | None = None) -> ChatDeps:
    """Wire the service from the environment (the Lambda path)."""
    settings = load_settings()
    chat_settings = chat_settings or ChatSettings()
    from rag_shared.store import VectorStore  # opensearch-py: loaded when the deps are built, not at import

    client = DashScopeClient(settings, ApiKeyProvider.from_settings(settings))
    embedder = Embedder(client, settings.embedder, settings.dimensions)
    commits = CommitStore.from_settings(settings)  # concurrent searches share their commit reads
    store = VectorStore.from_settings(settings, commits=SharedCommitReads(commits) if commits else None)
    return ChatDeps(settings, client, embedder, store, chat_settings.system_prompt)


# A request id goes back in a response header and into logs: only a plain token is taken from the
# caller (CR/LF would split headers, non-Latin-1 text cannot be encoded in one); anything else is
# replaced by a fresh id rather than trusted.
_SAFE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$")


def _request_id(request: Request) -> str:
    context = request.headers.get("x-amzn-request-context")
    candidates: list[object] = []
    if context:
        try:
            candidates.append(json.loads(context)["requestId"])
        except (ValueError, KeyError, TypeError):
            pass
    candidates.append(request.headers.get("x-request-id"))
    for value in candidates:
        if isinstance(value, str) and _SAFE_ID.match(value):
            return value
    return uuid.uuid4().hex


# Client-facing messages never carry ARNs (account id, resource names), internal URLs or keys.
_SCRUB = [
    (re.compile(r"arn:aws[a-z-]*:[^\s,;)\]\"']+"), "[resource]"),
    (re.compile(r"https?://[^\s,;)\]\"']+"), "[url]"),
    (re.compile(r"\bsk-[A-Za-z0-9_-]{6,}"), "[key]"),
]


def client_message(message: str) -> str:
    from rag_shared.logs import redact

    for pattern, replacement in _SCRUB:
        message = pattern.sub(replacement, message)
    return redact(message)


def error_json(
    status: int, code: str, message: str, etype: str = "invalid_request_error", request_id: str | None = None
) -> JSONResponse:
    headers = {"x-request-id": request_id} if request_id else None
    return JSONResponse(
        {"error": {"message": client_message(message), "type": etype, "code": code, "param": None}},
        status,
        headers=headers,
    )


def _validation_message(exc: RequestValidationError) -> tuple[int, str]:
    errors = exc.errors()
    if any(e.get("type") == "json_invalid" for e in errors):
        return 400, "request body is not valid JSON"
    parts = []
    for e in errors[:5]:
        loc = ".".join(str(p) for p in e.get("loc", ()) if p != "body")
        msg = str(e.get("msg", "")).removeprefix("Value error, ")
        parts.append(f"{loc}: {msg}" if loc else msg)
    return 422, "; ".join(parts)


# Bytes of the line separators JSON leaves raw (U+2028, U+2029, NEL) in UTF-8. Their lead bytes
# (0xE2, 0xC2) never occur inside another character's encoding, so a bytes replace is exact.
_RAW_SEPARATORS = ((b"\xe2\x80\xa8", b"\\u2028"), (b"\xe2\x80\xa9", b"\\u2029"), (b"\xc2\x85", b"\\u0085"))


def sse_json_bytes(data: Any) -> bytes:
    """JSON for one SSE ``data:`` line. JSON leaves U+2028/U+2029 (and NEL) raw, and clients that
    split lines like ``str.splitlines`` would cut the event there: escape them. orjson (~10x the
    stdlib's speed; this runs once per streamed piece), the stdlib for what orjson refuses (integers
    beyond 64 bits in a sidecar's metadata)."""
    try:
        raw = orjson.dumps(data)
    except (orjson.JSONEncodeError, TypeError):
        raw = json.dumps(data, ensure_ascii=False).encode()
    if b"\xe2\x80" in raw or b"\xc2\x85" in raw:
        for sep, escaped in _RAW_SEPARATORS:
            raw = raw.replace(sep, escaped)
    return raw


def sse_json(data: Any) -> str:
    return sse_json_bytes(data).decode()


def sse(event: str, data: dict[str, Any]) -> bytes:
    return b"event: " + event.encode() + b"\ndata: " + sse_json_bytes(data) + b"\n\n"


def text_frame(event: bytes, text: str) -> bytes:
    """``event: <event>`` with ``{"text": ...}``: the frame of every streamed piece, built without a dict."""
    return b"event: " + event + b'\ndata: {"text":' + sse_json_bytes(text) + b"}\n\n"


def _error_payload(exc: BaseException, request_id: str) -> dict[str, Any]:
    if isinstance(exc, RagError):
        return {
            "code": exc.code,
            "message": client_message(str(exc)),
            "retryable": exc.retryable,
            "request_id": request_id,
        }
    logger.exception("stream failed", extra={"request_id": request_id})
    return {"code": "internal_error", "message": "internal error", "retryable": True, "request_id": request_id}


async def _prepend(first: ChatEvent, rest: AsyncIterator[ChatEvent]) -> AsyncIterator[ChatEvent]:
    """The event already pulled (to answer errors with a status before streaming), then the rest."""
    yield first
    async for ev in rest:
        yield ev


async def native_sse(first: ChatEvent, rest: AsyncIterator[ChatEvent], request_id: str) -> AsyncIterator[bytes]:
    """The seed's event stream. An error after the stream started is an ``error`` event, then ``done``."""

    try:
        async for ev in _prepend(first, rest):
            if isinstance(ev, Delta):
                yield text_frame(b"delta", ev.text)
            elif isinstance(ev, Reasoning):
                yield text_frame(b"reasoning", ev.text)
            elif isinstance(ev, ToolCalls):
                yield sse("tool_calls", {"tool_calls": list(ev.calls)})
            elif isinstance(ev, Sources):
                yield sse("sources", {"sources": ev.sources, "note": ev.note})
            elif isinstance(ev, Notice):
                yield sse("notice", {"message": ev.message})
            elif isinstance(ev, Query):
                yield sse("query", ev.payload())
            elif isinstance(ev, Citations):
                yield sse("citations", {"citations": ev.citations})
            elif isinstance(ev, Finished):
                yield sse("usage", ev.payload())
    except Exception as exc:
        yield sse("error", _error_payload(exc, request_id))
    yield sse("done", {"request_id": request_id})


async def openai_sse(
    first: ChatEvent, rest: AsyncIterator[ChatEvent], model: str, include_usage: bool, request_id: str
) -> AsyncIterator[bytes]:
    """OpenAI ``chat.completion.chunk`` frames. Our events ride as extra fields, which OpenAI clients
    ignore: ``sources``, ``sources_note`` and ``query`` (what was searched) on the first chunk,
    ``citations`` on the finishing chunk."""
    cid = f"chatcmpl-{request_id[:24]}"
    created = int(time.time())
    query: dict[str, Any] | None = None
    citations: list[dict[str, Any]] | None = None

    def chunk(delta: dict[str, Any], finish: str | None = None, **extra: Any) -> bytes:
        body = {
            "id": cid,
            "object": "chat.completion.chunk",
            "created": created,
            "model": model,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
            **extra,
        }
        return b"data: " + sse_json_bytes(body) + b"\n\n"

    # a text piece's chunk is this prefix, the delta's JSON and this suffix: one orjson call per piece
    head = sse_json_bytes({"id": cid, "object": "chat.completion.chunk", "created": created, "model": model})
    piece_prefix = b"data: " + head[:-1] + b',"choices":[{"index":0,"delta":'
    piece_suffix = b',"finish_reason":null}]}\n\n'

    def piece(field: str, text: str) -> bytes:
        return piece_prefix + sse_json_bytes({field: text}) + piece_suffix

    try:
        async for ev in _prepend(first, rest):
            if isinstance(ev, Query):
                query = ev.payload()
            elif isinstance(ev, Citations):
                citations = ev.citations
            elif isinstance(ev, Sources):
                extra: dict[str, Any] = {"query": query} if query else {}
                yield chunk({"role": "assistant", "content": ""}, sources=ev.sources, sources_note=ev.note, **extra)
            elif isinstance(ev, Delta):
                yield piece("content", ev.text)
            elif isinstance(ev, Reasoning):
                yield piece("reasoning_content", ev.text)
            elif isinstance(ev, ToolCalls):
                yield chunk({"tool_calls": list(ev.calls)})
            elif isinstance(ev, Finished):
                yield chunk(
                    {}, ev.finish_reason or "stop", **({"citations": citations} if citations is not None else {})
                )
                if include_usage:
                    p = ev.payload()
                    usage = {k: p[k] for k in ("prompt_tokens", "completion_tokens", "total_tokens")}
                    tail = {
                        "id": cid,
                        "object": "chat.completion.chunk",
                        "created": created,
                        "model": model,
                        "choices": [],
                        "usage": usage,
                        "x_usage": p,
                    }
                    yield b"data: " + sse_json_bytes(tail) + b"\n\n"
    except Exception as exc:
        err = _error_payload(exc, request_id)
        body = {"error": {"message": err["message"], "type": "api_error", "code": err["code"]}}
        yield b"data: " + sse_json_bytes(body) + b"\n\n"
    yield b"data: [DONE]\n\n"


def merge_tool_calls(calls: dict[int, dict[str, Any]], pieces: tuple[dict[str, Any], ...]) -> None:
    """Assemble streamed tool-call pieces into whole calls, as OpenAI's SDK does: the first piece of
    an ``index`` brings ``id``, ``type`` and the name; later ones append to ``arguments``."""
    for piece in pieces:
        index = int(piece.get("index") or 0)
        fn = piece.get("function") or {}
        call = calls.setdefault(index, {"id": "", "type": "function", "function": {"name": "", "arguments": ""}})
        call["id"] = call["id"] or piece.get("id") or ""
        call["function"]["name"] = call["function"]["name"] or fn.get("name") or ""
        call["function"]["arguments"] += fn.get("arguments") or ""


def warm_up(deps: ChatDeps) -> None:
    """Pay for the key lookup and the HTTP client while the app starts, not in the
    first request: the Web Adapter holds requests until start-up is done, and Lambda gives the init
    phase burst CPU. A failure here is only logged: the first request tries again and reports it."""
    try:
        deps.client.async_client()
    except RagError as exc:
        logger.warning("DashScope client not ready at start-up; first request retries", extra={"error": str(exc)})


def create_app(
    deps: ChatDeps | Callable[[], ChatDeps] | None = None, chat_settings: ChatSettings | None = None
) -> FastAPI:
    """The ASGI app. ``deps``: a ready :class:`ChatDeps` (tests), or a factory; default: from env."""
    chat_settings = chat_settings or ChatSettings()
    if chat_settings.chat_auth_mode == "token" and not (
        chat_settings.chat_api_token or chat_settings.chat_token_secret_arn
    ):
        raise ConfigError("CHAT_AUTH_MODE=token needs CHAT_API_TOKEN or CHAT_TOKEN_SECRET_ARN")
    state: dict[str, ChatService] = {}
    loopback_only = chat_settings.chat_auth_mode == "iam" and not on_lambda()
    if loopback_only:
        logger.warning(
            "CHAT_AUTH_MODE=iam outside Lambda: no function URL verifies callers here, so only loopback "
            "clients are served. Set CHAT_AUTH_MODE=token (with CHAT_API_TOKEN) to serve others."
        )

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        built = deps if isinstance(deps, ChatDeps) else (deps or (lambda: build_deps(chat_settings)))()
        state["service"] = ChatService(built)
        if not snapstart.snapshot_init():  # under SnapStart the after-restore hook reads the key
            await asyncio.to_thread(warm_up, built)
        # What start-up built (FastAPI's and pydantic's models, boto3's service models) lives as long
        # as the process: frozen out of the collector, full collections stop walking it under load.
        gc.collect()
        gc.freeze()
        logger.info("chat ready", extra={"model": built.settings.generator.name, "auth": chat_settings.chat_auth_mode})
        yield

    docs = chat_settings.chat_api_docs  # the schema and docs pages describe the API to anyone: off by default
    app = FastAPI(
        title="Qwen RAG chat",
        version="0.1.0",
        lifespan=lifespan,
        docs_url="/docs" if docs else None,
        redoc_url="/redoc" if docs else None,
        openapi_url="/openapi.json" if docs else None,
    )

    def service() -> ChatService:
        return state["service"]

    @app.exception_handler(RequestValidationError)
    async def on_validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        status, message = _validation_message(exc)
        return error_json(status, "invalid_request", message)

    @app.exception_handler(StarletteHTTPException)
    async def on_http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = {413: "body_too_large", 404: "not_found", 408: "body_timeout", 405: "method_not_allowed"}.get(
            exc.status_code, "http_error"
        )
        return error_json(exc.status_code, code, str(exc.detail))

    @app.exception_handler(RagError)
    async def on_rag_error(request: Request, exc: RagError) -> JSONResponse:
        etype = (
            "rate_limit_error" if exc.status == 429 else "invalid_request_error" if exc.status < 500 else "api_error"
        )
        return error_json(exc.status, exc.code, str(exc), etype)

    @app.get("/health")
    async def health() -> dict[str, Any]:
        s = service().deps.settings
        return {
            "status": "ok",
            "model": s.generator.name,
            "embedding_model": s.embedder.name,
            "index": s.opensearch_index,
            "region": s.region.value,
        }

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        catalog = load_catalog()
        return {
            "object": "list",
            "data": [
                {
                    "id": m.name,
                    "object": "model",
                    "created": 0,
                    "owned_by": "dashscope",
                    "context_window": m.context_window,
                    "max_output_tokens": m.max_output_tokens,
                    "price_input_per_1k": m.price_input_per_1k,
                    "price_output_per_1k": m.price_output_per_1k,
                    "default": m.name == service().deps.settings.generator.name,
                }
                for m in catalog.generators.values()
            ],
        }

    async def start(req: ChatRequest, request_id: str, flt: Any = None) -> tuple[ChatEvent, AsyncGenerator[ChatEvent]]:
        """Run up to the model's first event; errors so far become HTTP errors (see service)."""
        stream = service().stream(req, request_id=request_id, flt=flt)
        try:
            first = await anext(stream)
        except BaseException:
            await stream.aclose()
            raise
        return first, stream

    @app.post("/chat/completions/stream")
    async def chat_stream(req: StreamRequest, request: Request) -> StreamingResponse:
        request_id = _request_id(request)
        ignored = req.ignored_fields()
        if ignored:  # the seed's (deepwiki-open's) repository fields: names only, ``token`` is a credential
            logger.info("ignored request fields", extra={"request_id": request_id, "fields": ignored})
        first, rest = await start(req, request_id, req.retrieval_filter())
        return StreamingResponse(
            native_sse(first, rest, request_id),
            media_type="text/event-stream",
            headers={**SSE_HEADERS, "x-request-id": request_id},
        )

    @app.post("/v1/chat/completions", response_model=None)
    async def openai_chat(req: OpenAIChatRequest, request: Request) -> StreamingResponse | JSONResponse:
        request_id = _request_id(request)
        problem = req.unsupported()
        if problem:
            raise UnsupportedParameter(problem)
        if req.max_completion_tokens and not req.max_tokens:
            req = req.model_copy(update={"max_tokens": req.max_completion_tokens})
        model_name = service().model(req.model).name
        first, rest = await start(req, request_id)
        if req.stream:
            include_usage = bool(req.stream_options and req.stream_options.include_usage)
            return StreamingResponse(
                openai_sse(first, rest, model_name, include_usage, request_id),
                media_type="text/event-stream",
                headers={**SSE_HEADERS, "x-request-id": request_id},
            )
        text, reasoning, sources, finished = [], [], None, None
        query: Query | None = None
        citations: list[dict[str, Any]] = []
        calls: dict[int, dict[str, Any]] = {}
        ev: ChatEvent | None = first
        while ev is not None:
            if isinstance(ev, Delta):
                text.append(ev.text)
            elif isinstance(ev, Reasoning):
                reasoning.append(ev.text)
            elif isinstance(ev, ToolCalls):
                merge_tool_calls(calls, ev.calls)
            elif isinstance(ev, Sources):
                sources = ev
            elif isinstance(ev, Query):
                query = ev
            elif isinstance(ev, Citations):
                citations = ev.citations
            elif isinstance(ev, Finished):
                finished = ev
            ev = await anext(rest, None)
        message: dict[str, Any] = {"role": "assistant", "content": "".join(text)}
        if reasoning:
            message["reasoning_content"] = "".join(reasoning)
        if calls:
            message["tool_calls"] = [calls[i] for i in sorted(calls)]
            message["content"] = message["content"] or None
        p = finished.payload() if finished else {}
        return JSONResponse(
            {
                "id": f"chatcmpl-{request_id[:24]}",
                "object": "chat.completion",
                "created": int(time.time()),
                "model": model_name,
                "choices": [{"index": 0, "message": message, "finish_reason": p.get("finish_reason") or "stop"}],
                "usage": {k: p.get(k, 0) for k in ("prompt_tokens", "completion_tokens", "total_tokens")},
                "sources": sources.sources if sources else [],
                "sources_note": sources.note if sources else None,
                "query": query.payload() if query else None,
                "citations": citations,
                "x_usage": p,
            },
            headers={"x-request-id": request_id},
        )

    @app.post("/v1/retrieve")
    async def retrieve(req: RetrieveRequest, request: Request) -> JSONResponse:
        """The retrieval pipeline alone (rewrite -> search -> rerank -> top k), as the chat runs it."""
        request_id = _request_id(request)
        svc = service()
        k = svc.deps.settings.rag_top_k if req.top_k is None else req.top_k
        found = await svc.retrieval(req.conversation(), k, req.filter, req)
        u = found.usage
        return JSONResponse(
            {
                "query": found.query.query,
                "original_query": found.query.original,
                "rewritten": found.query.rewritten,
                "sources": found.sources(),
                "note": found.note,
                "notices": found.notices,
                "usage": {
                    **u.payload(),
                    "estimated_cost_usd": round(u.cost_usd, 8),
                    "latency_ms": found.latency_ms,
                },
            },
            headers={"x-request-id": request_id},
        )

    if chat_settings.origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=chat_settings.origins,
            allow_methods=["GET", "POST"],
            allow_headers=["authorization", "content-type", "x-api-key"],
        )
    token = token_source(
        chat_settings.chat_api_token.get_secret_value() if chat_settings.chat_api_token else None,
        chat_settings.chat_token_secret_arn,
        max_age=300,
    )
    app.add_middleware(
        Guard,
        mode=chat_settings.chat_auth_mode,
        token=token,
        max_body_bytes=chat_settings.max_body_bytes,
        body_timeout_seconds=chat_settings.body_timeout_seconds,
        loopback_only=loopback_only,
    )
    page.mount(app)  # the browser page (CHAT_PAGE=true), in front of the Guard: the page is where the token goes in
    hooks = snapstart.HookPaths.from_env()
    if hooks.before or hooks.after:  # the adapter's SnapStart calls carry no token: in front of the Guard
        token_secret = getattr(token, "__self__", None)  # the CachedSecret behind a Secrets Manager token

        async def before() -> None:
            await snapstart.checkpoint(service().deps, [token_secret] if token_secret else [])

        async def after() -> None:
            await snapstart.restore(service().deps, warm_up)

        app.add_middleware(snapstart.SnapStartHooks, paths=hooks, before=before, after=after)
    return app


app: FastAPI  # created on first access by __getattr__ below


def __getattr__(name: str) -> Any:
    """``chat.app:app`` for uvicorn, built on first access so importing the module stays cheap."""
    if name == "app":
        global app
        app = create_app()
        return app
    raise AttributeError(name)
