"""`make bench` (python -m bench [indexing streaming coldstart scale backfill]): print each figure with its
ratio, measured side by side in this run, and write bench/RESULTS.md.

``BENCH_QUICK=1`` (`make bench QUICK=1`): the same benchmarks with fewer runs, for a shared machine
where the full set takes most of an hour: indexing's first scenario only (the one the framework
peers run in), 3 repetitions of the streams and cold starts instead of 5, scale without the 50 MB file."""

from __future__ import annotations

import datetime
import os
import platform
import sys
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

from bench import backfill, coldstart, indexing, scale, streaming

BENCHES: dict[str, Callable[[], list[str]]] = {
    "indexing": indexing.run,
    "streaming": streaming.run,
    "coldstart": coldstart.run,
    "scale": scale.run,
    "backfill": backfill.run,
}


def _quick_indexing() -> list[str]:
    return indexing.run_scenario(indexing.SCENARIOS[0]) + indexing.skipped_peers()


def _quick_scale() -> list[str]:
    scale.SIZES_MB = scale.SIZES_MB[:2]
    return scale.run()


QUICK: dict[str, Callable[[], list[str]]] = {
    "indexing": _quick_indexing,
    "streaming": partial(streaming.run, reps=3),
    "coldstart": partial(coldstart.run, repeats=3),
    "scale": _quick_scale,
}
HEADER = ["| Benchmark | Measured | Ratio | Notes |", "|---|---|---|---|"]


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = ""
    try:
        kib = int(Path("/proc/meminfo").read_text().split()[1])
        mem = f", {kib / 1024 / 1024:.0f} GiB"
    except (OSError, ValueError, IndexError):
        pass
    return f"{os.cpu_count()} cores ({cpu}){mem}, Python {platform.python_version()}, {platform.system()}"


def kept_sections(path: Path) -> str:
    """The ``## `` sections after the table of an existing results file (figures other benches or
    runs added by hand), kept when the table is rewritten."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError:
        return ""
    start = next((i for i, line in enumerate(lines) if line.startswith("## ")), None)
    return "" if start is None else "\n".join(["", *lines[start:], ""])


def main(argv: list[str]) -> int:
    quick = os.environ.get("BENCH_QUICK", "") not in ("", "0")
    chosen = argv or list(QUICK if quick else BENCHES)
    rows = list(HEADER)
    started = time.perf_counter()
    for name in chosen:
        print(f"running {name}{' (quick)' if quick else ''}…", file=sys.stderr, flush=True)
        for line in (QUICK if quick else BENCHES)[name]():
            if len(rows) == len(HEADER):
                print("\n".join(HEADER), flush=True)
            print(line, flush=True)
            rows.append(line)
    when = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    took = f"{(time.perf_counter() - started) / 60:.0f} minutes"
    mode = f"`make bench QUICK=1` ({took}: fewer runs, see bench/__main__.py)" if quick else f"`make bench` ({took})"
    text = "\n".join(
        [
            "# Benchmark results",
            "",
            f"Measured {when} on {machine()} with {mode}. Every ratio compares two things measured in the",
            "same run against the same loopback stand-ins (each service in its own process).",
            "",
            *rows,
            "",
        ]
    )
    if not argv:
        # `make bench` writes to the untracked .bench/; `make bench-results` to the tracked bench/RESULTS.md
        out = Path(os.environ.get("BENCH_RESULTS") or Path(__file__).with_name("RESULTS.md"))
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text + kept_sections(out), encoding="utf-8")
        print(f"\nwritten to {out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
