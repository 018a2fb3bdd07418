"""Streaming overhead: the chat endpoint (run as run.sh runs it: uvicorn in its own process) vs the
raw openai SDK calling the DashScope stand-in directly, same answer, at 1 stream and at 50
concurrent streams. Repetitions are interleaved (chat, raw, chat, raw, …) so drift affects both
alike; each figure is the median over repetitions of the per-repetition median over streams.

``BENCH_CHAT_SRC=/path/to/other/checkout`` runs the chat process from another checkout's code
(e.g. the commit before a change), for a before/after comparison on the same stand-ins.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from pathlib import Path

import boto3
import httpx
import openai
from httpx_sse import aconnect_sse
from indexer.events import ObjectEvent
from indexer.handler import build_indexer

from bench.harness import API_KEY, ROOT, environ, free_port, median, process, row, services

REPLY = " ".join(f"word{i}" for i in range(60))  # 60 streamed pieces in both paths
CHUNK_DELAY = 0.02
QUESTION = "How much are meals reimbursed per day when travelling?"
Figures = dict[str, float]


async def _chat_once(client: httpx.AsyncClient, url: str, token: str) -> Figures:
    t0 = time.perf_counter()
    first = retrieval = 0.0
    body = {"messages": [{"role": "user", "content": QUESTION}]}
    headers = {"Authorization": f"Bearer {token}"}
    async with aconnect_sse(client, "POST", f"{url}/chat/completions/stream", json=body, headers=headers) as src:
        async for sse in src.aiter_sse():
            if sse.event == "delta" and not first:
                first = time.perf_counter() - t0
            elif sse.event == "usage":
                retrieval = json.loads(sse.data)["latency_ms"]["retrieval"] / 1000
    return {"ttft": first, "total": time.perf_counter() - t0, "retrieval": retrieval}


async def _direct_once(client: openai.AsyncOpenAI) -> Figures:
    t0 = time.perf_counter()
    first = 0.0
    stream = await client.chat.completions.create(
        model="qwen-plus", messages=[{"role": "user", "content": QUESTION}], stream=True
    )
    async for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content and not first:
            first = time.perf_counter() - t0
    return {"ttft": first, "total": time.perf_counter() - t0, "retrieval": 0.0}


async def _round(concurrency: int, chat: bool, url: str, token: str) -> Figures:
    """``concurrency`` streams at once; the median stream's figures."""
    limits = httpx.Limits(max_connections=200)
    async with (
        httpx.AsyncClient(timeout=120, limits=limits) as http,
        openai.AsyncOpenAI(base_url=url, api_key=API_KEY, max_retries=0) as direct,
    ):
        runs = [_chat_once(http, url, token) if chat else _direct_once(direct) for _ in range(concurrency)]
        results = await asyncio.gather(*runs)
    return {k: median([r[k] for r in results]) for k in ("ttft", "total", "retrieval")}


LATENCIES = (0.0, 0.2)  # the stand-in's latency before each response: the embedding call's and the completion's


def run(reps: int = 5, latencies: tuple[float, ...] = LATENCIES, concurrencies: tuple[int, ...] = (1, 50)) -> list[str]:
    out: list[str] = []
    for latency in latencies:
        out += _run(reps, latency, concurrencies)
    return out


def _run(reps: int, latency: float, concurrencies: tuple[int, ...]) -> list[str]:
    with (
        services(chunk_delay=CHUNK_DELAY, reply=REPLY, latency=latency) as svc,
        environ(svc.env(OPENSEARCH_INDEX="bench-stream")),
    ):
        s3 = boto3.client("s3")
        s3.create_bucket(Bucket="bench-stream")
        ix = build_indexer()
        for n, path in enumerate(sorted(Path(ROOT, "samples").iterdir())):
            etag = s3.put_object(Bucket="bench-stream", Key=path.name, Body=path.read_bytes())["ETag"].strip('"')
            ix.handle(ObjectEvent(action="upsert", bucket="bench-stream", key=path.name, etag=etag, sequencer=f"0{n}"))
        ix.store.refresh()
        port, token = free_port(), "bench-chat-token-123456"
        src = os.environ.get("BENCH_CHAT_SRC")
        paths = [f"{src}/functions/chat", f"{src}/layers/shared"] if src else []
        env = svc.env(
            OPENSEARCH_INDEX="bench-stream",
            CHAT_AUTH_MODE="token",
            CHAT_API_TOKEN=token,
            POWERTOOLS_LOG_LEVEL="WARNING",
            PYTHONPATH=os.pathsep.join([*paths, str(ROOT)]),
        )
        out: list[str] = []
        with process(
            "-m", "uvicorn", "--host", "127.0.0.1", "--port", str(port), "chat.app:app", port=port, env=env, timeout=180
        ):
            url = f"http://127.0.0.1:{port}"
            for concurrency in concurrencies:
                asyncio.run(_round(concurrency, True, url, token))  # warm both paths
                asyncio.run(_round(concurrency, False, svc.dashscope_url, token))
                chat, raw = [], []
                for _ in range(reps):
                    chat.append(asyncio.run(_round(concurrency, True, url, token)))
                    raw.append(asyncio.run(_round(concurrency, False, svc.dashscope_url, token)))
                out += _rows(concurrency, chat, raw, reps, src, latency)
    return out


def _rows(
    concurrency: int, chat: list[Figures], raw: list[Figures], reps: int, src: str | None, latency: float
) -> list[str]:
    def m(rs: list[Figures], k: str) -> float:
        return median([r[k] for r in rs])

    c_total, r_total, c_ttft, r_ttft = m(chat, "total"), m(raw, "total"), m(chat, "ttft"), m(raw, "ttft")
    retrieval = m(chat, "retrieval")
    streams = f"{concurrency} concurrent stream{'s' if concurrency > 1 else ''}, {latency * 1000:.0f} ms latency"
    code = f" (code from {src})" if src else ""
    return [
        row(
            f"Stream, raw openai SDK → stand-in, {streams}",
            f"first token {r_ttft * 1000:.0f} ms, total {r_total * 1000:.0f} ms",
            "1.0×",
            f"60 pieces, {CHUNK_DELAY * 1000:.0f} ms apart, after the stand-in's {latency * 1000:.0f} ms latency "
            f"(every call: the embedding and the completion); median of {reps} interleaved repetitions",
        ),
        row(
            f"Stream, chat endpoint (uvicorn, SSE, RAG), {streams}{code}",
            f"first token {c_ttft * 1000:.0f} ms, total {c_total * 1000:.0f} ms",
            f"**{c_total / r_total:.3f}×** total, {(c_total - retrieval) / r_total:.3f}× beyond retrieval "
            "(target ≤ 1.10×)",
            f"retrieval (embed + k-NN) {retrieval * 1000:.0f} ms = {retrieval / c_total:.0%} of total; "
            f"first token +{(c_ttft - r_ttft) * 1000:.0f} ms over raw",
        ),
    ]
