"""A small SSE reader for tests: yields (event, data, arrival_time) as lines arrive."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import httpx


def read_sse(response: httpx.Response) -> Iterator[tuple[str, Any, float]]:
    event, data = "message", list[str]()
    for line in response.iter_lines():
        if line == "":
            if data:
                raw = "\n".join(data)
                yield event, (raw if raw == "[DONE]" else json.loads(raw)), time.monotonic()
            event, data = "message", list[str]()
        elif line.startswith("event:"):
            event = line[6:].strip()
        elif line.startswith("data:"):
            data.append(line[5:].strip())
