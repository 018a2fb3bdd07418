"""DashScope client over its OpenAI-compatible API, through the ``openai`` SDK.

Retries are the SDK's own: exponential backoff with jitter on 408/409/429/5xx, timeouts and
connection errors, honouring ``Retry-After``; other 4xx are not retried. What is left after the
retries is mapped to the exception classes in :mod:`rag_shared.errors`. A 401 makes the client
re-read the key once (a rotated secret) before giving up.
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import AsyncGenerator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from types import ModuleType
from typing import TYPE_CHECKING, Any, TypeVar

import orjson
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

    status = exc.status_code
    code, message = _error_fields(exc.body)
    if not message:
        message = exc.message
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


# --- request shaping (pure) ---------------------------------------------------------------------


class ChatParams(BaseModel):
    """Sampling parameters of one call; ``None`` means the model's catalog default."""

    temperature: float | None = Field(None, ge=0, lt=2)
    top_p: float | None = Field(None, gt=0, le=1)
    max_tokens: int | None = Field(None, ge=1)
    enable_thinking: bool | None = None


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
    if stream:
        kwargs["stream_options"] = {"include_usage": True}
    if model.thinking == "optional":
        # DashScope rejects enable_thinking=true on non-streaming calls.
        kwargs["extra_body"] = {"enable_thinking": bool(params.enable_thinking) and stream}
    return kwargs


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


StreamEvent = TextDelta | ReasoningDelta | StreamEnd


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
        return _embedding_batch(orjson.loads(raw.content), model, len(texts))

    async def aembed_batch(self, texts: Sequence[str], model: EmbeddingModel, dimensions: int) -> EmbeddingBatch:
        request = embedding_request(texts, model, dimensions)
        raw = await self._acall(lambda c: c.embeddings.with_raw_response.create(**request))
        return _embedding_batch(orjson.loads(raw.content), model, len(texts))

    # chat

    def complete(self, messages: Sequence[Message], model: GeneratorModel, params: ChatParams) -> Completion:
        request = chat_request(messages, model, params, stream=False)
        response = self._call(lambda c: c.chat.completions.create(**request))
        choice = response.choices[0]
        u = response.usage
        usage = chat_usage(model, u.prompt_tokens, u.completion_tokens) if u else Usage(calls=1)
        reasoning = (choice.message.model_extra or {}).get("reasoning_content") or ""
        return Completion(choice.message.content or "", reasoning, usage, choice.finish_reason)

    async def stream(
        self, messages: Sequence[Message], model: GeneratorModel, params: ChatParams
    ) -> AsyncGenerator[StreamEvent]:
        """Yield deltas as DashScope sends them, then one :class:`StreamEnd` with the usage.

        Errors before the first chunk are retried by the SDK; an interruption after it cannot be
        retried without repeating text, so it is raised as :class:`ServiceUnavailableError`.
        """
        request = chat_request(messages, model, params, stream=True)
        stream = await self._acall(lambda c: c.chat.completions.create(**request))
        usage: Usage | None = None
        finish: str | None = None
        request_id: str | None = None
        try:
            async for chunk in stream:
                request_id = request_id or chunk.id
                if chunk.usage is not None:
                    usage = chat_usage(model, chunk.usage.prompt_tokens, chunk.usage.completion_tokens)
                for choice in chunk.choices[:1]:
                    delta = choice.delta
                    reasoning = (delta.model_extra or {}).get("reasoning_content")
                    if reasoning:
                        yield ReasoningDelta(reasoning)
                    if delta.content:
                        yield TextDelta(delta.content)
                    finish = choice.finish_reason or finish
        except DashScopeError:
            raise
        except Exception as exc:  # dropped connection, error event inside the stream
            raise self._map(exc) from None
        finally:
            await stream.close()
        yield StreamEnd(usage or Usage(calls=1), finish, request_id)


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
