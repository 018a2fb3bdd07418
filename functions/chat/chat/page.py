"""The browser chat page: one static HTML file, served at ``/`` when ``CHAT_PAGE=true``.

Off by default, and meant for bearer-token auth (``make serve`` turns it on): behind an ``AWS_IAM``
function URL a browser cannot sign its requests. The page itself holds no secret, so it is served
before the auth middleware (the page is where the token is typed in); every request it makes to the
API carries ``Authorization: Bearer`` and is checked as any other. No build step: plain HTML and JS.
"""

from __future__ import annotations

import base64
import hashlib
import re
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING

from rag_shared.config import EnvSettings
from starlette.types import ASGIApp, Receive, Scope, Send

if TYPE_CHECKING:
    from fastapi import FastAPI

PAGE = Path(__file__).with_name("static") / "index.html"


class PageSettings(EnvSettings):
    chat_page: bool = False  # CHAT_PAGE


@cache
def page() -> tuple[bytes, str]:
    """The page and its Content-Security-Policy: only its own inline script (by hash) may run,
    and it may talk only to this origin."""
    html = PAGE.read_text(encoding="utf-8")
    scripts = re.findall(r"<script>(.*?)</script>", html, flags=re.S)
    hashes = " ".join(f"'sha256-{base64.b64encode(hashlib.sha256(s.encode()).digest()).decode()}'" for s in scripts)
    csp = (
        f"default-src 'none'; script-src {hashes}; style-src 'unsafe-inline'; connect-src 'self'; "
        "img-src data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    )
    return html.encode(), csp


class PageMiddleware:
    """Answers ``GET /`` with the page; passes everything else on. Added last, so it runs before auth."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        wanted = scope["type"] == "http" and scope["method"] in ("GET", "HEAD")
        if not wanted or scope["path"] not in ("/", "/index.html"):
            await self.app(scope, receive, send)
            return
        body, csp = page()
        headers = [
            (b"content-type", b"text/html; charset=utf-8"),
            (b"content-length", str(len(body)).encode()),
            (b"content-security-policy", csp.encode()),
            (b"x-content-type-options", b"nosniff"),
            (b"referrer-policy", b"no-referrer"),
            (b"cache-control", b"no-cache"),
        ]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": b"" if scope["method"] == "HEAD" else body})


def mount(app: FastAPI, settings: PageSettings | None = None) -> None:
    """Serve the page from ``app`` if ``CHAT_PAGE`` is true. Call after the auth middleware is added."""
    if (settings or PageSettings()).chat_page:
        app.add_middleware(PageMiddleware)
