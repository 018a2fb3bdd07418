"""Lambda SnapStart hooks, called by the Lambda Web Adapter (v1.1.0+) around the snapshot.

With ``ChatSnapStart=true`` Lambda starts the app once per published version, snapshots the
started environment and resumes new instances from it. The adapter relays the lifecycle to the app
as an empty ``POST`` to ``AWS_LWA_SNAPSTART_BEFORE_CHECKPOINT_PATH`` before the snapshot and to
``AWS_LWA_SNAPSTART_AFTER_RESTORE_PATH`` after a restore, before any traffic; a non-2xx answer fails
that phase (aws/aws-lambda-web-adapter, docs/guide/src/features/snapstart.md).

What must not live in a snapshot (Lambda developer guide, "Handling uniqueness with Lambda
SnapStart"): open connections (dead once restored, and shared by every instance restored from it),
random state (every instance would draw the same numbers) and secrets (a snapshot can be restored
long after it was taken, past a rotation of the key it holds). So *before*: close the DashScope and
OpenSearch connection pools and forget the cached API key and chat token; *after*: re-seed
``random``, open a fresh OpenSearch client and read the key again (warm-up), before the adapter's
readiness check lets traffic in.

The adapter answers 403 when a hook path is asked for through the function URL; here the hooks
are also served only to a loopback client that brings no ``x-amzn-request-context`` (which the
adapter sets on every relayed request and overrides when a caller sends its own), so a direct
deployment without the adapter does not expose them either.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import os
import random
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from starlette.types import ASGIApp, Receive, Scope, Send

if TYPE_CHECKING:
    from chat.service import ChatDeps

logger = logging.getLogger("chat.snapstart")

BEFORE_ENV = "AWS_LWA_SNAPSTART_BEFORE_CHECKPOINT_PATH"
AFTER_ENV = "AWS_LWA_SNAPSTART_AFTER_RESTORE_PATH"


def snapshot_init() -> bool:
    """This start-up is the one Lambda snapshots (it sets ``AWS_LAMBDA_INITIALIZATION_TYPE`` to
    ``snap-start`` then): secrets read now would be kept in the snapshot, so they are read after restore."""
    return os.environ.get("AWS_LAMBDA_INITIALIZATION_TYPE") == "snap-start"


@dataclass(frozen=True)
class HookPaths:
    """The paths the adapter posts to; ``None``: that hook is not configured (not served)."""

    before: str | None = None
    after: str | None = None

    @classmethod
    def from_env(cls) -> HookPaths:
        return cls(os.environ.get(BEFORE_ENV) or None, os.environ.get(AFTER_ENV) or None)


def from_adapter(scope: Scope) -> bool:
    """A hook call: from loopback, and not a relayed invocation (those carry a request context)."""
    client = scope.get("client")
    try:
        loopback = client is not None and ipaddress.ip_address(client[0]).is_loopback
    except ValueError:
        loopback = False
    relayed = any(name == b"x-amzn-request-context" for name, _ in scope.get("headers") or [])
    return loopback and not relayed


def reseed() -> None:
    """Every instance restored from one snapshot starts with the same ``random`` state; draw a new
    seed from the OS (``os.urandom``, ``secrets`` and ``uuid.uuid4`` read the OS and need nothing)."""
    random.seed(os.urandom(32))


async def _reply(send: Send, status: int, body: bytes) -> None:
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


class SnapStartHooks:
    """ASGI middleware answering the two hook paths; everything else passes on. Added outermost, in
    front of the Guard: the adapter's hook calls carry no bearer token."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        paths: HookPaths,
        before: Callable[[], Awaitable[None]],
        after: Callable[[], Awaitable[None]],
    ) -> None:
        self.app = app
        self.hooks = {p: fn for p, fn in ((paths.before, before), (paths.after, after)) if p}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        hook = self.hooks.get(scope["path"]) if scope["type"] == "http" else None
        if hook is None:
            await self.app(scope, receive, send)
            return
        if not from_adapter(scope):
            await _reply(send, 403, b'{"error":{"code":"forbidden","message":"SnapStart hooks are for the adapter"}}')
            return
        if scope["method"] != "POST":
            await _reply(send, 405, b'{"error":{"code":"method_not_allowed","message":"POST only"}}')
            return
        await hook()  # an exception fails the phase (a 500 from the server), as it should
        await _reply(send, 200, b'{"status":"ok"}')


class Forgettable(Protocol):
    def forget(self) -> None: ...


async def checkpoint(deps: ChatDeps, secrets: Sequence[Forgettable] = ()) -> None:
    """Before the snapshot: close every pooled connection and forget the secrets read so far."""
    await deps.client.aclose()
    if deps.reranker is not None:
        await deps.reranker.aclose()
    store = deps.store
    # opensearch-py closes its transport's pools (a closed urllib3 pool cannot be used again: restore
    # builds a new client); botocore's close() empties the DynamoDB client's pools, which refill on use
    await asyncio.to_thread(store.client.close)
    if store.commits is not None and hasattr(store.commits.client, "close"):
        store.commits.client.close()
    deps.client.keys.forget()
    for secret in secrets:
        secret.forget()
    logger.info("snapstart: connections closed, secrets forgotten before the snapshot")


async def restore(deps: ChatDeps, warm_up: Callable[[ChatDeps], None]) -> None:
    """After a restore, before traffic: new random state, a new OpenSearch client, the key read
    again (``warm_up``: the DashScope client is built with it)."""
    reseed()
    from rag_shared.store import make_client

    deps.store.client = await asyncio.to_thread(make_client, deps.settings)
    await asyncio.to_thread(warm_up, deps)
    logger.info("snapstart: restored (reseeded, reconnected, key read)")
