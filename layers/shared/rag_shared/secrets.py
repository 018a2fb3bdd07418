"""The DashScope API key: from ``DASHSCOPE_API_KEY``, else from Secrets Manager, cached.

A warm Lambda must not call Secrets Manager per request, yet a rotated key must be picked up:
the value is cached for ``SECRET_MAX_AGE_SECONDS`` and :meth:`ApiKeyProvider.invalidate`
(called after a 401) forces the next read to fetch again.
"""

from __future__ import annotations

import json
import threading
from typing import TYPE_CHECKING

from pydantic import SecretStr

from rag_shared.errors import MissingApiKeyError, SecretUnavailableError
from rag_shared.logs import register_secret

if TYPE_CHECKING:
    from aws_lambda_powertools.utilities.parameters import SecretsProvider

    from rag_shared.config import Settings

MISSING_KEY_MESSAGE = (
    "No DashScope API key: set DASHSCOPE_API_KEY to the key, or DASHSCOPE_SECRET_ARN to a Secrets "
    'Manager secret whose value is the key (plain string or JSON {"api_key": "..."}).'
)


def parse_secret_value(value: str | bytes | dict[str, object] | None, *, secret_id: str) -> str:
    """Accept a plain string or a JSON object with ``api_key`` (or ``DASHSCOPE_API_KEY``)."""
    if isinstance(value, bytes):
        value = value.decode("utf-8")
    if isinstance(value, str):
        stripped = value.strip()
        if stripped.startswith("{"):
            try:
                value = json.loads(stripped)
            except json.JSONDecodeError:
                raise MissingApiKeyError(f"secret {secret_id} looks like JSON but does not parse") from None
        else:
            value = stripped
    if isinstance(value, dict):
        for field in ("api_key", "DASHSCOPE_API_KEY", "apiKey", "token"):
            candidate = value.get(field)
            if isinstance(candidate, str) and candidate.strip():
                return candidate.strip()
        raise MissingApiKeyError(f'secret {secret_id} is JSON but has no "api_key" field')
    if isinstance(value, str) and value:
        return value
    raise MissingApiKeyError(f"secret {secret_id} is empty. {MISSING_KEY_MESSAGE}")


class ApiKeyProvider:
    """Resolves the key; thread-safe, since the indexer embeds from several threads."""

    def __init__(
        self,
        *,
        env_key: SecretStr | None,
        secret_id: str | None,
        max_age_seconds: int = 300,
        provider: SecretsProvider | None = None,
    ) -> None:
        self._env_key = env_key
        self._secret_id = secret_id
        self._max_age = max_age_seconds
        self._provider = provider
        self._force = False
        self._lock = threading.Lock()
        if env_key is not None:
            register_secret(env_key.get_secret_value())

    @classmethod
    def from_settings(cls, settings: Settings, provider: SecretsProvider | None = None) -> ApiKeyProvider:
        return cls(
            env_key=settings.dashscope_api_key,
            secret_id=settings.dashscope_secret_arn,
            max_age_seconds=settings.secret_max_age_seconds,
            provider=provider,
        )

    @property
    def source(self) -> str:
        """Where the key comes from, for logs and error messages (never the key itself)."""
        if self._env_key is not None:
            return "DASHSCOPE_API_KEY"
        if self._secret_id:
            return f"Secrets Manager secret {self._secret_id}"
        return "nowhere"

    def get(self) -> SecretStr:
        if self._env_key is not None:
            return self._env_key
        if not self._secret_id:
            raise MissingApiKeyError(MISSING_KEY_MESSAGE)
        # imported here: it loads boto3 (~0.13 s), which only the Secrets Manager path needs
        from aws_lambda_powertools.utilities.parameters import SecretsProvider
        from aws_lambda_powertools.utilities.parameters.exceptions import GetParameterError

        with self._lock:
            force, self._force = self._force, False
            if self._provider is None:
                self._provider = SecretsProvider()
            try:
                raw = self._provider.get(self._secret_id, max_age=self._max_age, force_fetch=force)
            except GetParameterError as exc:
                self._force = force  # still stale: fetch again next time
                raise SecretUnavailableError(
                    f"could not read DashScope key from secret {self._secret_id}: {type(exc.__cause__ or exc).__name__}"
                ) from None
        key = parse_secret_value(raw, secret_id=self._secret_id)
        register_secret(key)
        return SecretStr(key)

    def invalidate(self) -> None:
        """The key was rejected: the next :meth:`get` reads Secrets Manager again."""
        with self._lock:
            self._force = True
