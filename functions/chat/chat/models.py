"""Request and event models of the chat API."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from rag_shared.store import SearchFilter

MAX_MESSAGES = 100
MAX_MESSAGE_CHARS = 32_000


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="ignore")

    role: Literal["system", "user", "assistant"]
    content: str = Field(max_length=MAX_MESSAGE_CHARS)

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


class RetrievalOptions(BaseModel):
    """How (and whether) to retrieve passages; shared by both endpoints."""

    use_rag: bool = True
    top_k: int | None = Field(None, ge=0, le=50)
    filter: SearchFilter | None = None


class ChatRequest(RetrievalOptions):
    """Body of ``POST /chat/completions/stream``."""

    model_config = ConfigDict(extra="forbid")

    messages: list[ChatMessage] = Field(min_length=1, max_length=MAX_MESSAGES)
    model: str | None = None
    temperature: float | None = Field(None, ge=0, lt=2)
    top_p: float | None = Field(None, gt=0, le=1)
    max_tokens: int | None = Field(None, ge=1, le=65536)
    enable_thinking: bool | None = None

    @model_validator(mode="after")
    def _last_is_user(self) -> ChatRequest:
        if self.messages[-1].role != "user":
            raise ValueError("the last message must come from the user")
        if not self.messages[-1].content.strip():
            raise ValueError("the last user message is empty")
        return self


class StreamOptions(BaseModel):
    include_usage: bool = False


class OpenAIChatRequest(ChatRequest):
    """Body of ``POST /v1/chat/completions``: OpenAI's shape; RAG options ride along as extra fields
    (the openai SDK's ``extra_body``)."""

    model_config = ConfigDict(extra="ignore")

    stream: bool = False
    stream_options: StreamOptions | None = None
    max_completion_tokens: int | None = Field(None, ge=1, le=65536)
    n: int = Field(1, ge=1, le=1)


class ApiError(BaseModel):
    """Every error body, in OpenAI's shape so SDKs surface the message."""

    message: str
    type: str
    code: str
    param: str | None = None
