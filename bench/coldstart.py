"""Cold start: each function's entry import in a fresh process (median of 5), what is deferred to
first use, and the built layer size (`sam build` output)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from bench.harness import ROOT, median, row

ENTRIES = {
    "indexer (import indexer.handler)": "import indexer.handler",
    "chat (import chat.app; create_app())": "import chat.app as a; a.create_app()",
    "deferred to first DashScope call (import openai)": "import openai",
}
IMPORT_TARGET = 0.5
LAYER_TARGET = 50 * 1024 * 1024


def _import_seconds(code: str) -> float:
    probe = f"import time; t = time.perf_counter(); {code}; print(time.perf_counter() - t)"
    out = subprocess.run(
        [sys.executable, "-c", probe],
        capture_output=True,
        text=True,
        check=True,
        cwd=ROOT,
        env={**os.environ, "CHAT_AUTH_MODE": "iam"},
    )
    return float(out.stdout.strip().splitlines()[-1])


def _size(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def run(repeats: int = 5) -> list[str]:
    rows = []
    for name, code in ENTRIES.items():
        seconds = median([_import_seconds(code) for _ in range(repeats)])
        target = "" if "deferred" in name else f"{seconds / IMPORT_TARGET:.2f}× of the 0.5 s target"
        rows.append(
            row(f"Cold import, {name}", f"{seconds * 1000:.0f} ms", target, f"median of {repeats} fresh processes")
        )
    layer = ROOT / ".aws-sam" / "build" / "SharedLayer"
    if layer.exists():
        size = _size(layer)
        rows.append(
            row(
                "Shared layer, unzipped",
                f"{size / 1e6:.1f} MB",
                f"{size / LAYER_TARGET:.2f}× of the 50 MB target",
                "sam build output; boto3 comes from the runtime",
            )
        )
        chat = ROOT / ".aws-sam" / "build" / "ChatFunction"
        rows.append(row("Chat function package, unzipped", f"{_size(chat) / 1e6:.1f} MB", "", "FastAPI + uvicorn"))
    else:
        rows.append(row("Shared layer", "not built", "", "run `sam build` first (make bench does)"))
    return rows
