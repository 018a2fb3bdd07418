"""DashScope client over its OpenAI-compatible API.

Embeddings and non-streaming chat go through the ``openai`` SDK, whose retries apply: exponential
backoff with jitter on 408/409/429/5xx, timeouts and connection errors, honouring ``Retry-After``;
other 4xx are not retried. The chat *stream* is read with httpx + httpx-sse + orjson: building
the SDK's pydantic models for every chunk was ~29% of a stream's CPU (issue 14); the same retry
policy is applied here before the first byte. What is left after the retries is mapped to the
exception classes in :mod:`rag_shared.errors`. A 401 makes the client re-read the key once (a
rotated secret) before giving up.
"""

from __future__ import annotations

import asyncio
import email.utils
import hashlib
import random
import threading
import time
from collections.abc import AsyncGenerator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from types import ModuleType
from typing import TYPE_CHECKING, Any, TypeVar

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

if TYPE_CHECKING:
    import openai

WORKSPACE_HEADER = "X-DashScope-WorkSpace"


def _sdk() -> ModuleType:
    """The openai SDK, imported on first use: it is ~0.35 s of the cold start, and deletes, replayed
    events, skipped files, health checks and refused requests never need it."""
    import openai

    return openai


T = TypeVar("T")

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
    """Turn an SDK exception into one of ours, with a message a user can act on."""
    if isinstance(exc, RagError):
        return exc
    openai = _sdk()
    request_id = getattr(exc, "request_id", None)
    if isinstance(exc, openai.APITimeoutError):
        return ServiceUnavailableError("DashScope timed out after retries", request_id=request_id)
    if isinstance(exc, openai.APIConnectionError):
        return ServiceUnavailableError("could not reach DashScope after retries", request_id=request_id)
    if not isinstance(exc, openai.APIStatusError):
        return ServiceUnavailableError(f"DashScope stream interrupted ({type(exc).__name__})")
    code, message = _error_fields(exc.body)
    return map_status(
        exc.status_code, code, message or exc.message, region=region, key_source=key_source, request_id=request_id
    )


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


def chat_body(messages: Sequence[Message], model: GeneratorModel, params: ChatParams) -> dict[str, Any]:
    """The JSON body of a streaming call (the SDK's ``extra_body`` merged in, as the SDK does)."""
    kwargs = chat_request(messages, model, params, stream=True)
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
        self._sync: tuple[str, openai.OpenAI] | None = None
        self._async: tuple[str, openai.AsyncOpenAI] | None = None
        self._http_client: tuple[str, asyncio.AbstractEventLoop, httpx.AsyncClient] | None = None

    def _client_args(self, key: str) -> dict[str, Any]:
        headers = {}
        if self.settings.dashscope_workspace_id:
            headers[WORKSPACE_HEADER] = self.settings.dashscope_workspace_id
        return {
            "api_key": key,
            "base_url": self.settings.base_url,
            "max_retries": self._max_retries,
            "timeout": self._timeout,
            "default_headers": headers,
        }

    @staticmethod
    def _fingerprint(key: str) -> str:
        return hashlib.sha256(key.encode()).hexdigest()

    def sync_client(self) -> openai.OpenAI:
        key = self.keys.get().get_secret_value()
        fp = self._fingerprint(key)
        with self._lock:
            if self._sync is None or self._sync[0] != fp:
                self._sync = (fp, _sdk().OpenAI(**self._client_args(key)))
            return self._sync[1]

    def async_client(self) -> openai.AsyncOpenAI:
        key = self.keys.get().get_secret_value()
        fp = self._fingerprint(key)
        with self._lock:
            if self._async is None or self._async[0] != fp:
                self._async = (fp, _sdk().AsyncOpenAI(**self._client_args(key)))
            return self._async[1]

    def _map(self, exc: Exception) -> RagError:
        return map_error(exc, region=self.settings.region, key_source=self.keys.source)

    def _after_failure(self, exc: Exception, attempt: int) -> None:
        """Return to try again: after a first 401 with a key from Secrets Manager, which may have
        been rotated (the next call re-reads it). Anything else is raised as one of our errors."""
        if isinstance(exc, _sdk().AuthenticationError) and attempt == 1 and self.keys.source != "DASHSCOPE_API_KEY":
            self.keys.invalidate()
            return
        raise self._map(exc) from None

    def _call(self, fn: Callable[[openai.OpenAI], T]) -> T:
        for attempt in (1, 2):
            try:
                return fn(self.sync_client())
            except _sdk().APIError as exc:
                self._after_failure(exc, attempt)
        raise AssertionError("unreachable")

    async def _acall(self, fn: Callable[[openai.AsyncOpenAI], Awaitable[T]]) -> T:
        for attempt in (1, 2):
            try:
                return await fn(self.async_client())
            except _sdk().APIError as exc:
                self._after_failure(exc, attempt)
        raise AssertionError("unreachable")

    # embeddings

    # The SDK sends the request (retries, error classes); the body is parsed with orjson: the
    # SDK's model parsing of 25 x 1536 floats cost several times json.loads (~9 ms; orjson ~1.5 ms),
    # and with 8 calls in flight that CPU, serialised by the GIL, was the indexer's bottleneck.

    def embed_batch(self, texts: Sequence[str], model: EmbeddingModel, dimensions: int) -> EmbeddingBatch:
        request = embedding_request(texts, model, dimensions)
        raw = self._call(lambda c: c.embeddings.with_raw_response.create(**request))
        return _embedding_batch(_embedding_json(raw.content, model), model, len(texts))

    async def aembed_batch(self, texts: Sequence[str], model: EmbeddingModel, dimensions: int) -> EmbeddingBatch:
        request = embedding_request(texts, model, dimensions)
        raw = await self._acall(lambda c: c.embeddings.with_raw_response.create(**request))
        return _embedding_batch(_embedding_json(raw.content, model), model, len(texts))

    # chat

    def complete(self, messages: Sequence[Message], model: GeneratorModel, params: ChatParams) -> Completion:
        request = chat_request(messages, model, params, stream=False)
        response = self._call(lambda c: c.chat.completions.create(**request))
        choice = response.choices[0]
        u = response.usage
        usage = chat_usage(model, u.prompt_tokens, u.completion_tokens) if u else Usage(calls=1)
        reasoning = (choice.message.model_extra or {}).get("reasoning_content") or ""
        return Completion(choice.message.content or "", reasoning, usage, choice.finish_reason)

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
        ``call_timeout`` and ``max_retries`` bound it tighter than the client's defaults."""
        request = chat_request(messages, model, params, stream=False)
        opts: dict[str, Any] = {}
        if call_timeout is not None:
            opts["timeout"] = call_timeout
        if max_retries is not None:
            opts["max_retries"] = max_retries
        response = await self._acall(lambda c: c.with_options(**opts).chat.completions.create(**request))
        choice = response.choices[0]
        u = response.usage
        usage = chat_usage(model, u.prompt_tokens, u.completion_tokens) if u else Usage(calls=1)
        reasoning = (choice.message.model_extra or {}).get("reasoning_content") or ""
        return Completion(choice.message.content or "", reasoning, usage, choice.finish_reason)

    # the chat stream, over httpx

    def _http(self, key: str) -> httpx.AsyncClient:
        """One pooled httpx client per key and event loop (connections belong to their loop)."""
        fp, loop = self._fingerprint(key), asyncio.get_running_loop()
        with self._lock:
            cached = self._http_client
            if cached is None or cached[0] != fp or cached[1] is not loop:
                headers = {"Authorization": f"Bearer {key}", "Accept": "text/event-stream"}
                if self.settings.dashscope_workspace_id:
                    headers[WORKSPACE_HEADER] = self.settings.dashscope_workspace_id
                client = httpx.AsyncClient(
                    base_url=self.settings.base_url,
                    headers=headers,
                    # the SDK's own defaults: a long read timeout, a short connect timeout, a big pool
                    timeout=httpx.Timeout(self._timeout, connect=min(self._timeout, 5.0)),
                    limits=httpx.Limits(max_connections=1000, max_keepalive_connections=100),
                )
                cached = self._http_client = (fp, loop, client)
            return cached[2]

    async def _open_stream(self, body: dict[str, Any]) -> httpx.Response:
        """POST the streaming call; retry like the SDK until the first byte (see :func:`retry_delay`)."""
        content = orjson.dumps(body)
        reread = self.keys.source != "DASHSCOPE_API_KEY"
        attempt = 0
        while True:
            key = self.keys.get().get_secret_value()
            client = self._http(key)
            failure: RagError
            delay_headers: Mapping[str, str] = {}
            try:
                response = await client.send(
                    client.build_request(
                        "POST", "/chat/completions", content=content, headers={"Content-Type": "application/json"}
                    ),
                    stream=True,
                )
            except httpx.TimeoutException:
                failure = ServiceUnavailableError("DashScope timed out after retries")
            except httpx.TransportError:
                failure = ServiceUnavailableError("could not reach DashScope after retries")
            else:
                if response.status_code == 200:
                    return response
                raw = await response.aread()
                await response.aclose()
                rid = response.headers.get("x-request-id") or response.headers.get("x-dashscope-request-id")
                code, message = _error_fields(_loads_or_none(raw))
                failure = map_status(
                    response.status_code,
                    code,
                    message or raw[:200].decode("utf-8", "replace"),
                    region=self.settings.region,
                    key_source=self.keys.source,
                    request_id=rid,
                )
                if response.status_code == 401 and reread:
                    reread = False  # a rotated secret: read it again, once
                    self.keys.invalidate()
                    continue
                if response.status_code not in _RETRY_STATUSES:
                    raise failure
                delay_headers = response.headers
            if attempt >= self._max_retries:
                raise failure
            await asyncio.sleep(retry_delay(attempt, delay_headers))
            attempt += 1

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
