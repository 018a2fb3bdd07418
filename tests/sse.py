"""The tests' SSE reader, on httpx-sse: yields (event, data, arrival_time) as events arrive.

httpx-sse splits lines only at CR, LF and CRLF, as the SSE spec says; ``httpx``'s ``iter_lines``
(like ``str.splitlines``) also splits at U+2028/U+2029/NEL and would cut an event that carries them.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import httpx
from httpx_sse import EventSource


def read_sse(response: httpx.Response) -> Iterator[tuple[str, Any, float]]:
    for sse in EventSource(response).iter_sse():
        yield sse.event, (sse.data if sse.data == "[DONE]" else json.loads(sse.data)), time.monotonic()
