"""Scale: indexing time and peak memory for 1, 10 and 50 MB of text, each in a fresh process (so the
peak RSS is the indexer's alone), against stand-ins in their own processes."""

from __future__ import annotations

import json
import resource
import subprocess
import sys
import time
from pathlib import Path

from bench.harness import ROOT, environ, row, services

SIZES_MB: tuple[int, ...] = (1, 10, 50)
LAMBDA_MB = 1024


def upload(size_mb: int) -> str:
    """In the parent: `size_mb` of unique paragraphs (nothing served from the embedding cache)."""
    import boto3

    from standins.corpus import document

    sample = document(100)
    paragraphs = int(size_mb * 1_000_000 / (len(sample) / 100)) + 1
    body = document(paragraphs).encode()[: size_mb * 1_000_000]
    s3 = boto3.client("s3")
    s3.create_bucket(Bucket="bench-scale")
    return str(s3.put_object(Bucket="bench-scale", Key="big.txt", Body=body)["ETag"].strip('"'))


def peak_rss_kib() -> int:
    """This process's own peak RSS (KiB): ``VmHWM``, the high-water mark of its memory map, which
    execve starts afresh. Not ``ru_maxrss``: Linux carries the pre-exec image's high-water mark
    into it, so a child forked from the bench (with every peer library loaded) reported the
    bench's size, not the indexer's (proc(5) VmHWM; getrusage(2) ru_maxrss)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # elsewhere: an upper bound


def worker(size_mb: int, etag: str) -> None:
    """In a fresh child: index the object and print a JSON line; its peak RSS is the indexer's."""
    from indexer.events import ObjectEvent
    from indexer.handler import build_indexer

    ix = build_indexer()
    t0 = time.perf_counter()
    out = ix.handle(
        ObjectEvent(
            action="upsert", bucket="bench-scale", key="big.txt", etag=etag, sequencer="0A", size=size_mb * 1_000_000
        )
    )
    seconds = time.perf_counter() - t0
    peak = peak_rss_kib()
    print(
        json.dumps(
            {"mb": size_mb, "seconds": seconds, "chunks": out.chunks, "action": out.action, "peak_mb": peak / 1024}
        )
    )


def run() -> list[str]:
    results = []
    for mb in SIZES_MB:
        with (
            services() as svc,
            environ(
                svc.env(
                    OPENSEARCH_INDEX=f"bench-scale-{mb}",
                    MAX_FILE_BYTES=str(200_000_000),
                    POWERTOOLS_LOG_LEVEL="WARNING",
                )
            ),
        ):
            etag = upload(mb)
            out = subprocess.run(
                [sys.executable, "-m", "bench.scale", str(mb), etag],
                capture_output=True,
                text=True,
                check=True,
                cwd=ROOT,
            )
            results.append(json.loads(out.stdout.strip().splitlines()[-1]))
    base = results[0]
    rows = []
    for r in results:
        per_mb = r["seconds"] / r["mb"]
        growth = (r["seconds"] / base["seconds"]) / (r["mb"] / base["mb"])
        rows.append(
            row(
                f"Scale, {r['mb']} MB of text",
                f"{r['seconds']:.1f} s, {r['chunks']} chunks, peak RSS {r['peak_mb']:.0f} MB",
                f"{growth:.2f}× the 1 MB time per MB",
                f"{per_mb:.2f} s/MB; {r['peak_mb'] / LAMBDA_MB:.0%} of a 1 GB Lambda",
            )
        )
    return rows


if __name__ == "__main__":
    worker(int(sys.argv[1]), sys.argv[2])
