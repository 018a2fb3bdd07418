"""What the AWS Lambda Web Adapter does with a function URL event in response-stream mode: turn it
into an HTTP request to the app on localhost (adding ``x-amzn-request-context``) and relay the
response as it is written. Lets tests run the `events/*.json` that `sam local invoke -e` takes."""

from __future__ import annotations

import base64
import json
import time
from dataclasses import dataclass, field
from typing import Any

import httpx


@dataclass
class StreamedResponse:
    status: int
    headers: httpx.Headers
    chunks: list[tuple[float, bytes]] = field(default_factory=list)

    @property
    def body(self) -> bytes:
        return b"".join(c for _, c in self.chunks)


def invoke(event: dict[str, Any], app_url: str) -> StreamedResponse:
    body = event.get("body") or ""
    data = base64.b64decode(body) if event.get("isBase64Encoded") else body.encode()
    headers = dict(event.get("headers") or {})
    headers.pop("host", None)
    headers["x-amzn-request-context"] = json.dumps(event["requestContext"])
    url = f"{app_url}{event['rawPath']}" + (f"?{event['rawQueryString']}" if event.get("rawQueryString") else "")
    method = event["requestContext"]["http"]["method"]
    with httpx.Client(timeout=30) as client, client.stream(method, url, content=data, headers=headers) as r:
        out = StreamedResponse(r.status_code, r.headers)
        for chunk in r.iter_raw():
            out.chunks.append((time.monotonic(), chunk))
    return out
