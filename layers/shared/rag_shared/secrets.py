"""The DashScope API key: from ``DASHSCOPE_API_KEY``, else from Secrets Manager, cached.

A warm Lambda must not call Secrets Manager per request, yet a rotated key must be picked up:
the value is cached for ``SECRET_MAX_AGE_SECONDS`` and :meth:`ApiKeyProvider.invalidate`
(called after a 401) forces the next read to fetch again.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from pydantic import SecretStr

from rag_shared.errors import MissingApiKeyError, SecretUnavailableError
from rag_shared.logs import register_secret

logger = logging.getLogger(__name__)

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


class CachedSecret:
    """One Secrets Manager secret, parsed, cached for ``max_age_seconds``; thread-safe.

    The one reader for both secrets the project reads (the DashScope key and the chat token), so
    neither costs a Secrets Manager call per request. A failed read (throttling, network, KMS) is
    remembered for ``failure_backoff_seconds``: callers in that window get the same
    :class:`SecretUnavailableError` at once, so a flood of (unauthenticated) requests cannot turn
    into a flood of GetSecretValue calls. Messages name the setting (``label``), never the ARN,
    which holds the account id and the secret's name; the ARN goes to the log only.
    """

    def __init__(
        self,
        secret_id: str,
        *,
        label: str,
        max_age_seconds: int = 300,
        failure_backoff_seconds: float = 1.0,
        provider: SecretsProvider | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.secret_id = secret_id
        self.label = label
        self._max_age = max_age_seconds
        self._backoff = failure_backoff_seconds
        self._provider = provider
        self._clock = clock
        self._force = False
        self._failed: tuple[float, SecretUnavailableError] | None = None
        self._lock = threading.Lock()

    def get(self) -> str:
        # imported here: it loads boto3 (~0.13 s), which only the Secrets Manager path needs
        from aws_lambda_powertools.utilities.parameters import SecretsProvider
        from aws_lambda_powertools.utilities.parameters.exceptions import GetParameterError

        with self._lock:
            now = self._clock()
            if self._failed is not None and now < self._failed[0]:
                raise self._failed[1]
            force, self._force = self._force, False
            if self._provider is None:
                self._provider = SecretsProvider()
            try:
                raw = self._provider.get(self.secret_id, max_age=self._max_age, force_fetch=force)
            except GetParameterError as exc:
                self._force = force  # still stale: fetch again next time
                reason = type(exc.__cause__ or exc).__name__
                logger.warning("secret unreadable", extra={"secret": self.secret_id, "error": reason})
                error = SecretUnavailableError(f"could not read the secret in {self.label} just now ({reason})")
                self._failed = (now + self._backoff, error)
                raise error from None
            self._failed = None
        value = parse_secret_value(raw, secret_id=f"the secret in {self.label}")
        register_secret(value)
        return value

    def invalidate(self) -> None:
        """The value was rejected: the next :meth:`get` reads Secrets Manager again."""
        with self._lock:
            self._force = True

    def forget(self) -> None:
        """Drop the cached value (and a remembered failure): the next :meth:`get` reads Secrets Manager.
        For SnapStart's before-checkpoint hook: a snapshot may be restored after the secret was rotated."""
        with self._lock:
            if self._provider is not None:
                self._provider.clear_cache()  # type: ignore[no-untyped-call]
            self._failed = None
            self._force = True


class ApiKeyProvider:
    """Resolves the key; thread-safe, since the indexer embeds from several threads."""

    def __init__(
        self,
        *,
        env_key: SecretStr | None,
        secret_id: str | None,
        max_age_seconds: int = 300,
        provider: SecretsProvider | None = None,
        failure_backoff_seconds: float = 1.0,
    ) -> None:
        self._env_key = env_key
        self._secret = (
            CachedSecret(
                secret_id,
                label="DASHSCOPE_SECRET_ARN",
                max_age_seconds=max_age_seconds,
                failure_backoff_seconds=failure_backoff_seconds,
                provider=provider,
            )
            if secret_id
            else None
        )
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
        """Where the key comes from, for logs and error messages (never the key, nor the ARN)."""
        if self._env_key is not None:
            return "DASHSCOPE_API_KEY"
        if self._secret is not None:
            return "Secrets Manager, DASHSCOPE_SECRET_ARN"
        return "nowhere"

    def get(self) -> SecretStr:
        if self._env_key is not None:
            return self._env_key
        if self._secret is None:
            raise MissingApiKeyError(MISSING_KEY_MESSAGE)
        return SecretStr(self._secret.get())

    def invalidate(self) -> None:
        """The key was rejected: the next :meth:`get` reads Secrets Manager again."""
        if self._secret is not None:
            self._secret.invalidate()

    def forget(self) -> None:
        """Drop the cached key (see :meth:`CachedSecret.forget`); a key from the environment stays."""
        if self._secret is not None:
            self._secret.forget()
