"""ASGI middleware that runs before any parsing: authentication, the body-size cap and read
timeout, and the last line of error handling.

Unauthenticated, oversized or slow requests are answered here, so they never reach retrieval or
DashScope. Modes (``CHAT_AUTH_MODE``): ``iam`` — the function URL has already verified a SigV4
signature (``AuthType: AWS_IAM``), nothing to check here; but outside Lambda nothing did, so there
only loopback callers are served; ``token`` — a bearer token, from ``CHAT_API_TOKEN`` or a Secrets
Manager secret (``CHAT_TOKEN_SECRET_ARN``, read through the shared cached reader), compared in
constant time; ``none`` — open (local experiments only).

Any exception that escapes the app before a response started becomes a JSON 500 with a stable
code (or the :class:`~rag_shared.errors.RagError`'s own status and code), never Starlette's
``text/plain`` "Internal Server Error".
"""

from __future__ import annotations

import asyncio
import hmac
import ipaddress
import json
import logging
import os
from collections.abc import Callable
from typing import Literal

from rag_shared.errors import RagError
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

OPEN_PATHS = {"/health"}
logger = logging.getLogger("chat.guard")


def on_lambda() -> bool:
    """Lambda sets these in every function's environment (Lambda developer guide, "Defined runtime
    environment variables")."""
    return bool(os.environ.get("AWS_LAMBDA_FUNCTION_NAME") and os.environ.get("AWS_LAMBDA_RUNTIME_API"))


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


class BodyTimeout(HTTPException):
    """Raised from ``receive`` when the body does not arrive in time (a slow or stalled client)."""

    def __init__(self, seconds: float) -> None:
        super().__init__(408, f"request body not received within {seconds:g} s")


def _loopback(scope: Scope) -> bool:
    client = scope.get("client")
    if not client:
        return False
    try:
        return ipaddress.ip_address(client[0]).is_loopback
    except ValueError:
        return False


class Guard:
    def __init__(
        self,
        app: ASGIApp,
        *,
        mode: Literal["iam", "token", "none"],
        token: Callable[[], str | None],
        max_body_bytes: int,
        body_timeout_seconds: float = 10.0,
        loopback_only: bool = False,
    ) -> None:
        self.app = app
        self.mode = mode
        self.token = token
        self.max_body_bytes = max_body_bytes
        self.body_timeout = body_timeout_seconds
        self.loopback_only = loopback_only

    def _authorized(self, scope: Scope) -> bool:
        if self.mode != "token":
            return True
        expected = self.token()  # SecretUnavailableError: answered as a JSON 503 below
        if not expected:
            return False
        headers = dict(scope.get("headers") or [])
        auth = headers.get(b"authorization", b"").decode("latin-1")
        scheme, _, presented = auth.partition(" ")
        if scheme.lower() != "bearer":
            presented = headers.get(b"x-api-key", b"").decode("latin-1")
        return hmac.compare_digest(presented.encode("latin-1", "replace"), expected.encode())

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def tracking_send(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self._guarded(scope, receive, tracking_send)
        except (BodyTooLarge, BodyTimeout) as exc:
            if not started:
                code = "body_too_large" if exc.status_code == 413 else "body_timeout"
                await _respond(send, exc.status_code, error_body(exc.status_code, code, str(exc.detail)))
        except RagError as exc:
            if not started:
                etype = "invalid_request_error" if exc.status < 500 else "api_error"
                await _respond(send, exc.status, error_body(exc.status, exc.code, exc.message, etype))
        except Exception:
            logger.exception("request failed")
            if not started:
                await _respond(send, 500, error_body(500, "internal_error", "internal error", "api_error"))

    async def _guarded(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["path"] in OPEN_PATHS or scope["method"] == "OPTIONS":
            await self.app(scope, receive, send)
            return
        if self.loopback_only and not _loopback(scope):
            message = "CHAT_AUTH_MODE=iam outside Lambda checks no caller: only loopback clients are served"
            await _respond(send, 403, error_body(403, "forbidden", message, "permission_error"))
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
        if declared is not None and declared.isdigit() and int(declared) > self.max_body_bytes:
            raise BodyTooLarge(self.max_body_bytes)
        seen = 0
        body_done = False

        async def counted() -> Message:
            nonlocal seen, body_done
            if body_done:  # after the body: Starlette waits here for a disconnect, with no deadline
                return await receive()
            try:
                message = await asyncio.wait_for(receive(), self.body_timeout)
            except TimeoutError:
                raise BodyTimeout(self.body_timeout) from None
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_body_bytes:
                    raise BodyTooLarge(self.max_body_bytes)
                body_done = not message.get("more_body", False)
            else:
                body_done = True
            return message

        await self.app(scope, counted, send)


def token_source(settings_token: str | None, secret_arn: str | None, max_age: int) -> Callable[[], str | None]:
    """The expected token, from the environment or (cached, by :class:`rag_shared.secrets.CachedSecret`,
    the DashScope key's reader) Secrets Manager."""
    if settings_token:
        from rag_shared.logs import register_secret

        register_secret(settings_token)
        return lambda: settings_token
    if not secret_arn:
        return lambda: None
    from rag_shared.secrets import CachedSecret

    return CachedSecret(secret_arn, label="CHAT_TOKEN_SECRET_ARN", max_age_seconds=max_age).get
