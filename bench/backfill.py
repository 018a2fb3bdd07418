"""Backfill throughput: fan-out through the queue with W indexer workers vs the in-process sequential
mode, same small files, same stand-ins (150 ms per embedding call, a requests/s quota).

Fan-out: the planner enqueues one message per file on a moto SQS queue, and W workers each run the
indexer's Lambda handler on what they receive (local/sqs_pump.pump, as Lambda's SQS event source
mapping does), until the queue is empty; the time is planning plus draining. The workers are
threads of this process sharing one warm indexer (one pacer on the quota, as the fleet shares the
account's quota), not separate processes. Sequential: ``backfill --local --workers 1``. Each
repetition runs every contender on a fresh bucket and index, interleaved; medians are reported,
with the ratio to sequential and to W=1, and the share of the quota's ceiling (one embedding call
per file, so the ceiling in files/s is the quota's requests/s).
"""

from __future__ import annotations

import contextlib
import functools
import io
import itertools
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

import boto3

from bench.harness import Services, environ, median, row, services

FILES = 100
LATENCY = 0.15
RATE = 20.0  # requests/s the stand-in admits: the ceiling in files/s
WORKERS = (1, 2, 4, 8)
REPEATS = 3
_runs = itertools.count()


def _bucket(svc: Services, n: int) -> str:
    s3 = boto3.client("s3")
    name = f"bench-backfill-{next(_runs)}"
    s3.create_bucket(Bucket=name)
    for i in range(n):  # distinct texts: nothing is served from the embedding cache
        s3.put_object(Bucket=name, Key=f"docs/{i:04d}.txt", Body=f"Backfill file {i} of run {name}.".encode())
    return name


def _fresh(index: str) -> None:
    import os

    from indexer import handler

    os.environ["OPENSEARCH_INDEX"] = index
    handler.reset()


def _sequential(bucket: str) -> int:
    from indexer import backfill
    from indexer.handler import build_indexer

    summary = backfill.backfill(build_indexer(), bucket, "docs/", progress=False, workers=1)
    return int(summary.actions["indexed"])


def _local_pool(bucket: str, workers: int) -> int:
    from indexer import backfill
    from indexer.handler import build_indexer

    summary = backfill.backfill(build_indexer(), bucket, "docs/", progress=False, workers=workers)
    return int(summary.actions["indexed"])


def _fan_out(bucket: str, workers: int) -> int:
    from indexer import backfill, planner
    from indexer.handler import get_indexer

    from local.sqs_pump import pump, queue_empty

    sqs = boto3.client("sqs")
    url = sqs.create_queue(QueueName=f"{bucket}-q")["QueueUrl"]
    ix = get_indexer()
    summary = planner.plan(
        backfill.list_objects(ix.s3, bucket, "docs/"), ix.commits, planner.QueueSink(sqs, url), bucket
    )

    def worker() -> None:
        client = boto3.client("sqs")
        while True:
            if pump(client, url, max_rounds=1, wait_seconds=0):
                continue
            if queue_empty(client, url):
                return
            time.sleep(0.05)

    threads = [threading.Thread(target=worker) for _ in range(workers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    done = ix.commits.get_many(f"docs/{i:04d}.txt" for i in range(summary.enqueued))
    return sum(1 for c in done.values() if c.version is not None)


def _measure(svc: Services, bucket: str, fn: Callable[[str], int]) -> dict[str, Any]:
    _fresh(f"bench-backfill-{next(_runs)}")
    svc.dashscope_reset()
    t0, c0 = time.perf_counter(), time.process_time()
    files = fn(bucket)
    seconds, cpu = time.perf_counter() - t0, time.process_time() - c0
    calls = svc.dashscope_stats()["calls"].get("embeddings", {})
    # CPU seconds of this process per wall second: near 1.0, the workers wait on the GIL, not the network
    return {"rate": files / seconds, "files": files, "throttled": calls.get("429", 0), "cpu": cpu / seconds}


def run(repeats: int = REPEATS, files: int = FILES) -> list[str]:
    contenders: dict[str, Callable[[str], int]] = {"in-process sequential (--local --workers 1)": _sequential}
    for w in WORKERS:
        contenders[f"fan-out, W={w} queue workers"] = functools.partial(_fan_out, workers=w)
    contenders["in-process pool (--local --workers 8)"] = functools.partial(_local_pool, workers=8)
    results: dict[str, list[dict[str, Any]]] = {name: [] for name in contenders}
    with services(latency=LATENCY, rate_limit=RATE) as svc:
        env = svc.env(
            DASHSCOPE_RPM=str(int(RATE * 60)),
            CHUNK_SIZE_TOKENS="200",
            CHUNK_OVERLAP_TOKENS="30",
            RETRY_BASE_SECONDS="0",
            POWERTOOLS_METRICS_NAMESPACE="QwenRagBench",
            POWERTOOLS_LOG_LEVEL="ERROR",
            POWERTOOLS_METRICS_DISABLED="true",  # no EMF lines on stdout
        )
        from indexer import handler

        handler.logger.setLevel(logging.ERROR)  # created at import, before POWERTOOLS_LOG_LEVEL was set
        # the metrics' EMF lines are printed at each invocation's end: kept out of the results
        with environ(env), contextlib.redirect_stdout(io.StringIO()):
            for _ in range(repeats):
                for name, fn in contenders.items():  # interleaved: each repetition runs every contender
                    results[name].append(_measure(svc, _bucket(svc, files), fn))
    seq = median([r["rate"] for r in results["in-process sequential (--local --workers 1)"]])
    one = median([r["rate"] for r in results["fan-out, W=1 queue workers"]])
    lines = []
    for name, rs in results.items():
        rate = median([r["rate"] for r in rs])
        complete = all(r["files"] == files for r in rs)
        ratio = f"{rate / seq:.1f}× sequential" + (f", {rate / one:.1f}× W=1" if "fan-out" in name else "")
        lines.append(
            row(
                f"Backfill of {files} small files: {name}",
                f"{rate:.1f} files/s",
                ratio,
                f"{rate / RATE:.0%} of the {RATE:.0f} files/s quota ceiling ({LATENCY * 1000:.0f} ms per embedding"
                f" call); median of {repeats}; 429s {median([r['throttled'] for r in rs]):.0f}; client process"
                f" {median([r['cpu'] for r in rs]):.2f} CPU s per s" + ("" if complete else "; SOME FILES NOT INDEXED"),
            )
        )
    return lines
