"""Request and event models of the chat API.

Message shapes and parameter ranges are DashScope's compatible mode, which follows OpenAI's wire
format (Model Studio "OpenAI Chat" API reference,
alibabacloud.com/help/en/model-studio/qwen-api-via-openai-chat-completions, checked 2026-11):
system/user/assistant/tool messages, assistant turns carrying ``tool_calls``, temperature [0, 2),
top_p (0, 1], presence_penalty [-2, 2], seed [0, 2^31 - 1]. OpenAI's ``developer`` role becomes a
system turn (DashScope has none). What DashScope cannot do is refused by :func:`unsupported`.
"""

from __future__ import annotations

import re
from typing import Any, ClassVar, Literal, Self

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator
from rag_shared.errors import RagError
from rag_shared.store import SearchFilter, SearchType

MAX_MESSAGES = 100
MAX_MESSAGE_CHARS = 32_000
MAX_TOOLS = 128  # OpenAI's cap on tools per request; DashScope documents none lower
MAX_NAME = 256


class UnsupportedParameter(RagError):
    """A parameter the client set that DashScope cannot honour: refused rather than ignored."""

    status = 400
    code = "unsupported_parameter"


class ToolFunction(BaseModel):
    model_config = ConfigDict(extra="ignore")

    name: str = Field(min_length=1, max_length=MAX_NAME)
    arguments: str = Field("", max_length=MAX_MESSAGE_CHARS)


class ToolCall(BaseModel):
    """An assistant's call of a tool, as the model produced it (OpenAI's and DashScope's shape)."""

    model_config = ConfigDict(extra="ignore")

    id: str = Field(min_length=1, max_length=MAX_NAME)
    type: Literal["function"] = "function"
    function: ToolFunction


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="ignore")

    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | None = Field(None, max_length=MAX_MESSAGE_CHARS)
    tool_calls: list[ToolCall] | None = Field(None, max_length=MAX_TOOLS)
    tool_call_id: str | None = Field(None, max_length=MAX_NAME)

    @field_validator("content", mode="before")
    @classmethod
    def _flatten_parts(cls, value: Any) -> Any:
        """OpenAI clients may send content as a list of parts; text parts are joined, others refused."""
        if isinstance(value, list):
            texts = []
            for part in value:
                if not isinstance(part, dict) or part.get("type") != "text":
                    raise ValueError("only text content parts are supported")
                texts.append(str(part.get("text", "")))
            return "\n".join(texts)
        return value

    @model_validator(mode="after")
    def _shape(self) -> ChatMessage:
        if self.role == "developer":  # OpenAI's newer name for the system turn
            self.role = "system"
        if self.tool_calls and self.role != "assistant":
            raise ValueError("only assistant messages carry tool_calls")
        if self.role == "tool" and not self.tool_call_id:
            raise ValueError("a tool message needs the tool_call_id it answers")
        if self.content is None and not (self.role == "assistant" and self.tool_calls):
            raise ValueError(f"a {self.role} message needs content")
        return self

    def wire(self) -> dict[str, Any]:
        """The message as DashScope takes it."""
        out: dict[str, Any] = {"role": self.role, "content": self.content or ""}
        if self.tool_calls:
            out["tool_calls"] = [c.model_dump() for c in self.tool_calls]
        if self.tool_call_id:
            out["tool_call_id"] = self.tool_call_id
        return out


class FunctionSpec(BaseModel):
    model_config = ConfigDict(extra="allow")

    name: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_-]+$")
    description: str | None = None
    parameters: dict[str, Any] | None = None


class Tool(BaseModel):
    type: Literal["function"]
    function: FunctionSpec


class ResponseFormat(BaseModel):
    model_config = ConfigDict(extra="allow")

    type: Literal["text", "json_object", "json_schema"]


class RetrievalOptions(BaseModel):
    """How (and whether) to retrieve passages; shared by both endpoints."""

    use_rag: bool = True
    top_k: int | None = Field(None, ge=0, le=50)
    filter: SearchFilter | None = None
    # issue 16: None follows the deployment (RERANK_MODEL, QUERY_REWRITE); true/false force it per request
    rerank: bool | None = None
    rewrite_query: bool | None = None
    # None: the deployment's SEARCH_TYPE (default hybrid) and RAG_MIN_SCORE
    search_type: SearchType | None = None
    # A floor on the k-NN cosine score ((2 - d) / 2, in [0, 1]); keyword search has none (BM25 is unbounded)
    min_score: float | None = Field(None, ge=0, le=1)

    @model_validator(mode="after")
    def _floor_needs_similarity(self) -> Self:
        if self.min_score is not None and self.search_type == "keyword":
            raise ValueError(
                "min_score is a floor on the semantic (cosine) score; keyword search ranks by BM25, whose "
                "scores are unbounded: use search_type semantic or hybrid with min_score"
            )
        return self


class ChatRequest(RetrievalOptions):
    """Body of ``POST /chat/completions/stream``."""

    model_config = ConfigDict(extra="forbid")

    messages: list[ChatMessage] = Field(min_length=1, max_length=MAX_MESSAGES)
    model: str | None = None
    temperature: float | None = Field(None, ge=0, lt=2)
    top_p: float | None = Field(None, gt=0, le=1)
    max_tokens: int | None = Field(None, ge=1, le=65536)
    enable_thinking: bool | None = None
    presence_penalty: float | None = Field(None, ge=-2, le=2)
    seed: int | None = Field(None, ge=0, le=2**31 - 1)
    stop: str | list[str] | None = None
    response_format: ResponseFormat | None = None
    tools: list[Tool] | None = Field(None, max_length=MAX_TOOLS)
    tool_choice: Literal["auto", "none", "required"] | dict[str, Any] | None = None
    parallel_tool_calls: bool | None = None
    language: str | None = Field(None, max_length=40)

    @field_validator("stop")
    @classmethod
    def _stops(cls, value: str | list[str] | None) -> str | list[str] | None:
        if isinstance(value, list) and (len(value) > 16 or any(len(s) > 256 for s in value)):
            raise ValueError("at most 16 stop sequences of at most 256 characters")
        return value

    @field_validator("tool_choice")
    @classmethod
    def _tool_choice(cls, value: Any) -> Any:
        if isinstance(value, dict):
            name = (value.get("function") or {}).get("name") if isinstance(value.get("function"), dict) else None
            if value.get("type") != "function" or not isinstance(name, str) or not name:
                raise ValueError('a named tool_choice is {"type": "function", "function": {"name": ...}}')
        return value

    @model_validator(mode="after")
    def _conversation(self) -> ChatRequest:
        last = self.messages[-1]
        if last.role not in ("user", "tool"):
            raise ValueError("the last message must come from the user (or be a tool result)")
        if last.role == "user" and not (last.content or "").strip():
            raise ValueError("the last user message is empty")
        if not any(m.role == "user" for m in self.messages):
            raise ValueError("the conversation needs a user message")
        if isinstance(self.tool_choice, dict):
            named = self.tool_choice["function"]["name"]
            if named not in {t.function.name for t in self.tools or []}:
                raise ValueError(f"tool_choice names {named!r}, which is not in tools")
        if self.language is not None:
            language_name(self.language)  # refused here, with the reason, if unknown
        return self

    def answer_language(self) -> str | None:
        return language_name(self.language) if self.language else None

    def question(self) -> str:
        """The last user message: what retrieval searches for."""
        return next(m.content or "" for m in reversed(self.messages) if m.role == "user")


class RetrieveRequest(RetrievalOptions):
    """Body of ``POST /v1/retrieve``: the retrieval pipeline alone (like Bedrock's Retrieve API), for a
    ``query`` or for a conversation (``messages``, whose last user turn is searched, rewritten with
    the history when query rewriting is on)."""

    model_config = ConfigDict(extra="forbid")

    query: str | None = Field(None, max_length=MAX_MESSAGE_CHARS)
    messages: list[ChatMessage] | None = Field(None, min_length=1, max_length=MAX_MESSAGES)

    @model_validator(mode="after")
    def _one_input(self) -> RetrieveRequest:
        if (self.query is None) == (self.messages is None):
            raise ValueError("give either query or messages")
        if self.query is not None and not self.query.strip():
            raise ValueError("query is empty")
        if self.messages is not None and not any(m.role == "user" and (m.content or "").strip() for m in self.messages):
            raise ValueError("messages need a non-empty user message")
        if not self.use_rag:
            raise ValueError("use_rag=false means no retrieval; leave it out here")
        return self

    def conversation(self) -> list[ChatMessage]:
        if self.messages is not None:
            return self.messages
        return [ChatMessage(role="user", content=self.query)]


# deepwiki-open's language codes (its api/config/lang.json) and their names.
LANGUAGES = {
    "en": "English",
    "ja": "Japanese",
    "zh": "Mandarin Chinese",
    "zh-tw": "Traditional Chinese",
    "es": "Spanish",
    "kr": "Korean",
    "ko": "Korean",
    "vi": "Vietnamese",
    "pt-br": "Brazilian Portuguese",
    "fr": "French",
    "ru": "Russian",
    "de": "German",
}
_LANGUAGE_NAME = re.compile(r"^[A-Za-z][A-Za-z \-()]{1,39}$")


def language_name(code: str) -> str:
    """``language`` as the model is told it: a known code's name, or a plain language name."""
    name = LANGUAGES.get(code.strip().lower())
    if name:
        return name
    if _LANGUAGE_NAME.match(code.strip()) and len(code.strip()) > 3:
        return code.strip()
    raise ValueError(f"unknown language {code!r}; use a code such as en, zh, ja, or a language name")


class StreamRequest(ChatRequest):
    """``POST /chat/completions/stream``: also accepts the body of the seed's (deepwiki-open's)
    ``ChatCompletionRequest``. ``provider`` must be ``dashscope``; ``filePath`` narrows retrieval to
    that key; ``language`` sets the answer language; the repository fields (``repo_url``, ``type``,
    ``token``, ``excluded_*``, ``included_*``) have no meaning here and are ignored (logged once per
    request by name, never by value: ``token`` is a credential)."""

    repo_url: str | None = None
    filePath: str | None = Field(None, max_length=1024)  # deepwiki's field name
    token: SecretStr | None = None
    type: str | None = None
    provider: str | None = None
    excluded_dirs: str | None = None
    excluded_files: str | None = None
    included_dirs: str | None = None
    included_files: str | None = None

    IGNORED: ClassVar[tuple[str, ...]] = (
        "repo_url",
        "token",
        "type",
        "excluded_dirs",
        "excluded_files",
        "included_dirs",
        "included_files",
    )

    @field_validator("provider")
    @classmethod
    def _provider(cls, value: str | None) -> str | None:
        if value is not None and value.strip().lower() != "dashscope":
            raise ValueError(f"provider {value!r} is not served here; this backend answers with provider 'dashscope'")
        return value

    def ignored_fields(self) -> list[str]:
        return [name for name in self.IGNORED if getattr(self, name) is not None]

    def retrieval_filter(self) -> SearchFilter | None:
        """``filter``, narrowed to ``filePath`` when given."""
        if not self.filePath:
            return self.filter
        key = self.filePath.lstrip("/")
        base = self.filter or SearchFilter()
        return base.model_copy(update={"keys": [key]})


class StreamOptions(BaseModel):
    include_usage: bool = False


class OpenAIChatRequest(ChatRequest):
    """Body of ``POST /v1/chat/completions``: OpenAI's shape; RAG options ride along as extra fields
    (the openai SDK's ``extra_body``). Parameters DashScope lacks are refused by :func:`unsupported`,
    others OpenAI defines but that change nothing here (``user``, ``store``, ``metadata``) are ignored."""

    model_config = ConfigDict(extra="ignore")

    stream: bool = False
    stream_options: StreamOptions | None = None
    max_completion_tokens: int | None = Field(None, ge=1, le=65536)
    n: int | None = None
    frequency_penalty: float | None = None
    logprobs: bool | None = None
    top_logprobs: int | None = None
    logit_bias: dict[str, Any] | None = None

    def unsupported(self) -> str | None:
        """Why this request cannot be honoured, or None. Checked before any work."""
        if self.n not in (None, 1):
            return "n > 1 is not supported: one answer per request (its sources and usage are per answer)"
        if self.frequency_penalty not in (None, 0, 0.0):
            return "frequency_penalty is not a DashScope parameter; use presence_penalty ([-2, 2])"
        if self.logit_bias:
            return "logit_bias is not a DashScope parameter"
        if self.logprobs or self.top_logprobs:
            return "logprobs are not returned by this API"
        return None


class ApiError(BaseModel):
    """Every error body, in OpenAI's shape so SDKs surface the message."""

    message: str
    type: str
    code: str
    param: str | None = None
