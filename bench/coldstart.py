"""Cold start: each function's entry import in a fresh process (median of 5), what is deferred to
first use, and the built layer size (`sam build` output)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from bench.harness import ROOT, median, row

ENTRIES = {
    "indexer": ("IndexerFunction", "import indexer.handler"),
    "chat": ("ChatFunction", "import chat.app as a; a.create_app()"),
}
DEFERRED = "import openai"  # paid on the first DashScope call, not at start
IMPORT_TARGET = 0.5
LAYER_TARGET = 50_000_000
BUILD = ROOT / ".aws-sam" / "build"
# what the python3.12 Lambda runtime itself provides (so neither the layer nor the function ships it)
RUNTIME_PACKAGES = {"boto3", "botocore", "s3transfer", "jmespath", "dateutil", "six", "urllib3"}

# Run first in the probe: a finder that refuses any top-level package the deployment does not ship,
# as Lambda would (the layer is built for arm64, so its compiled wheels cannot load on this machine;
# the venv's copies of the same packages stand in for them, but nothing else may be imported).
_GUARD = """
import sys
ALLOWED = {allowed!r}
from importlib.machinery import PathFinder
class _OnlyShipped:
    def find_spec(self, name, path=None, target=None):
        if path is not None or name in ALLOWED or name in sys.stdlib_module_names:
            return None
        spec = PathFinder.find_spec(name)
        if spec is not None and "site-packages" in str(spec.origin or spec.submodule_search_locations):
            raise ModuleNotFoundError(f"No module named {{name!r}} (not in the deployment)", name=name)
        return None
sys.meta_path.insert(0, _OnlyShipped())
"""


def shipped(*dirs: Path) -> set[str]:
    """Top-level import names present in built artifact folders."""
    names = set(RUNTIME_PACKAGES)
    for d in dirs:
        for entry in d.iterdir():
            if entry.name.endswith((".dist-info", ".data", ".txt", ".sh")) or entry.name.startswith("."):
                continue
            names.add(entry.name.removesuffix(".py").split(".")[0])
    return names


def _import_seconds(code: str, allowed: set[str] | None) -> float:
    """One fresh interpreter; with ``allowed``, only what the deployment ships can be imported."""
    guard = _GUARD.format(allowed=sorted(allowed)) if allowed else ""
    probe = f"{guard}\nimport time\nt = time.perf_counter()\n{code}\nprint(time.perf_counter() - t)"
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
    layer = BUILD / "SharedLayer" / "python"
    for name, (function, code) in ENTRIES.items():
        built = layer.exists() and (BUILD / function).exists()
        allowed = shipped(BUILD / function, layer) if built else None
        seconds = median([_import_seconds(code, allowed) for _ in range(repeats)])
        where = "only what sam build ships (+ the runtime's boto3)" if built else "the dev venv (run sam build)"
        rows.append(
            row(
                f"Cold import, {name} (`{code}`)",
                f"{seconds * 1000:.0f} ms",
                f"{seconds / IMPORT_TARGET:.2f}× of the 0.5 s target",
                f"median of {repeats} fresh processes; importable: {where}",
            )
        )
    allowed = shipped(layer) if layer.exists() else None
    seconds = median([_import_seconds(DEFERRED, allowed) for _ in range(repeats)])
    rows.append(row("Deferred to the first DashScope call (`import openai`)", f"{seconds * 1000:.0f} ms", "", ""))
    if layer.exists():
        size = _size(layer.parent)
        rows.append(
            row(
                "Shared layer, unzipped",
                f"{size / 1e6:.1f} MB",
                f"{size / LAYER_TARGET:.2f}× of the 50 MB target",
                "sam build output (arm64); boto3 comes from the runtime",
            )
        )
        chat = BUILD / "ChatFunction"
        rows.append(row("Chat function package, unzipped", f"{_size(chat) / 1e6:.1f} MB", "", "FastAPI + uvicorn"))
    else:
        rows.append(row("Shared layer", "not built", "", "run `sam build` first (make bench does)"))
    return rows


if __name__ == "__main__":
    print(sorted(shipped(BUILD / "IndexerFunction", BUILD / "SharedLayer" / "python")))
