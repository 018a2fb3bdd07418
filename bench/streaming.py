"""Streaming overhead: the chat endpoint (run as run.sh runs it: uvicorn in its own process, no
access log) vs the raw openai SDK calling the DashScope stand-in directly, same answer, at 1 stream
and at 50 concurrent streams. Repetitions are interleaved (chat, raw, chat, raw, …) so drift affects
both alike; each figure is the median over repetitions of the per-repetition median over streams.
A control row streams the stand-in with the chat side's own client code (httpx + httpx-sse), and
each row gives the CPU seconds every process spent per repetition (Linux /proc): on a shared
2-core machine the stand-ins' CPU is part of what a side waits for.

``BENCH_CHAT_SRC=/path/to/other/checkout`` runs the chat process from another checkout's code
(e.g. the commit before a change), for a before/after comparison on the same stand-ins.
"""

from __future__ import annotations

import asyncio
import json
import os
import resource
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


async def _httpx_once(client: httpx.AsyncClient, url: str) -> Figures:
    """The stand-in streamed with the chat side's client code (the control: same parser both ways)."""
    t0 = time.perf_counter()
    first = 0.0
    body = {"model": "qwen-plus", "messages": [{"role": "user", "content": QUESTION}], "stream": True}
    headers = {"Authorization": f"Bearer {API_KEY}"}
    async with aconnect_sse(client, "POST", f"{url}/chat/completions", json=body, headers=headers) as src:
        async for sse in src.aiter_sse():
            if sse.data == "[DONE]":
                break
            choices = json.loads(sse.data).get("choices") or [{}]
            if choices[0].get("delta", {}).get("content") and not first:
                first = time.perf_counter() - t0
    return {"ttft": first, "total": time.perf_counter() - t0, "retrieval": 0.0}


SIDES = ("chat", "raw", "httpx")


async def _round(concurrency: int, side: str, url: str, token: str) -> Figures:
    """``concurrency`` streams at once; the median stream's figures."""
    limits = httpx.Limits(max_connections=200)
    async with (
        httpx.AsyncClient(timeout=120, limits=limits) as http,
        openai.AsyncOpenAI(base_url=url, api_key=API_KEY, max_retries=0) as direct,
    ):
        runs = [
            _chat_once(http, url, token)
            if side == "chat"
            else _direct_once(direct)
            if side == "raw"
            else _httpx_once(http, url)
            for _ in range(concurrency)
        ]
        results = await asyncio.gather(*runs)
    return {k: median([r[k] for r in results]) for k in ("ttft", "total", "retrieval")}


def _cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process (Linux /proc/<pid>/stat, fields 14 and 15)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _processes() -> dict[str, int]:
    """This process's children (the stand-ins and the chat app) by a short name."""
    names = {"moto.server": "moto", "standins.dashscope": "DashScope", "standins.opensearch": "OpenSearch"}
    out: dict[str, int] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                cmd = f.read().decode(errors="replace")
        except OSError:
            continue
        if ppid == os.getpid():
            name = next((v for k, v in names.items() if k in cmd), "chat app" if "uvicorn" in cmd else None)
            if name:
                out[name] = int(entry)
    return out


def _measured(concurrency: int, side: str, url: str, token: str) -> Figures:
    """One repetition, with the CPU seconds each process (and this client) spent in it."""
    if not os.path.isdir("/proc"):
        return asyncio.run(_round(concurrency, side, url, token))
    procs = _processes()
    before = {name: _cpu_seconds(pid) for name, pid in procs.items()}
    own = resource.getrusage(resource.RUSAGE_SELF)
    figures = asyncio.run(_round(concurrency, side, url, token))
    after = resource.getrusage(resource.RUSAGE_SELF)
    figures["cpu:bench client"] = after.ru_utime + after.ru_stime - own.ru_utime - own.ru_stime
    for name, pid in procs.items():
        figures[f"cpu:{name}"] = _cpu_seconds(pid) - before[name]
    return figures


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
        # run.sh's command line (functions/chat/run.sh): no access log, the Web Adapter's keep-alive
        server = ["-m", "uvicorn", "--host", "127.0.0.1", "--port", str(port), "--no-access-log"]
        server += ["--timeout-keep-alive", "60", "chat.app:app"]
        with process(*server, port=port, env=env, timeout=180):
            url = f"http://127.0.0.1:{port}"
            urls = {"chat": url, "raw": svc.dashscope_url, "httpx": svc.dashscope_url}
            for concurrency in concurrencies:
                for side in SIDES:  # warm every path
                    asyncio.run(_round(concurrency, side, urls[side], token))
                runs: dict[str, list[Figures]] = {side: [] for side in SIDES}
                for _ in range(reps):
                    for side in SIDES:
                        runs[side].append(_measured(concurrency, side, urls[side], token))
                out += _rows(concurrency, runs, reps, src, latency)
    return out


def _cpu(rs: list[Figures]) -> str:
    """Median CPU seconds per repetition of each process that spent any."""
    names = sorted({k for r in rs for k in r if k.startswith("cpu:")})
    parts = [f"{n[4:]} {median([r.get(n, 0.0) for r in rs]):.2f}" for n in names]
    shown = [p for p in parts if not p.endswith(" 0.00")]
    return f"; CPU s per repetition: {', '.join(shown)}" if shown else ""


def _rows(concurrency: int, runs: dict[str, list[Figures]], reps: int, src: str | None, latency: float) -> list[str]:
    def m(side: str, k: str) -> float:
        return median([r[k] for r in runs[side]])

    c_total, r_total, c_ttft, r_ttft = m("chat", "total"), m("raw", "total"), m("chat", "ttft"), m("raw", "ttft")
    h_total, h_ttft = m("httpx", "total"), m("httpx", "ttft")
    retrieval = m("chat", "retrieval")
    streams = f"{concurrency} concurrent stream{'s' if concurrency > 1 else ''}, {latency * 1000:.0f} ms latency"
    code = f" (code from {src})" if src else ""
    return [
        row(
            f"Stream, raw openai SDK → stand-in, {streams}",
            f"first token {r_ttft * 1000:.0f} ms, total {r_total * 1000:.0f} ms",
            "1.0×",
            f"60 pieces, {CHUNK_DELAY * 1000:.0f} ms apart, after the stand-in's {latency * 1000:.0f} ms latency "
            f"(every call: the embedding, the rerank and the completion); median of {reps} interleaved "
            f"repetitions{_cpu(runs['raw'])}",
        ),
        row(
            f"Stream, httpx + httpx-sse (the chat side's client code) → stand-in, {streams}",
            f"first token {h_ttft * 1000:.0f} ms, total {h_total * 1000:.0f} ms",
            f"{h_total / r_total:.3f}× of raw SDK",
            f"control: the same parser on both sides{_cpu(runs['httpx'])}",
        ),
        row(
            f"Stream, chat endpoint (uvicorn, SSE, RAG), {streams}{code}",
            f"first token {c_ttft * 1000:.0f} ms, total {c_total * 1000:.0f} ms",
            f"**{c_total / r_total:.3f}×** total, {(c_total - retrieval) / r_total:.3f}× beyond retrieval "
            f"(target ≤ 1.10×); {c_total / h_total:.3f}× of the httpx control",
            f"retrieval (embed + search + commit check + rerank) {retrieval * 1000:.0f} ms = "
            f"{retrieval / c_total:.0%} of total; first token +{(c_ttft - r_ttft) * 1000:.0f} ms over raw"
            f"{_cpu(runs['chat'])}",
        ),
    ]
