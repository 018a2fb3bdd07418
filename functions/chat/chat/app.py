"""The chat function: a FastAPI app streamed through the AWS Lambda Web Adapter.

On Lambda, ``run.sh`` starts uvicorn and the adapter (``AWS_LWA_INVOKE_MODE=response_stream``)
relays each function URL request to it and streams the response back as it is written. Locally
the same app runs under uvicorn directly.

Endpoints: ``POST /chat/completions/stream`` (Server-Sent Events: ``sources``, ``notice``,
``delta``, ``reasoning``, ``usage``, ``error``, ``done``); ``POST /v1/chat/completions``
(OpenAI-compatible, streaming or not); ``GET /v1/models``; ``GET /health``.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

from aws_lambda_powertools import Logger
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import JSONResponse, StreamingResponse
from rag_shared.config import load_catalog, load_settings
from rag_shared.dashscope import DashScopeClient
from rag_shared.embeddings import Embedder
from rag_shared.errors import ConfigError, RagError
from rag_shared.secrets import ApiKeyProvider
from rag_shared.store import VectorStore
from starlette.exceptions import HTTPException as StarletteHTTPException

from chat import page
from chat.guard import Guard, token_source
from chat.models import ChatRequest, OpenAIChatRequest
from chat.service import ChatDeps, ChatEvent, ChatService, Delta, Finished, Notice, Reasoning, Sources
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
    client = DashScopeClient(settings, ApiKeyProvider.from_settings(settings))
    embedder = Embedder(client, settings.embedder, settings.dimensions)
    return ChatDeps(settings, client, embedder, VectorStore.from_settings(settings), chat_settings.system_prompt)


def _request_id(request: Request) -> str:
    context = request.headers.get("x-amzn-request-context")
    if context:
        try:
            return str(json.loads(context)["requestId"])
        except (ValueError, KeyError, TypeError):
            pass
    return request.headers.get("x-request-id") or uuid.uuid4().hex


def error_json(
    status: int, code: str, message: str, etype: str = "invalid_request_error", request_id: str | None = None
) -> JSONResponse:
    headers = {"x-request-id": request_id} if request_id else None
    return JSONResponse(
        {"error": {"message": message, "type": etype, "code": code, "param": None}}, status, headers=headers
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


def sse(event: str, data: dict[str, Any]) -> bytes:
    return f"event: {event}\ndata: {json.dumps(data, ensure_ascii=False)}\n\n".encode()


def _error_payload(exc: BaseException, request_id: str) -> dict[str, Any]:
    if isinstance(exc, RagError):
        return {"code": exc.code, "message": str(exc), "retryable": exc.retryable, "request_id": request_id}
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
                yield sse("delta", {"text": ev.text})
            elif isinstance(ev, Reasoning):
                yield sse("reasoning", {"text": ev.text})
            elif isinstance(ev, Sources):
                yield sse("sources", {"sources": ev.sources, "note": ev.note})
            elif isinstance(ev, Notice):
                yield sse("notice", {"message": ev.message})
            elif isinstance(ev, Finished):
                yield sse("usage", ev.payload())
    except Exception as exc:
        yield sse("error", _error_payload(exc, request_id))
    yield sse("done", {"request_id": request_id})


async def openai_sse(
    first: ChatEvent, rest: AsyncIterator[ChatEvent], model: str, include_usage: bool, request_id: str
) -> AsyncIterator[bytes]:
    """OpenAI ``chat.completion.chunk`` frames; sources ride on the first chunk as an extra field."""
    cid = f"chatcmpl-{request_id[:24]}"
    created = int(time.time())

    def chunk(delta: dict[str, Any], finish: str | None = None, **extra: Any) -> bytes:
        body = {
            "id": cid,
            "object": "chat.completion.chunk",
            "created": created,
            "model": model,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
            **extra,
        }
        return f"data: {json.dumps(body, ensure_ascii=False)}\n\n".encode()

    try:
        async for ev in _prepend(first, rest):
            if isinstance(ev, Sources):
                yield chunk({"role": "assistant", "content": ""}, sources=ev.sources, sources_note=ev.note)
            elif isinstance(ev, Delta):
                yield chunk({"content": ev.text})
            elif isinstance(ev, Reasoning):
                yield chunk({"reasoning_content": ev.text})
            elif isinstance(ev, Finished):
                yield chunk({}, ev.finish_reason or "stop")
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
                    yield f"data: {json.dumps(tail)}\n\n".encode()
    except Exception as exc:
        err = _error_payload(exc, request_id)
        body = {"error": {"message": err["message"], "type": "api_error", "code": err["code"]}}
        yield f"data: {json.dumps(body)}\n\n".encode()
    yield b"data: [DONE]\n\n"


def warm_up(deps: ChatDeps) -> None:
    """Pay for the openai SDK import (~0.35 s) and the key lookup while the app starts, not in the
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

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        built = deps if isinstance(deps, ChatDeps) else (deps or (lambda: build_deps(chat_settings)))()
        state["service"] = ChatService(built)
        await asyncio.to_thread(warm_up, built)
        logger.info("chat ready", extra={"model": built.settings.generator.name, "auth": chat_settings.chat_auth_mode})
        yield

    app = FastAPI(title="Qwen RAG chat", version="0.1.0", lifespan=lifespan)

    def service() -> ChatService:
        return state["service"]

    @app.exception_handler(RequestValidationError)
    async def on_validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        status, message = _validation_message(exc)
        return error_json(status, "invalid_request", message)

    @app.exception_handler(StarletteHTTPException)
    async def on_http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = "body_too_large" if exc.status_code == 413 else "not_found" if exc.status_code == 404 else "http_error"
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

    async def start(req: ChatRequest, request_id: str) -> tuple[ChatEvent, AsyncGenerator[ChatEvent]]:
        """Run up to the model's first event; errors so far become HTTP errors (see service)."""
        stream = service().stream(req, request_id=request_id)
        try:
            first = await anext(stream)
        except BaseException:
            await stream.aclose()
            raise
        return first, stream

    @app.post("/chat/completions/stream")
    async def chat_stream(req: ChatRequest, request: Request) -> StreamingResponse:
        request_id = _request_id(request)
        first, rest = await start(req, request_id)
        return StreamingResponse(
            native_sse(first, rest, request_id),
            media_type="text/event-stream",
            headers={**SSE_HEADERS, "x-request-id": request_id},
        )

    @app.post("/v1/chat/completions", response_model=None)
    async def openai_chat(req: OpenAIChatRequest, request: Request) -> StreamingResponse | JSONResponse:
        request_id = _request_id(request)
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
        ev: ChatEvent | None = first
        while ev is not None:
            if isinstance(ev, Delta):
                text.append(ev.text)
            elif isinstance(ev, Reasoning):
                reasoning.append(ev.text)
            elif isinstance(ev, Sources):
                sources = ev
            elif isinstance(ev, Finished):
                finished = ev
            ev = await anext(rest, None)
        message: dict[str, Any] = {"role": "assistant", "content": "".join(text)}
        if reasoning:
            message["reasoning_content"] = "".join(reasoning)
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
                "x_usage": p,
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
        Guard, mode=chat_settings.chat_auth_mode, token=token, max_body_bytes=chat_settings.max_body_bytes
    )
    page.mount(app)  # the browser page (CHAT_PAGE=true), in front of the Guard: the page is where the token goes in
    return app


app: FastAPI  # created on first access by __getattr__ below


def __getattr__(name: str) -> Any:
    """``chat.app:app`` for uvicorn, built on first access so importing the module stays cheap."""
    if name == "app":
        global app
        app = create_app()
        return app
    raise AttributeError(name)
