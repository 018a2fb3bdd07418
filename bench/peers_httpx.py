"""The strongest plain peer: what a careful user writes without the ``openai`` SDK.

``plain_asyncio`` (bench/peers.py) uses ``AsyncOpenAI`` as DashScope's docs show, and on this
machine it is bound by the SDK's own CPU: it builds a pydantic model of every float of every
vector (~0.1 s of CPU per 25 × 1,024-float response here, against ~2 ms for orjson to parse it).
This peer posts the same requests with ``httpx.AsyncClient``, parses them with ``orjson``, retries
429 and 5xx itself as the SDK would (``Retry-After`` when sent, else jittered exponential backoff,
8 retries), keeps 8 calls in flight and writes with ``opensearchpy.helpers.bulk``. It has no pacer:
it learns the quota only from 429s, as a script does. The comparison with it shows what the
project's pacing, pipelining and packing are worth beyond the choice of HTTP client.
"""

from __future__ import annotations

import asyncio
import random
from typing import Any

import httpx
import orjson

from bench.peers import BATCH, bulk_into, chunks_of

NAME = "plain asyncio peer without the SDK (httpx + orjson, own retries)"
MODULES = ("httpx", "orjson")
RETRIES = 8
RETRYABLE = {408, 409, 429, 500, 502, 503, 504}


def missing() -> str | None:
    return None  # httpx and orjson are dependencies of the project itself


def backoff(attempt: int, retry_after: str | None) -> float:
    """Seconds to wait before retry ``attempt`` (0-based): the server's ``Retry-After`` when it
    sends seconds, else 0.5 s doubling to 8 s with jitter (the SDK's schedule)."""
    try:
        if retry_after is not None:
            return max(0.0, float(retry_after))
    except ValueError:
        pass
    return float(min(0.5 * 2.0**attempt, 8.0)) * (1 - 0.25 * random.random())


async def _embed(texts: list[str], base_url: str, api_key: str, model: str, concurrency: int) -> list[list[float]]:
    gate = asyncio.Semaphore(concurrency)
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    headers = {"Authorization": f"Bearer {api_key}", "Content-Type": "application/json"}
    async with httpx.AsyncClient(base_url=base_url, headers=headers, limits=limits, timeout=60) as http:

        async def one(batch: list[str]) -> list[list[float]]:
            body = orjson.dumps({"model": model, "input": batch, "encoding_format": "float"})
            async with gate:
                for attempt in range(RETRIES + 1):
                    r = await http.post("/embeddings", content=body)
                    if r.status_code not in RETRYABLE or attempt == RETRIES:
                        break
                    await asyncio.sleep(backoff(attempt, r.headers.get("retry-after")))
            r.raise_for_status()
            data = sorted(orjson.loads(r.content)["data"], key=lambda d: d["index"])
            return [d["embedding"] for d in data]

        parts = await asyncio.gather(*(one(texts[i : i + BATCH]) for i in range(0, len(texts), BATCH)))
    return [v for part in parts for v in part]


def index_file(
    s3: Any,
    bucket: str,
    key: str,
    *,
    base_url: str,
    api_key: str,
    model: str,
    dimensions: int,
    opensearch_url: str,
    index: str,
    concurrency: int,
) -> int:
    texts = chunks_of(s3, bucket, key)
    vectors = asyncio.run(_embed(texts, base_url, api_key, model, concurrency))
    return bulk_into(opensearch_url, index, dimensions, [(key, texts, vectors)])
