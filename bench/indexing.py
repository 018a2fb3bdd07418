"""Indexing throughput at the quota ceiling: the real indexer (paced) vs a plain asyncio peer and the
seed's sequential design, same file, same chunks, same stand-ins (200 ms per embedding call), under
three quotas: a requests/s limit only; requests/s + tokens/s; three indexers sharing one quota.

Each scenario runs the contenders interleaved (project, peer, seed, project, …) and reports the
median of the repetitions: chunks/s, the share of the binding ceiling, and the stand-in's 429 count.
The binding ceiling is what the quota admits in chunks/s: min(requests/s, the calls of this size
that fit in one second's tokens) × 25 chunks per call.
"""

from __future__ import annotations

import contextlib
import importlib
import io
import itertools
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import boto3
import httpx
from indexer.events import ObjectEvent
from indexer.pipeline import Indexer, IndexerConfig
from rag_shared.config import Settings, load_settings
from rag_shared.dashscope import DashScopeClient
from rag_shared.embeddings import Embedder, pacer_from_settings
from rag_shared.secrets import ApiKeyProvider
from rag_shared.store import VectorStore

from bench import peers_httpx, peers_langchain, peers_llamaindex
from bench.harness import API_KEY, Services, environ, median, row, services
from bench.peers import (
    BATCH,
    chunks_of,
    plain_asyncio,
    plain_asyncio_files,
    plain_asyncio_files_batched,
    seed_design,
)
from standins.corpus import document, paragraph
from standins.dashscope import count_tokens

LATENCY = 0.2
CONCURRENCY = 8
REPEATS = 3
_runs = itertools.count()


@dataclass(frozen=True)
class Scenario:
    name: str
    rps: float
    tps: float | None
    indexers: int
    chunks: int  # per indexer


SCENARIOS = [
    Scenario("30 requests/s", 30, None, 1, 1000),
    Scenario("30 requests/s + 20k tokens/s", 30, 20000, 1, 600),
    Scenario("3 indexers sharing 30 requests/s", 30, None, 3, 800),
]


def _settings(sc: Scenario, index: str) -> Settings:
    return load_settings(
        opensearch_index=index,
        chunk_size_tokens=200,
        chunk_overlap_tokens=30,
        embedding_concurrency=CONCURRENCY,
        dashscope_rpm=int(sc.rps * 60),
        dashscope_tpm=int(sc.tps * 60) if sc.tps else None,
        dashscope_quota_share=sc.indexers,
    )


def _project(sc: Scenario, index: str, s3: Any) -> Indexer:
    """The indexer as the function should wire it: a pacer on the configured quota, and a client
    that leaves 429s to it (max_retries=0)."""
    settings = _settings(sc, index)
    client = DashScopeClient(settings, ApiKeyProvider.from_settings(settings), max_retries=0)
    embedder = Embedder(
        client, settings.embedder, settings.dimensions, concurrency=CONCURRENCY, pacer=pacer_from_settings(settings)
    )
    return Indexer(s3, VectorStore.from_settings(settings), embedder, IndexerConfig(chunk_size=200, chunk_overlap=30))


def _seed(sc: Scenario, index: str, s3: Any) -> Indexer:
    settings = _settings(sc, index)
    client = DashScopeClient(settings, ApiKeyProvider.from_settings(settings))
    embedder = Embedder(client, settings.embedder, settings.dimensions, concurrency=1)
    return Indexer(s3, VectorStore.from_settings(settings), embedder, IndexerConfig(chunk_size=200, chunk_overlap=30))


def _contenders(sc: Scenario, svc: Services, s3: Any, events: list[ObjectEvent]) -> dict[str, Callable[[], int]]:
    """Each contender indexes every file of the scenario (one indexer per file, concurrently)."""

    def project() -> int:
        index = f"bench-ours-{next(_runs)}"
        indexers = [_project(sc, index, s3) for _ in events]
        return _concurrently([partial(_handle, i, e) for i, e in zip(indexers, events, strict=True)])

    def peer() -> int:
        index = f"bench-peer-{next(_runs)}"
        model = load_settings().embedder
        return _concurrently(
            [
                partial(
                    plain_asyncio,
                    s3,
                    e.bucket,
                    e.key,
                    base_url=svc.dashscope_url,
                    api_key=API_KEY,
                    model=model.name,
                    dimensions=model.default_dimensions,
                    opensearch_url=svc.opensearch_url,
                    index=index,
                    concurrency=CONCURRENCY,
                )
                for e in events
            ]
        )

    def seed() -> int:
        index = f"bench-seed-{next(_runs)}"
        seeds = [_seed(sc, index, s3) for _ in events]
        return _concurrently([partial(seed_design, i, s3, e.bucket, e.key) for i, e in zip(seeds, events, strict=True)])

    found = {"this project (paced)": project, "plain asyncio peer": peer, "seed design (sequential)": seed}
    return found | _framework_peers(sc, svc, s3, events)


# the first is plain code (always runs); the other two need the optional extra '.[bench]'. First scenario only.
FRAMEWORK_PEERS = (peers_httpx, peers_llamaindex, peers_langchain)


def skipped_peers() -> list[str]:
    """A line for each framework peer that is not installed."""
    return [
        row(f"Indexing, {SCENARIOS[0].name}: {peer.NAME}", "skipped", "", reason)
        for peer in FRAMEWORK_PEERS
        if (reason := peer.missing())
    ]


def _framework_peers(sc: Scenario, svc: Services, s3: Any, events: list[ObjectEvent]) -> dict[str, Callable[[], int]]:
    """The LlamaIndex and LangChain peers, when installed, on the same files, chunks and stand-ins."""
    if sc is not SCENARIOS[0]:
        return {}
    model = load_settings().embedder
    found: dict[str, Callable[[], int]] = {}
    for peer in FRAMEWORK_PEERS:
        if peer.missing():
            continue
        for module in peer.MODULES:  # imported before timing, as in a process that already uses it
            importlib.import_module(module)

        def run(peer: Any = peer) -> int:
            index = f"bench-{peer.__name__.rsplit('_', 1)[-1]}-{next(_runs)}"
            jobs: list[Callable[[], int]] = [
                partial(
                    peer.index_file,
                    s3,
                    e.bucket,
                    e.key,
                    base_url=svc.dashscope_url,
                    api_key=API_KEY,
                    model=model.name,
                    dimensions=model.default_dimensions,
                    opensearch_url=svc.opensearch_url,
                    index=index,
                    concurrency=CONCURRENCY,
                )
                for e in events
            ]
            return _concurrently(jobs)

        found[peer.NAME] = run
    return found


def _ratio(ours: float, rate: float) -> str:
    """How a contender's rate compares with this project's, in words that read right either way."""
    if rate == ours:
        return "1.0×"
    if not rate:
        return "failed"
    return f"{ours / rate:.1f}× slower" if rate < ours else f"{rate / ours:.1f}× faster"


def _handle(indexer: Indexer, event: ObjectEvent) -> int:
    return indexer.handle(event).chunks


def _concurrently(jobs: list[Callable[[], int]]) -> int:
    """Run the jobs on their own threads (separate clients: indexers sharing one quota); total chunks."""
    results: list[int] = [0] * len(jobs)
    errors: list[BaseException] = []

    def run(n: int) -> None:
        try:
            results[n] = jobs[n]()
        except BaseException as exc:  # reported below: a contender that fails does not count
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(n,)) for n in range(len(jobs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    return sum(results)


def _ceiling(sc: Scenario, texts: list[str]) -> float:
    """Chunks/s the quota admits: requests/s, or the calls whose tokens fit in one second's window."""
    calls = [texts[i : i + BATCH] for i in range(0, len(texts), BATCH)]
    per_call = sum(sum(count_tokens(t) for t in c) for c in calls) / len(calls)
    return _calls_ceiling(sc, per_call) * len(texts) / len(calls)


def _calls_ceiling(sc: Scenario, tokens_per_call: float) -> float:
    if sc.tps:
        return min(sc.rps, float(int(sc.tps // tokens_per_call)))
    return sc.rps


def _warm_standin(svc: Services, texts: list[str]) -> None:
    """Have the stand-in compute (and keep) these texts' vectors before any contender is timed."""
    with httpx.Client(timeout=60, headers={"Authorization": f"Bearer {API_KEY}"}) as http:
        for i in range(0, len(texts), BATCH):
            body = {"model": load_settings().embedder.name, "input": texts[i : i + BATCH], "encoding_format": "float"}
            while http.post(f"{svc.dashscope_url}/embeddings", json=body).status_code == 429:
                time.sleep(0.2)


def _measure(svc: Services, fn: Callable[[], int]) -> dict[str, Any]:
    svc.dashscope_reset()
    t0 = time.perf_counter()
    try:
        chunks = fn()
        failed = None
    except Exception as exc:
        chunks, failed = 0, f"{type(exc).__name__}: {str(exc)[:80]}"
    seconds = time.perf_counter() - t0
    stats = svc.dashscope_stats()
    calls = stats["calls"].get("embeddings", {})
    ok = calls.get("200", 0)
    span = stats.get("embeddings_span", 0.0)
    return {
        "chunks": chunks,
        "rate": chunks / seconds,
        # calls/s the quota admitted, measured at the stand-in from the first admitted call to the
        # last: the share of the ceiling without the fixed per-file work around the embedding
        "admitted": (ok - 1) / span if span else float("nan"),
        "ok": ok,
        "throttled": calls.get("429", 0),
        "failed": failed,
    }


def run_scenario(sc: Scenario, repeats: int = REPEATS) -> list[str]:
    with (
        services(latency=LATENCY, rate_limit=sc.rps, tokens_limit=sc.tps) as svc,
        environ(svc.env()),
    ):
        s3 = boto3.client("s3")
        bucket = f"bench-{next(_runs)}"
        s3.create_bucket(Bucket=bucket)
        events = []
        for n in range(sc.indexers):
            key = f"big-{n}.txt"
            etag = s3.put_object(Bucket=bucket, Key=key, Body=document(sc.chunks).encode())["ETag"].strip('"')
            events.append(ObjectEvent(action="upsert", bucket=bucket, key=key, etag=etag, sequencer="0A"))
        texts = chunks_of(s3, bucket, events[0].key)
        assert len(texts) == sc.chunks, len(texts)
        _warm_standin(svc, texts)
        ceiling = _ceiling(sc, texts)
        contenders = _contenders(sc, svc, s3, events)
        results: dict[str, list[dict[str, Any]]] = {name: [] for name in contenders}
        for _ in range(repeats):  # interleaved: load on the shared machine hits every contender alike
            for name, fn in contenders.items():
                results[name].append(_measure(svc, fn))
    return _report(sc.name, sc.chunks * sc.indexers, ceiling, results)


# --- many small files: an SQS batch's records at once, their chunks packed into shared calls ---

SMALL_FILES = 200
# (SQS BatchSize, records at once, pack linger ms): the handler as the template deploys it, and the
# previous one-at-a-time behaviour (its BatchSize was 5)
HANDLER_MODES = {
    "this project (concurrent records + packing)": (50, 50, 20.0),
    "previous (one record at a time)": (5, 1, 0.0),
}


def _sqs_event(bodies: list[str]) -> dict[str, Any]:
    return {
        "Records": [
            {
                "messageId": f"m{n}",
                "receiptHandle": f"r{n}",
                "body": body,
                "attributes": {"ApproximateReceiveCount": "1"},
                "messageAttributes": {},
                "eventSource": "aws:sqs",
                "eventSourceARN": "arn:aws:sqs:us-east-1:123456789012:bench-index-queue",
                "awsRegion": "us-east-1",
            }
            for n, body in enumerate(bodies)
        ]
    }


def _s3_body(bucket: str, key: str, etag: str, seq: str) -> str:
    obj = {"key": key, "eTag": etag, "sequencer": seq, "size": 1}
    record = {
        "eventSource": "aws:s3",
        "eventName": "ObjectCreated:Put",
        "s3": {"bucket": {"name": bucket}, "object": obj},
    }
    return json.dumps({"Records": [record]})


def _handler_run(
    files: list[tuple[str, str]], bucket: str, mode: tuple[int, int, float], run: int, chunks: int
) -> Callable[[], int]:
    """The Lambda handler, fed the files in SQS batches of the mode's size (one instance, one
    batch after another), each run's events newer than the last (so every run indexes afresh)."""
    from indexer import handler

    from local.lambda_context import FakeContext

    batch, records, linger = mode

    def go() -> int:
        env = {
            "OPENSEARCH_INDEX": f"bench-small-{run}",
            "CHUNK_SIZE_TOKENS": "200",
            "CHUNK_OVERLAP_TOKENS": "30",
            "EMBEDDING_CONCURRENCY": str(CONCURRENCY),
            "DASHSCOPE_RPM": str(int(SMALL.rps * 60)),
            "INDEXER_RECORD_CONCURRENCY": str(records),
            "EMBEDDING_PACK_LINGER_MS": str(linger),
            "POWERTOOLS_METRICS_DISABLED": "true",
        }
        with environ(env):
            handler.reset()
            handler.logger.setLevel("ERROR")
            bodies = [_s3_body(bucket, k, etag, f"{run + 1:04X}") for k, etag in files]
            failed = 0
            with contextlib.redirect_stdout(io.StringIO()):  # the metrics' EMF lines
                for i in range(0, len(bodies), batch):
                    out = handler.lambda_handler(_sqs_event(bodies[i : i + batch]), FakeContext())
                    failed += len(out.get("batchItemFailures", []))
            handler.reset()
        if failed:
            raise RuntimeError(f"{failed} records failed")
        return chunks  # every record succeeded: all the files' chunks are indexed

    return go


SMALL = Scenario(f"{SMALL_FILES} small files (1-3 chunks)", 30, None, 1, 0)
# each file in its own calls (as a loop over files writes it); all chunks first, 25 per call across files
SMALL_PEERS = {
    "plain asyncio peer": plain_asyncio_files,
    "plain asyncio peer, chunks of all files batched 25 per call": plain_asyncio_files_batched,
}


def run_small_files(repeats: int = REPEATS) -> list[str]:
    """200 files of 1-3 chunks: the handler with concurrent records and packing vs the previous
    one-record-at-a-time handler vs the plain asyncio peer (all files at once). The ceiling is the
    requests/s quota × 25 chunks per call, reachable only by packing files into shared calls."""
    sc = SMALL
    with services(latency=LATENCY, rate_limit=sc.rps) as svc, environ(svc.env()):
        s3 = boto3.client("s3")
        bucket = f"bench-small-{next(_runs)}"
        s3.create_bucket(Bucket=bucket)
        files: list[tuple[str, str]] = []
        texts: list[str] = []
        for n in range(SMALL_FILES):
            key = f"small/{n:04d}.txt"
            body = "\n\n".join(paragraph(5000 + n * 3 + i) for i in range(1 + n % 3))
            files.append((key, s3.put_object(Bucket=bucket, Key=key, Body=body.encode())["ETag"].strip('"')))
            texts += chunks_of(s3, bucket, key)
        _warm_standin(svc, texts)
        expected = len(texts)
        ceiling = sc.rps * BATCH
        model = load_settings().embedder
        results: dict[str, list[dict[str, Any]]] = {name: [] for name in [*HANDLER_MODES, *SMALL_PEERS]}
        for _ in range(repeats):
            for name, mode in HANDLER_MODES.items():
                results[name].append(_measure(svc, _handler_run(files, bucket, mode, next(_runs), expected)))
            for name, plain in SMALL_PEERS.items():
                peer = partial(
                    plain,
                    s3,
                    bucket,
                    [k for k, _ in files],
                    base_url=svc.dashscope_url,
                    api_key=API_KEY,
                    model=model.name,
                    dimensions=model.default_dimensions,
                    opensearch_url=svc.opensearch_url,
                    index=f"bench-small-peer-{next(_runs)}",
                    concurrency=CONCURRENCY,
                )
                results[name].append(_measure(svc, peer))
    ours = median([m["rate"] for m in results[next(iter(HANDLER_MODES))]])
    lines = []
    for name, rs in results.items():
        rate = median([m["rate"] for m in rs])
        failures = [m["failed"] for m in rs if m["failed"] or m["chunks"] != expected]
        ratio = _ratio(ours, rate)
        note = (
            f"median {median([m['throttled'] for m in rs]):.0f} × 429 per run, "
            f"{median([m['ok'] for m in rs]):.0f} calls for {expected} chunks"
        )
        if failures:
            note += f"; {len(failures)}/{len(rs)} runs incomplete: {failures[0]}"
        lines.append(
            row(
                f"Indexing, {sc.name}: {name}",
                f"{rate:.0f} chunks/s end to end = {rate / ceiling:.0%} of the {ceiling:.0f} ceiling",
                ratio,
                note,
            )
        )
    return lines


# --- instances as separate processes, as Lambda runs them -------------------------------------

ROOT = Path(__file__).resolve().parents[1]


def template_max_concurrency() -> int:
    """IndexerMaxConcurrency's default in template.yaml, checked to be what the deployed stack divides
    the quota by: the indexer's DASHSCOPE_QUOTA_SHARE and its SQS event source's MaximumConcurrency
    both name that parameter, so each instance starts at quota / MaximumConcurrency."""
    from cfnlint.decode import decode  # type: ignore[import-untyped]

    template, errors = decode(str(ROOT / "template.yaml"))
    assert not errors, errors
    fn = template["Resources"]["IndexerFunction"]["Properties"]
    assert fn["Environment"]["Variables"]["DASHSCOPE_QUOTA_SHARE"] == {"Ref": "IndexerMaxConcurrency"}
    scaling = fn["Events"]["Documents"]["Properties"]["ScalingConfig"]
    assert scaling["MaximumConcurrency"] == {"Ref": "IndexerMaxConcurrency"}
    return int(template["Parameters"]["IndexerMaxConcurrency"]["Default"])


@dataclass(frozen=True)
class Fleet:
    """``instances`` busy indexer processes, one file each, deployed with ``max_concurrency`` (the
    template's IndexerMaxConcurrency: the event source's cap and the pacer's share); None: the
    template's default."""

    name: str
    rps: float
    instances: int
    chunks: int  # per instance
    max_concurrency: int | None = None


FLEETS = [
    Fleet("1 indexer process, 30 requests/s", 30, 1, 1000),
    Fleet("3 indexer processes sharing 30 requests/s", 30, 3, 800),
    Fleet("3 indexer processes sharing 30 requests/s, MaximumConcurrency 3", 30, 3, 800, 3),
]
FLEET_CONTENDERS = {
    "this project (paced)": "project",
    "plain asyncio peer": "peer",
    "seed design (sequential)": "seed",
}


def _fleet_env(fleet: Fleet, share: int) -> dict[str, str]:
    """The indexer's environment as the template sets it, with the bench's quota and chunking."""
    return {
        "DASHSCOPE_RPM": str(int(fleet.rps * 60)),
        "DASHSCOPE_QUOTA_SHARE": str(share),
        "CHUNK_SIZE_TOKENS": "200",
        "CHUNK_OVERLAP_TOKENS": "30",
        "EMBEDDING_CONCURRENCY": str(CONCURRENCY),
        "INDEXER_RECORD_CONCURRENCY": "50",
        "EMBEDDING_PACK_LINGER_MS": "20",
        "POWERTOOLS_LOG_LEVEL": "WARNING",
    }


def _fleet_run(svc: Services, contender: str, events: list[ObjectEvent], env: dict[str, str]) -> dict[str, Any]:
    """Start one process per event, wait until all are built, reset the stand-in, say go to all at
    once; timed from go to the last answer. The stand-in's counters are read as in :func:`_measure`."""
    index = f"bench-{contender}-{next(_runs)}"
    procs = []
    logs = []
    for e in events:
        log = tempfile.TemporaryFile()  # noqa: SIM115 - closed below
        args = [sys.executable, "-m", "bench.instance", contender, e.bucket, e.key, e.etag or "", index]
        procs.append(
            subprocess.Popen(
                [*args, str(CONCURRENCY)],
                cwd=ROOT,
                env={**os.environ, **env},
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=log,
                text=True,
            )
        )
        logs.append(log)
    try:
        for p, log in zip(procs, logs, strict=True):
            if p.stdout is None or p.stdout.readline().strip() != "ready":
                log.seek(0)
                raise RuntimeError(f"instance did not start: {log.read()[-400:]!r}")
        svc.dashscope_reset()
        t0 = time.perf_counter()
        for p in procs:
            assert p.stdin is not None
            p.stdin.write("go\n")
            p.stdin.flush()
        answers = [json.loads(p.stdout.readline() or '{"chunks": 0, "error": "no answer"}') for p in procs if p.stdout]
        seconds = time.perf_counter() - t0
    finally:
        for p, log in zip(procs, logs, strict=True):
            with contextlib.suppress(Exception):
                p.communicate(timeout=30)
            log.close()
    stats = svc.dashscope_stats()
    calls = stats["calls"].get("embeddings", {})
    ok = calls.get("200", 0)
    span = stats.get("embeddings_span", 0.0)
    chunks = sum(a["chunks"] for a in answers)
    errors = [a["error"] for a in answers if a.get("error")]
    return {
        "chunks": chunks,
        "rate": chunks / seconds,
        "admitted": (ok - 1) / span if span else float("nan"),
        "ok": ok,
        "throttled": calls.get("429", 0),
        "failed": errors[0] if errors else None,
    }


def run_fleet(fleet: Fleet, repeats: int = REPEATS) -> list[str]:
    """The fleet's contenders, each instance a process, interleaved, medians of ``repeats``."""
    share = fleet.max_concurrency or template_max_concurrency()
    sc = Scenario(fleet.name, fleet.rps, None, fleet.instances, fleet.chunks)
    with services(latency=LATENCY, rate_limit=fleet.rps) as svc, environ(svc.env()):
        s3 = boto3.client("s3")
        bucket = f"bench-{next(_runs)}"
        s3.create_bucket(Bucket=bucket)
        events = []
        for n in range(fleet.instances):
            key = f"big-{n}.txt"
            etag = s3.put_object(Bucket=bucket, Key=key, Body=document(fleet.chunks).encode())["ETag"].strip('"')
            events.append(ObjectEvent(action="upsert", bucket=bucket, key=key, etag=etag, sequencer="0A"))
        texts = chunks_of(s3, bucket, events[0].key)
        assert len(texts) == fleet.chunks, len(texts)
        _warm_standin(svc, texts)
        ceiling = _ceiling(sc, texts)
        env = _fleet_env(fleet, share)
        results: dict[str, list[dict[str, Any]]] = {name: [] for name in FLEET_CONTENDERS}
        for _ in range(repeats):  # interleaved: load on the shared machine hits every contender alike
            for name, contender in FLEET_CONTENDERS.items():
                results[name].append(_fleet_run(svc, contender, events, env))
    label = f"{fleet.name} (each paces to 1/{share} at first)"
    return _report(label, fleet.chunks * fleet.instances, ceiling, results)


def _report(label: str, expected: int, ceiling: float, results: dict[str, list[dict[str, Any]]]) -> list[str]:
    calls_ceiling = ceiling / BATCH
    ours = median([r["rate"] for r in results["this project (paced)"]])
    lines = []
    for name, rs in results.items():
        rate = median([r["rate"] for r in rs])
        admitted = median([r["admitted"] for r in rs]) / calls_ceiling
        throttled = median([r["throttled"] for r in rs])
        failures = [r["failed"] for r in rs if r["failed"] or r["chunks"] != expected]
        ratio = _ratio(ours, rate)
        target = " (target ≥ 90%)" if name.startswith("this") else ""
        note = f"median {throttled:.0f} × 429 per run, {median([r['ok'] for r in rs]):.0f} calls"
        if failures:
            note += f"; {len(failures)}/{len(rs)} runs incomplete: {failures[0]}"
        lines.append(
            row(
                f"Indexing, {label}: {name}",
                f"{rate:.0f} chunks/s end to end = {rate / ceiling:.0%} of the {ceiling:.0f} ceiling; "
                f"while embedding {admitted:.0%} of it{target}",
                ratio,
                note,
            )
        )
    return lines


def run_fleets(repeats: int = REPEATS) -> list[str]:
    return [line for fleet in FLEETS for line in run_fleet(fleet, repeats)]


def run() -> list[str]:
    lines: list[str] = run_small_files()
    for sc in SCENARIOS:
        lines += run_scenario(sc)
    lines += run_fleets()
    lines += skipped_peers()
    lines.append(
        row(
            "Indexing, setup",
            "",
            "",
            f"{LATENCY * 1000:.0f} ms per embedding call, {CONCURRENCY} calls in flight per indexer, 25 chunks per "
            f"call, medians of {REPEATS} interleaved runs; ratios are this project over the contender; the machine "
            "may be shared with other jobs, so only side-by-side ratios mean much",
        )
    )
    return lines
