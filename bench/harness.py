"""Services for benchmarks, each in its own process so their CPU does not share the product's GIL:
moto's server, the DashScope stand-in (with latency and a rate limit) and the OpenSearch stand-in."""

from __future__ import annotations

import contextlib
import os
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parents[1]
API_KEY = "sk-bench-standin-key-0001"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_port(port: int, proc: subprocess.Popen[bytes], timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{proc.args!r} exited with {proc.returncode}")
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise RuntimeError(f"{proc.args!r} did not listen on {port}")


@contextlib.contextmanager
def process(
    *args: str, port: int, env: dict[str, str] | None = None, timeout: float = 20
) -> Iterator[subprocess.Popen[bytes]]:
    proc = subprocess.Popen(
        [sys.executable, *args],
        cwd=ROOT,
        env={**os.environ, **(env or {})},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        _wait_port(port, proc, timeout)
        yield proc
    finally:
        proc.terminate()
        proc.wait(timeout=10)


BENCH_REGION = "cn-beijing"
COMMIT_TABLE = "bench-commits"


@dataclass
class Services:
    moto_url: str
    dashscope_url: str  # base URL incl. /compatible-mode/v1
    opensearch_url: str

    def env(self, **extra: str) -> dict[str, str]:
        return {
            "AWS_ENDPOINT_URL": self.moto_url,
            "AWS_ACCESS_KEY_ID": "bench",
            "AWS_SECRET_ACCESS_KEY": "bench",
            "AWS_DEFAULT_REGION": "us-east-1",
            "DASHSCOPE_BASE_URL": self.dashscope_url,
            "DASHSCOPE_API_KEY": API_KEY,
            # the figures so far were measured with text-embedding-v2 (25 texts per call), served only in Beijing
            "DASHSCOPE_REGION": BENCH_REGION,
            "EMBEDDING_MODEL": "text-embedding-v2",
            "OPENSEARCH_URL": self.opensearch_url,
            "COMMIT_TABLE": COMMIT_TABLE,
            **extra,
        }

    def dashscope_stats(self) -> dict[str, Any]:
        root = self.dashscope_url.removesuffix("/compatible-mode/v1")
        return httpx.get(f"{root}/_standin/stats", timeout=10).json()  # type: ignore[no-any-return]

    def dashscope_reset(self) -> None:
        root = self.dashscope_url.removesuffix("/compatible-mode/v1")
        httpx.post(f"{root}/_standin/reset", timeout=10)


@contextlib.contextmanager
def services(
    *,
    latency: float = 0.0,
    rate_limit: float | None = None,
    tokens_limit: float | None = None,
    chunk_delay: float = 0.0,
    reply: str | None = None,
) -> Iterator[Services]:
    mp, dp, op = free_port(), free_port(), free_port()
    ds_args = [
        "-m",
        "standins.dashscope",
        "--port",
        str(dp),
        "--latency",
        str(latency),
        "--chunk-delay",
        str(chunk_delay),
        "--region",
        BENCH_REGION,
    ]
    if rate_limit:
        ds_args += ["--rate-limit", str(rate_limit)]
    if tokens_limit:
        ds_args += ["--tokens-limit", str(tokens_limit)]
    if reply:
        ds_args += ["--reply", reply]
    with (
        process("-m", "moto.server", "-H", "127.0.0.1", "-p", str(mp), port=mp),
        process(*ds_args, port=dp, env={"STANDIN_API_KEY": API_KEY}),
        process("-m", "standins.opensearch", "--port", str(op), port=op),
    ):
        import boto3
        from rag_shared.commits import create_table

        ddb = boto3.client(
            "dynamodb",
            endpoint_url=f"http://127.0.0.1:{mp}",
            region_name="us-east-1",
            aws_access_key_id="bench",
            aws_secret_access_key="bench",  # noqa: S106 - moto accepts anything
        )
        create_table(ddb, COMMIT_TABLE)  # the indexer's commit table, as the template declares it
        yield Services(f"http://127.0.0.1:{mp}", f"http://127.0.0.1:{dp}/compatible-mode/v1", f"http://127.0.0.1:{op}")


@contextlib.contextmanager
def environ(values: dict[str, str]) -> Iterator[None]:
    saved = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def median(xs: list[float]) -> float:
    return statistics.median(xs) if xs else float("nan")


def row(name: str, value: str, ratio: str = "", note: str = "") -> str:
    return f"| {name} | {value} | {ratio} | {note} |"
