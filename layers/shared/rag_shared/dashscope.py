"""DashScope client over its OpenAI-compatible API, with httpx + orjson.

Every call (embeddings, non-streaming chat, the chat stream) is sent with the openai SDK's retry
policy, kept here: exponential backoff with jitter on 408/409/429/5xx, timeouts and connection
errors, honouring ``Retry-After``; other 4xx are not retried. The SDK itself is not used: its
pydantic models per response and per stream chunk were ~29% of a stream's CPU (issue 14), its
import ~0.35 s of a cold start, and with its own httpx fork it was ~35 MB of the layer (with
bytecode), most of the 50 MB budget. What is left after the retries is mapped to the exception
classes in :mod:`rag_shared.errors`, raised from the HTTP error that caused it. A 401 makes the
client re-read the key once (a rotated secret) before giving up.
"""

from __future__ import annotations

import asyncio
import email.utils
import hashlib
import itertools
import random
import ssl
import threading
import time
from collections.abc import AsyncGenerator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import httpx
import orjson
from httpx_sse import EventSource, SSEError
from pydantic import BaseModel, Field

from rag_shared.config import EmbeddingModel, GeneratorModel, Region, Settings
from rag_shared.errors import (
    AccessDeniedError,
    BadRequestError,
    ContentModerationError,
    ContextLengthExceededError,
    DashScopeError,
    InvalidApiKeyError,
    ModelNotFoundError,
    RagError,
    ServiceUnavailableError,
    ThrottledError,
)
from rag_shared.secrets import ApiKeyProvider
from rag_shared.usage import Usage, chat_usage, embedding_usage

WORKSPACE_HEADER = "X-DashScope-WorkSpace"


Message = dict[str, Any]


# --- error mapping (pure) -----------------------------------------------------------------------


def _error_fields(body: object) -> tuple[str, str]:
    """(code, message) from DashScope's error body, compatible (``{"error": {...}}``) or native shape."""
    if isinstance(body, dict):
        inner = body.get("error", body)
        if isinstance(inner, dict):
            return str(inner.get("code") or inner.get("type") or ""), str(inner.get("message") or "")
        if isinstance(inner, str):
            return str(body.get("code") or ""), inner
    return "", ""


_CONTEXT_MARKERS = ("range of input length", "maximum context length", "input length", "too long")


def map_error(exc: Exception, *, region: Region | None = None, key_source: str = "") -> RagError:
    """Turn a transport or HTTP failure into one of ours, with a message a user can act on."""
    if isinstance(exc, RagError):
        return exc
    if isinstance(exc, httpx.TimeoutException):
        return ServiceUnavailableError("DashScope timed out after retries")
    if isinstance(exc, httpx.HTTPStatusError):
        response = exc.response
        raw = response.content if response.is_closed else b""
        code, message = _error_fields(_loads_or_none(raw))
        return map_status(
            response.status_code,
            code,
            message or raw[:200].decode("utf-8", "replace"),
            region=region,
            key_source=key_source,
            request_id=_request_id(response),
        )
    if isinstance(exc, httpx.TransportError):
        return ServiceUnavailableError("could not reach DashScope after retries")
    return ServiceUnavailableError(f"DashScope stream interrupted ({type(exc).__name__})")


def _request_id(response: httpx.Response) -> str | None:
    rid = response.headers.get("x-request-id") or response.headers.get("x-dashscope-request-id")
    return str(rid) if rid else None


def transport_failure(exc: httpx.TransportError, service: str = "DashScope") -> RagError:
    """A call that got no answer (timeout, refused or dropped connection), raised from its cause."""
    if isinstance(exc, httpx.TimeoutException):
        failure: RagError = ServiceUnavailableError(f"{service} timed out after retries")
    else:
        failure = ServiceUnavailableError(f"could not reach {service} after retries")
    failure.__cause__ = exc
    return failure


def status_failure(response: httpx.Response, region: Region | None, key_source: str) -> RagError:
    """Our error for a non-200 answer, raised from the HTTP error, which keeps the status and
    ``Retry-After`` for the embedder's pacer (:func:`rag_shared.embeddings.retry_after_of`)."""
    body = _loads_or_none(response.content)
    code, message = _error_fields(body)
    request_id = _request_id(response) or (
        str(body["request_id"]) if isinstance(body, dict) and body.get("request_id") else None
    )
    failure = map_status(
        response.status_code,
        code,
        message or response.content[:200].decode("utf-8", "replace"),
        region=region,
        key_source=key_source,
        request_id=request_id,
    )
    failure.__cause__ = httpx.HTTPStatusError(
        f"DashScope answered {response.status_code}", request=response.request, response=response
    )
    return failure


@dataclass
class Retries:
    """The openai SDK's retry policy for one call (its ``_should_retry``): timeouts, connection
    errors, 408/409/429/5xx, up to ``limit`` retries after the first try, waiting as
    :func:`retry_delay` says; any other answer is final. A 401 with a key from Secrets Manager is
    tried again at once, once, with the key read again (a rotated secret), and not counted."""

    keys: ApiKeyProvider
    limit: int
    attempt: int = 0
    reread: bool = field(init=False)

    def __post_init__(self) -> None:
        self.reread = self.keys.source != "DASHSCOPE_API_KEY"

    def delay(self, failure: RagError, answer: httpx.Response | None) -> float:
        """Seconds to wait before the next try of a call that failed with ``failure`` (``answer``:
        the HTTP answer, None if there was none), or raise ``failure``."""
        if answer is not None:
            if answer.status_code == 401 and self.reread:
                self.reread = False
                self.keys.invalidate()
                return 0.0
            if answer.status_code not in _RETRY_STATUSES:
                raise failure
        if self.attempt >= self.limit:
            raise failure
        seconds = retry_delay(self.attempt, answer.headers if answer is not None else {})
        self.attempt += 1
        return seconds


def map_status(
    status: int,
    code: str,
    message: str,
    *,
    region: Region | None = None,
    key_source: str = "",
    request_id: str | None = None,
) -> RagError:
    """Map DashScope's (HTTP status, error code, message) to one of our errors (pure)."""
    lowered = f"{code} {message}".lower()
    detail = f"{code}: {message}" if code else message

    if status == 401 or "invalidapikey" in lowered or "invalid_api_key" in lowered:
        where = f" (key from {key_source})" if key_source else ""
        hint = (
            f" A key works only in its own region: DASHSCOPE_REGION is {region.value}; a mainland-China key "
            "needs cn-beijing, an international key ap-southeast-1 (Singapore)."
            if region
            else ""
        )
        return InvalidApiKeyError(f"DashScope rejected the API key{where}.{hint}", request_id=request_id)
    if "data_inspection_failed" in lowered or "datainspectionfailed" in lowered:
        return ContentModerationError(
            f"DashScope content moderation flagged the input or output ({detail})", request_id=request_id
        )
    if status == 404 or "modelnotfound" in lowered or "model_not_found" in lowered or "model_not_supported" in lowered:
        return ModelNotFoundError(f"model not found or not supported here ({detail})", request_id=request_id)
    if status == 403:
        return AccessDeniedError(
            f"DashScope denied access ({detail}); check the model is activated and the account is not overdue",
            request_id=request_id,
        )
    if status == 429:
        return ThrottledError(f"DashScope throttled the request after retries ({detail})", request_id=request_id)
    if status >= 500:
        return ServiceUnavailableError(f"DashScope failed after retries ({status} {detail})", request_id=request_id)
    if status == 400 and any(m in lowered for m in _CONTEXT_MARKERS):
        return ContextLengthExceededError(f"prompt too long for the model ({detail})", request_id=request_id)
    return BadRequestError(f"DashScope rejected the request ({status} {detail})", request_id=request_id)


def status_of_code(code: str) -> int:
    """The HTTP status DashScope gives an error code (error-code page, see shared/REFERENCE.md), for
    an error that arrives *inside* a 200 stream, where there is no status to read."""
    c = code.lower()
    if "throttl" in c or "quota" in c:
        return 429
    if "invalidapikey" in c or "invalid_api_key" in c:
        return 401
    if "accessdenied" in c or "arrearage" in c:
        return 403
    if "notfound" in c or "not_found" in c or "not_supported" in c:
        return 404
    if "invalidparameter" in c or "invalid_parameter" in c or "data_inspection" in c or "invalid_request" in c:
        return 400
    return 500  # InternalError, ServiceUnavailable, RequestTimeOut, anything unknown: transient


# --- request shaping (pure) ---------------------------------------------------------------------


class ChatParams(BaseModel):
    """Parameters of one call; ``None`` means the model's (catalog or DashScope) default.

    Ranges are DashScope's, from Model Studio's "OpenAI Chat" API reference
    (alibabacloud.com/help/en/model-studio/qwen-api-via-openai-chat-completions, checked 2026-11):
    temperature [0, 2), top_p (0, 1], presence_penalty [-2, 2], seed [0, 2^31 - 1]; ``stop`` a
    string or a list of strings; ``response_format`` ``text``/``json_object``/``json_schema``;
    ``tools`` (functions), ``tool_choice`` (``auto``, ``none`` or one named function) and
    ``parallel_tool_calls`` in OpenAI's shape.
    """

    temperature: float | None = Field(None, ge=0, lt=2)
    top_p: float | None = Field(None, gt=0, le=1)
    max_tokens: int | None = Field(None, ge=1)
    enable_thinking: bool | None = None
    presence_penalty: float | None = Field(None, ge=-2, le=2)
    seed: int | None = Field(None, ge=0, le=2**31 - 1)
    stop: str | list[str] | None = None
    response_format: dict[str, Any] | None = None
    tools: list[dict[str, Any]] | None = None
    tool_choice: str | dict[str, Any] | None = None
    parallel_tool_calls: bool | None = None


_FORWARDED = ("presence_penalty", "seed", "stop", "response_format", "tools", "tool_choice", "parallel_tool_calls")


def chat_request(
    messages: Sequence[Message], model: GeneratorModel, params: ChatParams, *, stream: bool
) -> dict[str, Any]:
    """Keyword arguments for ``chat.completions.create``."""
    kwargs: dict[str, Any] = {
        "model": model.name,
        "messages": list(messages),
        "temperature": params.temperature if params.temperature is not None else model.temperature,
        "top_p": params.top_p if params.top_p is not None else model.top_p,
        "max_tokens": min(params.max_tokens or model.max_tokens, model.max_output_tokens),
        "stream": stream,
    }
    for name in _FORWARDED:
        value = getattr(params, name)
        if value is not None:
            kwargs[name] = value
    if stream:
        kwargs["stream_options"] = {"include_usage": True}
    if model.thinking == "optional":
        # DashScope rejects enable_thinking=true on non-streaming calls.
        kwargs["extra_body"] = {"enable_thinking": bool(params.enable_thinking) and stream}
    return kwargs


def chat_body(
    messages: Sequence[Message], model: GeneratorModel, params: ChatParams, *, stream: bool = True
) -> dict[str, Any]:
    """The JSON body of a call (``extra_body`` merged in, as the openai SDK does)."""
    kwargs = chat_request(messages, model, params, stream=stream)
    return {**kwargs, **kwargs.pop("extra_body", {})}


def embedding_request(texts: Sequence[str], model: EmbeddingModel, dimensions: int) -> dict[str, Any]:
    kwargs: dict[str, Any] = {"model": model.name, "input": list(texts), "encoding_format": "float"}
    if len(model.dimensions) > 1:  # v1/v2 have one fixed size and do not take the parameter
        kwargs["dimensions"] = dimensions
    return kwargs


# --- results ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TextDelta:
    text: str


@dataclass(frozen=True)
class ReasoningDelta:
    """A piece of a thinking model's reasoning, kept apart from the answer."""

    text: str


@dataclass(frozen=True)
class StreamEnd:
    usage: Usage
    finish_reason: str | None
    request_id: str | None = None


@dataclass(frozen=True)
class ToolCallDelta:
    """Pieces of tool calls, in OpenAI's (and DashScope's) wire shape: ``[{"index", "id", "type",
    "function": {"name", "arguments"}}]``; later pieces of a call carry only its ``index`` and more
    ``arguments`` text."""

    calls: tuple[dict[str, Any], ...]


StreamEvent = TextDelta | ReasoningDelta | ToolCallDelta | StreamEnd


@dataclass(frozen=True)
class Completion:
    text: str
    reasoning: str
    usage: Usage
    finish_reason: str | None


@dataclass(frozen=True)
class EmbeddingBatch:
    vectors: list[list[float]]
    usage: Usage = field(default_factory=Usage)


# --- the client ---------------------------------------------------------------------------------


# The openai SDK's pool: httpx's default keeps 20 idle connections, and httpcore closes idle ones
# as soon as the pool holds more than that in all, so 50 concurrent streams would connect again and
# again (measured: connect + close ~8% of the chat process's CPU at 50 streams).
POOL_LIMITS = httpx.Limits(max_connections=1000, max_keepalive_connections=100)
# httpcore walks every connection of a pool, with a readability check (poll + getpeername) on each
# idle one, whenever a request is queued or a response closed (httpcore 1.0,
# _async/connection_pool.py, _assign_requests_to_connections): the cost per request grows with the
# pool. At 50 concurrent streams (~100 connections) that walk was ~17% of the chat process's CPU.
# The async calls therefore take turns over POOL_SHARDS smaller pools (one TLS context shared).
POOL_SHARDS = 8
SHARD_LIMITS = httpx.Limits(max_connections=1000 // POOL_SHARDS, max_keepalive_connections=32)


class DashScopeClient:
    """Sync and async access to chat and embeddings. One instance per process, shared by threads."""

    def __init__(
        self,
        settings: Settings,
        keys: ApiKeyProvider,
        *,
        max_retries: int | None = None,
        timeout: float | None = None,
    ) -> None:
        self.settings = settings
        self.keys = keys
        self._max_retries = settings.dashscope_max_retries if max_retries is None else max_retries
        self._timeout = timeout or settings.dashscope_timeout_seconds
        self._lock = threading.Lock()
        self._sync: tuple[str, httpx.Client] | None = None
        self._async: tuple[str, asyncio.AbstractEventLoop | None, list[httpx.AsyncClient | None]] | None = None
        self._turn = itertools.count()
        self._tls: ssl.SSLContext | None = None  # built once (loading the CA bundle takes ms), shared

    @staticmethod
    def _fingerprint(key: str) -> str:
        return hashlib.sha256(key.encode()).hexdigest()

    def _client_args(self, key: str) -> dict[str, Any]:
        headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
        if self.settings.dashscope_workspace_id:
            headers[WORKSPACE_HEADER] = self.settings.dashscope_workspace_id
        return {
            "base_url": self.settings.base_url,
            "headers": headers,
            # the openai SDK's defaults: a long read timeout, a short connect timeout, a big pool
            "timeout": httpx.Timeout(self._timeout, connect=min(self._timeout, 5.0)),
            "limits": POOL_LIMITS,
        }

    def sync_client(self) -> httpx.Client:
        """The pooled client for the current key (thread-safe; rebuilt when the key changes)."""
        key = self.keys.get().get_secret_value()
        fp = self._fingerprint(key)
        with self._lock:
            if self._sync is None or self._sync[0] != fp:
                self._sync = (fp, httpx.Client(**self._client_args(key)))
            return self._sync[1]

    def async_client(self) -> httpx.AsyncClient:
        """A pooled client for the current key and event loop (connections belong to their loop),
        the next of :data:`POOL_SHARDS` in turn. Outside a running loop (warming up at start) it is
        built for the loop that runs next."""
        key = self.keys.get().get_secret_value()
        fp = self._fingerprint(key)
        try:
            loop: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
        except RuntimeError:
            loop = None
        with self._lock:
            cached = self._async
            if cached is None or cached[0] != fp or (cached[1] is not None and cached[1] is not loop):
                cached = self._async = (fp, loop, [None] * POOL_SHARDS)
            elif cached[1] is None and loop is not None:  # built while warming up: this loop adopts it
                cached = self._async = (fp, loop, cached[2])
            shards = cached[2]
            turn = next(self._turn) % len(shards)
            client = shards[turn]
            if client is None:
                if self._tls is None:
                    self._tls = httpx.create_ssl_context()
                client = shards[turn] = httpx.AsyncClient(
                    **{**self._client_args(key), "limits": SHARD_LIMITS}, verify=self._tls
                )
            return client

    async def aclose(self) -> None:
        """Close the pooled connections; the next call opens new ones (with the key read then).
        For SnapStart's before-checkpoint hook: a connection kept in a snapshot is dead once restored."""
        with self._lock:
            sync, self._sync = self._sync, None
            cached, self._async = self._async, None
        if sync is not None:
            sync[1].close()
        if cached is not None:
            for shard in cached[2]:
                if shard is not None:
                    await shard.aclose()

    def _post(self, path: str, body: dict[str, Any], *, max_retries: int | None = None) -> bytes:
        """POST JSON and return the 200 body, retrying as the SDK does."""
        content = orjson.dumps(body)
        retries = Retries(self.keys, self._max_retries if max_retries is None else max_retries)
        while True:
            answer: httpx.Response | None = None
            try:
                answer = self.sync_client().post(path, content=content)
            except httpx.TransportError as exc:
                failure = transport_failure(exc)
            else:
                if answer.status_code == 200:
                    return answer.content
                failure = status_failure(answer, self.settings.region, self.keys.source)
            time.sleep(retries.delay(failure, answer))

    async def _send(
        self, path: str, body: dict[str, Any], *, stream: bool = False, max_retries: int | None = None
    ) -> httpx.Response:
        """POST JSON and return the 200 response (open, when ``stream``), retrying until then."""
        content = orjson.dumps(body)
        retries = Retries(self.keys, self._max_retries if max_retries is None else max_retries)
        accept = {"Accept": "text/event-stream"} if stream else {}
        while True:
            answer: httpx.Response | None = None
            client = self.async_client()
            try:
                answer = await client.send(
                    client.build_request("POST", path, content=content, headers=accept), stream=stream
                )
            except httpx.TransportError as exc:
                failure = transport_failure(exc)
            else:
                if answer.status_code == 200:
                    return answer
                if stream:
                    await answer.aread()
                    await answer.aclose()
                failure = status_failure(answer, self.settings.region, self.keys.source)
            await asyncio.sleep(retries.delay(failure, answer))

    # embeddings: the body is parsed with orjson (the SDK's models for 25 x 1536 floats cost ~9 ms
    # a call, orjson ~1.5 ms; with 8 calls in flight that CPU, serialised by the GIL, was the
    # indexer's bottleneck)

    def embed_batch(self, texts: Sequence[str], model: EmbeddingModel, dimensions: int) -> EmbeddingBatch:
        raw = self._post("/embeddings", embedding_request(texts, model, dimensions))
        return _embedding_batch(_embedding_json(raw, model), model, len(texts))

    async def aembed_batch(self, texts: Sequence[str], model: EmbeddingModel, dimensions: int) -> EmbeddingBatch:
        response = await self._send("/embeddings", embedding_request(texts, model, dimensions))
        return _embedding_batch(_embedding_json(response.content, model), model, len(texts))

    # chat

    def complete(self, messages: Sequence[Message], model: GeneratorModel, params: ChatParams) -> Completion:
        raw = self._post("/chat/completions", chat_body(messages, model, params, stream=False))
        return _completion(_loads_or_none(raw), model)

    async def acomplete(
        self,
        messages: Sequence[Message],
        model: GeneratorModel,
        params: ChatParams,
        *,
        call_timeout: float | None = None,
        max_retries: int | None = None,
    ) -> Completion:
        """One non-streaming answer (short helper calls such as rewriting a follow-up question):
        ``call_timeout`` (seconds for the whole call, retries included) and ``max_retries`` bound it
        tighter than the client's defaults."""
        call = self._send(
            "/chat/completions", chat_body(messages, model, params, stream=False), max_retries=max_retries
        )
        try:
            response = await (asyncio.wait_for(call, call_timeout) if call_timeout is not None else call)
        except TimeoutError as exc:
            raise ServiceUnavailableError(f"DashScope did not answer within {call_timeout} s") from exc
        return _completion(_loads_or_none(response.content), model)

    # the chat stream

    async def _open_stream(self, body: dict[str, Any]) -> httpx.Response:
        return await self._send("/chat/completions", body, stream=True)

    async def stream(
        self, messages: Sequence[Message], model: GeneratorModel, params: ChatParams
    ) -> AsyncGenerator[StreamEvent]:
        """Yield deltas as DashScope sends them, then one :class:`StreamEnd` with the usage.

        Errors before the first byte are retried (as the SDK would); an interruption after it cannot
        be retried without repeating text: a dropped connection is a :class:`ServiceUnavailableError`,
        an error event inside the stream is mapped by its code (moderation stays a moderation
        error, throttling a 429). Closing the generator closes the upstream connection, which stops
        DashScope generating.
        """
        response = await self._open_stream(chat_body(messages, model, params))
        usage: Usage | None = None
        finish: str | None = None
        request_id: str | None = None
        try:
            if "text/event-stream" not in response.headers.get("content-type", ""):
                raw = await response.aread()  # a 200 that is not a stream: an error body, or a proxy's page
                code, message = _error_fields(_loads_or_none(raw))
                raise map_status(status_of_code(code), code, message or "DashScope answered without a stream")
            async for sse in EventSource(response).aiter_sse():
                if sse.data == "[DONE]":
                    break
                chunk = _chunk(sse.data)
                if sse.event == "error" or "error" in chunk or ("code" in chunk and "choices" not in chunk):
                    code, message = _error_fields(chunk)
                    raise map_status(
                        status_of_code(code),
                        code,
                        message,
                        region=self.settings.region,
                        key_source=self.keys.source,
                        request_id=chunk.get("request_id") or request_id,
                    )
                request_id = request_id or chunk.get("id")
                u = chunk.get("usage")
                if u:
                    usage = chat_usage(model, int(u.get("prompt_tokens") or 0), int(u.get("completion_tokens") or 0))
                choices = chunk.get("choices") or ()
                if choices:
                    choice = choices[0]
                    delta = choice.get("delta") or {}
                    reasoning = delta.get("reasoning_content")
                    if reasoning:
                        yield ReasoningDelta(reasoning)
                    content = delta.get("content")
                    if content:
                        yield TextDelta(content)
                    calls = delta.get("tool_calls")
                    if calls:
                        yield ToolCallDelta(tuple(calls))
                    finish = choice.get("finish_reason") or finish
        except httpx.HTTPError as exc:  # dropped connection, read timeout mid-stream
            raise ServiceUnavailableError(f"DashScope stream interrupted ({type(exc).__name__})") from None
        except SSEError as exc:
            raise DashScopeError(f"DashScope sent a malformed stream ({exc})") from None
        finally:
            await response.aclose()
        yield StreamEnd(usage or Usage(calls=1), finish, request_id)


# --- retries and parsing of the stream (pure) ---------------------------------------------------

# What the openai SDK retries (its _should_retry): timeouts, conflicts, throttling, server errors.
_RETRY_STATUSES = frozenset({408, 409, 429, 500, 502, 503, 504})
INITIAL_RETRY_DELAY, MAX_RETRY_DELAY = 0.5, 8.0  # the SDK's values


def retry_delay(attempt: int, headers: Mapping[str, str], *, now: float | None = None) -> float:
    """Seconds before retry ``attempt`` (0-based): the server's ``retry-after-ms``/``Retry-After``
    (seconds or an HTTP date) when it gives one up to 60 s, else the SDK's exponential backoff
    (0.5 s doubling, at most 8 s) less up to 25% jitter."""
    for name, scale in (("retry-after-ms", 0.001), ("retry-after", 1.0)):
        value = headers.get(name)
        if value is None:
            continue
        try:
            seconds = float(value) * scale
        except ValueError:
            parsed = email.utils.parsedate_tz(value)
            if parsed is None:
                continue
            seconds = email.utils.mktime_tz(parsed) - (time.time() if now is None else now)
        if 0 <= seconds <= 60:
            return seconds
    backoff = min(INITIAL_RETRY_DELAY * 2.0**attempt, MAX_RETRY_DELAY)
    return backoff * (1 - 0.25 * random.random())  # noqa: S311 - jitter, not cryptography


def _loads_or_none(raw: bytes) -> Any:
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None


def _chunk(data: str) -> dict[str, Any]:
    """One stream chunk; a chunk that is not a JSON object is DashScope's fault, reported as such."""
    try:
        chunk = orjson.loads(data)
    except orjson.JSONDecodeError:
        raise DashScopeError("DashScope sent a stream chunk that is not valid JSON") from None
    if not isinstance(chunk, dict):
        raise DashScopeError("DashScope sent a stream chunk of unexpected shape")
    return chunk


def _embedding_json(raw: bytes, model: EmbeddingModel) -> Any:
    """The body, or a :class:`DashScopeError` (a JSON 502 for the chat API, a retried failure for the
    indexer) when a 200 carries malformed JSON, NaN or Infinity (orjson, like JSON, refuses both)."""
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise DashScopeError(f"{model.name} returned an embeddings response that is not valid JSON") from None


def _embedding_batch(body: Any, model: EmbeddingModel, expected: int) -> EmbeddingBatch:
    """Vectors in input order from an OpenAI-shaped embeddings body."""
    try:
        data = sorted(body["data"], key=lambda d: d["index"])
        vectors = [d["embedding"] for d in data]
    except (KeyError, TypeError):
        raise DashScopeError(f"{model.name} returned an embeddings response of unexpected shape") from None
    if len(vectors) != expected:
        raise DashScopeError(f"{model.name} returned {len(vectors)} vectors for {expected} texts")
    tokens = int((body.get("usage") or {}).get("total_tokens") or 0)
    return EmbeddingBatch(vectors, embedding_usage(model, tokens))


def _completion(body: Any, model: GeneratorModel) -> Completion:
    """A non-streaming chat answer from its OpenAI-shaped body."""
    try:
        choice = body["choices"][0]
        message = choice.get("message") or {}
    except (KeyError, IndexError, TypeError):
        raise DashScopeError(f"{model.name} returned a chat response of unexpected shape") from None
    u = body.get("usage") or {}
    usage = (
        chat_usage(model, int(u.get("prompt_tokens") or 0), int(u.get("completion_tokens") or 0))
        if u
        else Usage(calls=1)
    )
    reasoning = message.get("reasoning_content") or ""
    return Completion(message.get("content") or "", reasoning, usage, choice.get("finish_reason"))
