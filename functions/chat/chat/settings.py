"""Settings of the chat function only (the shared ones live in :mod:`rag_shared.config`)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, SecretStr
from rag_shared.config import EnvSettings

from chat.rag import DEFAULT_SYSTEM_PROMPT


class ChatSettings(EnvSettings):
    chat_auth_mode: Literal["iam", "token", "none"] = "iam"
    chat_api_token: SecretStr | None = None
    chat_token_secret_arn: str | None = None
    max_body_bytes: int = Field(256 * 1024, ge=1024)
    cors_allow_origins: str = ""  # comma-separated; empty: no CORS headers
    system_prompt: str = DEFAULT_SYSTEM_PROMPT
    chat_api_docs: bool = False  # CHAT_API_DOCS=true serves /docs, /redoc and /openapi.json
    # A body must arrive within this (uvicorn has no body timeout; behind Lambda the adapter
    # relays whole bodies, so only a direct deployment meets a slow client)
    body_timeout_seconds: float = Field(10.0, gt=0)

    @property
    def origins(self) -> list[str]:
        return [o.strip() for o in self.cors_allow_origins.split(",") if o.strip()]
