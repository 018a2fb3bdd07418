"""ASGI middleware that runs before any parsing: authentication and the body-size cap.

Unauthenticated or oversized requests are answered here, so they never reach retrieval or
DashScope. Modes (``CHAT_AUTH_MODE``): ``iam`` — the function URL has already verified a SigV4
signature (``AuthType: AWS_IAM``), nothing to check here; ``token`` — a bearer token, from
``CHAT_API_TOKEN`` or a Secrets Manager secret (``CHAT_TOKEN_SECRET_ARN``), compared in constant
time; ``none`` — open (local experiments only).
"""

from __future__ import annotations

import hmac
import json
from collections.abc import Callable
from typing import Any, Literal

from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

OPEN_PATHS = {"/health"}


def error_body(status: int, code: str, message: str, etype: str = "invalid_request_error") -> bytes:
    return json.dumps({"error": {"message": message, "type": etype, "code": code, "param": None}}).encode()


async def _respond(send: Send, status: int, body: bytes, headers: list[tuple[bytes, bytes]] | None = None) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                *(headers or []),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


class BodyTooLarge(HTTPException):
    """Raised from ``receive`` when a body without Content-Length grows past the cap. An
    HTTPException, so FastAPI's body parsing passes it through as a 413."""

    def __init__(self, limit: int) -> None:
        super().__init__(413, f"request body exceeds {limit} bytes")


class Guard:
    def __init__(
        self,
        app: ASGIApp,
        *,
        mode: Literal["iam", "token", "none"],
        token: Callable[[], str | None],
        max_body_bytes: int,
    ) -> None:
        self.app = app
        self.mode = mode
        self.token = token
        self.max_body_bytes = max_body_bytes

    def _authorized(self, scope: Scope) -> bool:
        if self.mode != "token":
            return True
        expected = self.token()
        if not expected:
            return False
        headers = dict(scope.get("headers") or [])
        auth = headers.get(b"authorization", b"").decode("latin-1")
        scheme, _, presented = auth.partition(" ")
        if scheme.lower() != "bearer":
            presented = headers.get(b"x-api-key", b"").decode("latin-1")
        return hmac.compare_digest(presented.encode(), expected.encode())

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in OPEN_PATHS or scope["method"] == "OPTIONS":
            await self.app(scope, receive, send)
            return
        if not self._authorized(scope):
            await _respond(
                send,
                401,
                error_body(401, "unauthorized", "missing or invalid bearer token", "authentication_error"),
                [(b"www-authenticate", b'Bearer realm="qwen-rag"')],
            )
            return
        headers = dict(scope.get("headers") or [])
        declared = headers.get(b"content-length")
        too_large = error_body(413, "body_too_large", f"request body exceeds {self.max_body_bytes} bytes")
        if declared is not None and declared.isdigit() and int(declared) > self.max_body_bytes:
            await _respond(send, 413, too_large)
            return
        seen = 0

        async def counted() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_body_bytes:
                    raise BodyTooLarge(self.max_body_bytes)
            return message

        started = False

        async def tracking_send(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counted, tracking_send)
        except BodyTooLarge:
            if not started:
                await _respond(send, 413, too_large)


def token_source(settings_token: str | None, secret_arn: str | None, max_age: int) -> Callable[[], str | None]:
    """The expected token, from the environment or (cached) Secrets Manager."""
    if settings_token:
        from rag_shared.logs import register_secret

        register_secret(settings_token)
        return lambda: settings_token
    if not secret_arn:
        return lambda: None
    from aws_lambda_powertools.utilities.parameters import SecretsProvider
    from rag_shared.secrets import parse_secret_value

    provider = SecretsProvider()

    def read() -> str | None:
        from rag_shared.logs import register_secret

        raw: Any = provider.get(secret_arn, max_age=max_age)
        value = parse_secret_value(raw, secret_id=secret_arn)
        register_secret(value)
        return value

    return read
