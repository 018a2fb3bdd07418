"""`make bench` (python -m bench [indexing streaming coldstart scale backfill]): print each figure with its
ratio, measured side by side in this run, and write bench/RESULTS.md."""

from __future__ import annotations

import datetime
import os
import platform
import sys
from collections.abc import Callable
from pathlib import Path

from bench import backfill, coldstart, indexing, scale, streaming

BENCHES: dict[str, Callable[[], list[str]]] = {
    "indexing": indexing.run,
    "streaming": streaming.run,
    "coldstart": coldstart.run,
    "scale": scale.run,
    "backfill": backfill.run,
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


def main(argv: list[str]) -> int:
    chosen = argv or list(BENCHES)
    rows = list(HEADER)
    for name in chosen:
        print(f"running {name}…", file=sys.stderr, flush=True)
        for line in BENCHES[name]():
            if len(rows) == len(HEADER):
                print("\n".join(HEADER), flush=True)
            print(line, flush=True)
            rows.append(line)
    when = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    text = "\n".join(
        [
            "# Benchmark results",
            "",
            f"Measured {when} on {machine()} with `make bench`. Every ratio compares two things measured in the",
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
        out.write_text(text, encoding="utf-8")
        print(f"\nwritten to {out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
