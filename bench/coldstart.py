"""Cold start from the built artifacts, as Lambda runs them.

`make build`'s output for this machine's architecture is packaged the way `sam deploy` packages it
(samcli's own zip function, every file dated 1980), unpacked to a task folder and an /opt folder made
read-only (Lambda mounts layers read-only, so Python cannot cache what it compiles), and imported by
a fresh interpreter with no site-packages and ``-B`` (no bytecode written), with only the function,
the layer's ``python/`` and the runtime's own packages (boto3...) on sys.path. Measured with the
bytecode `make build` ships and with it stripped (what a bare `sam build` ships), interleaved,
medians; the probe also counts the modules Python had to compile from source.
"""

from __future__ import annotations

import compileall
import contextlib
import importlib.util
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from bench.harness import ROOT, median, row

HOST_ARCH = {"x86_64": "x86_64", "amd64": "x86_64", "aarch64": "arm64", "arm64": "arm64"}[platform.machine().lower()]
# What each function imports before it can serve: the handler module; for chat, what run.sh starts
# (`python -m chat`: uvicorn's Config and Server, without its command line) up to the server's
# Config.load(), which imports the protocol modules and builds the app (chat.app:app).
ENTRIES = {
    "IndexerFunction": "import indexer.handler",
    "ChatFunction": "import chat.__main__ as m\nm.server(0).config.load()",
}
# The same for chat as `python -m uvicorn ... chat.app:app` started it before (its command line: click)
UVICORN_CLI = "import uvicorn.main\nfrom uvicorn.config import Config\nConfig('chat.app:app', port=0).load()"
# What each function loads and builds after its imports and before its first answer, without the
# network: the indexer in build_indexer (first event), the chat in its app's start-up (lifespan:
# build_deps, warm_up), which the Web Adapter waits for. Imported on first use, not at start, so they
# are not in ENTRIES; the clients are built as there (botocore loads each service's model).
FIRST_USE = {
    "IndexerFunction": "from rag_shared.store import VectorStore\nimport boto3\n"
    "boto3.client('s3')\nboto3.client('dynamodb')",
    "ChatFunction": "from rag_shared.store import VectorStore\nimport boto3\nboto3.client('dynamodb')",
}
IMPORT_TARGET = 0.4  # issue 14: <= 400 ms each
# what the python3.12 Lambda runtime itself provides (neither the layer nor a function ships it)
RUNTIME_PACKAGES = ("boto3", "botocore", "s3transfer", "jmespath", "dateutil", "six", "urllib3")


def build(arch: str, build_dir: Path | None = None) -> Path:
    """`make build ARCH=arch` in a workspace of its own (.aws-sam/<arch>/): sam build, then the bytecode.

    SAM keeps its cache index (build.toml) next to the build folder and its dependency cache in
    ./.aws-sam/deps of the working directory, and deletes what the current build does not use: builds
    for two architectures sharing them would evict each other's cache on every run."""
    workspace = ROOT / ".aws-sam" / arch
    build_dir = build_dir or workspace / "build"
    workspace.mkdir(parents=True, exist_ok=True)
    bin_dir = Path(sys.executable).parent
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}", "SAM_CLI_TELEMETRY": "0"}
    shutil.rmtree(build_dir, ignore_errors=True)
    sam = [str(bin_dir / "sam"), "build", "--template-file", str(ROOT / "template.yaml"), "--base-dir", str(ROOT)]
    sam += ["--cached", "--cache-dir", str(workspace / "cache"), "--build-dir", str(build_dir)]
    sam += ["--parameter-overrides", f"Architecture={arch}"]
    subprocess.run(sam, cwd=workspace, env=env, check=True, capture_output=True)
    subprocess.run([sys.executable, "infra/bytecode.py", str(build_dir)], cwd=ROOT, env=env, check=True)
    return build_dir


def artifacts(build_dir: Path) -> dict[str, tuple[Path, str]]:
    """Logical id -> (built folder, "function" or "layer"), from the built template."""
    from cfnlint.decode import decode  # type: ignore[import-untyped]

    template, errors = decode(str(build_dir / "template.yaml"))
    assert not errors, errors
    found = {}
    for name, res in template["Resources"].items():
        props = res.get("Properties") or {}
        if res["Type"] == "AWS::Serverless::Function":
            found[name] = (build_dir / props["CodeUri"], "function")
        elif res["Type"] == "AWS::Serverless::LayerVersion":
            found[name] = (build_dir / props["ContentUri"], "layer")
    return found


def size(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def _set_writable(root: Path, writable: bool) -> None:
    for dirpath, dirnames, filenames in os.walk(root):
        for name in filenames:
            os.chmod(os.path.join(dirpath, name), 0o644 if writable else 0o444)
        for name in dirnames:
            os.chmod(os.path.join(dirpath, name), 0o755 if writable else 0o555)
    os.chmod(root, 0o755 if writable else 0o555)


@dataclass
class Deployment:
    """Unpacked artifacts: each function's task root, the layer root (/opt), the runtime's packages."""

    tasks: dict[str, Path]
    opt: Path
    runtime: Path
    zipped: dict[str, int]  # logical id -> bytes of its deployment package

    def sys_path(self, function: str) -> list[str]:
        # Lambda's order: the function, then the layer's python/, then the runtime's packages
        return [str(self.tasks[function]), str(self.opt / "python"), str(self.runtime)]


@contextlib.contextmanager
def deployed(build_dir: Path, *, bytecode: bool = True) -> Iterator[Deployment]:
    """Package ``build_dir`` as `sam deploy` does and unpack it read-only into a temporary folder."""
    from samcli.lib.package.utils import make_zip  # type: ignore[import-untyped]

    with tempfile.TemporaryDirectory(prefix="coldstart-") as tmp:
        base = Path(tmp)
        tasks: dict[str, Path] = {}
        zipped: dict[str, int] = {}
        opt = base / "opt"
        for name, (folder, kind) in artifacts(build_dir).items():
            archive = Path(make_zip(str(base / name), str(folder)))
            zipped[name] = archive.stat().st_size
            target = opt if kind == "layer" else base / "task" / name
            with zipfile.ZipFile(archive) as zf:
                zf.extractall(target)
            archive.unlink()
            if kind == "function":
                tasks[name] = target
        runtime = base / "runtime"
        runtime.mkdir()
        for pkg in RUNTIME_PACKAGES:  # the dev venv's copies stand in for the runtime's
            spec = importlib.util.find_spec(pkg)
            assert spec is not None and spec.origin, pkg
            origin = Path(spec.origin)
            # the runtime's copies come compiled; uv installs the dev venv's without bytecode
            compileall.compile_dir(origin.parent, quiet=2) if origin.name == "__init__.py" else None
            (runtime / (origin.parent.name if origin.name == "__init__.py" else origin.name)).symlink_to(
                origin.parent if origin.name == "__init__.py" else origin
            )
        roots = [opt, *tasks.values()]
        if not bytecode:
            for root in roots:
                for cache in list(root.rglob("__pycache__")):
                    shutil.rmtree(cache)
        for root in roots:
            _set_writable(root, False)
        try:
            yield Deployment(tasks, opt, runtime, zipped)
        finally:
            for root in roots:
                _set_writable(root, True)


def strip_bytecode(deployment: Deployment) -> None:
    """Remove the shipped bytecode from a deployment (what a bare `sam build` ships), keeping it read-only."""
    for root in (deployment.opt, *deployment.tasks.values()):
        _set_writable(root, True)
        for cache in list(root.rglob("__pycache__")):
            shutil.rmtree(cache)
        _set_writable(root, False)


_PROBE = """
import sys, time
sys.path[:0] = {paths!r}
from importlib.machinery import SourceFileLoader
compiled = []
_source_to_code = SourceFileLoader.source_to_code
def _counting(self, data, path, *args, **kwargs):
    compiled.append(str(path))
    return _source_to_code(self, data, path, *args, **kwargs)
SourceFileLoader.source_to_code = _counting
t, cpu = time.perf_counter(), time.process_time()
{code}
seconds, cpu = time.perf_counter() - t, time.process_time() - cpu
import json
print(json.dumps({{"seconds": seconds, "cpu": cpu, "compiled": compiled}}))
"""


@dataclass
class Probe:
    seconds: float
    cpu: float  # CPU seconds of the import: what a busy machine's wall time overstates
    compiled: list[str]  # source files of the deployment Python compiled during the import


def probe(deployment: Deployment, function: str, code: str) -> Probe:
    """Run ``code`` in a fresh interpreter laid out like the function's Lambda environment."""
    script = _PROBE.format(paths=deployment.sys_path(function), code=code)
    out = subprocess.run(
        [sys.executable, "-I", "-S", "-B", "-c", script],  # no site-packages, no .pyc written
        capture_output=True,
        text=True,
        check=True,
        cwd=deployment.opt.parent,
        env={
            **os.environ,
            "CHAT_AUTH_MODE": "iam",
            "LAMBDA_TASK_ROOT": str(deployment.tasks[function]),
            "AWS_REGION": "us-east-1",  # set by Lambda; botocore needs one to build a client
            "AWS_DEFAULT_REGION": "us-east-1",
        },
    )
    result = json.loads(out.stdout.strip().splitlines()[-1])
    shipped = (str(deployment.opt), *map(str, deployment.tasks.values()))
    compiled = [p for p in result["compiled"] if p.startswith(shipped)]
    return Probe(float(result["seconds"]), float(result["cpu"]), compiled)


def run(repeats: int = 5) -> list[str]:
    build_dir = build(HOST_ARCH)
    rows = []
    with deployed(build_dir) as shipped, deployed(build_dir, bytecode=False) as bare:
        for function, code in ENTRIES.items():
            runs: dict[str, list[Probe]] = {"shipped": [], "bare": []}
            for _ in range(repeats):  # interleaved, so a load change hits both alike
                runs["shipped"].append(probe(shipped, function, code))
                runs["bare"].append(probe(bare, function, code))
            with_pyc = median([p.seconds for p in runs["shipped"]])
            without = median([p.seconds for p in runs["bare"]])
            cpu_with = median([p.cpu for p in runs["shipped"]])
            cpu_without = median([p.cpu for p in runs["bare"]])
            label = function.removesuffix("Function").lower()
            rows.append(
                row(
                    f"Cold import, {label}, with the bytecode `make build` ships",
                    f"{with_pyc * 1000:.0f} ms",
                    f"{with_pyc / IMPORT_TARGET:.2f}× of the 400 ms target",
                    f"CPU {cpu_with * 1000:.0f} ms; {HOST_ARCH} build, zipped as sam deploy does, read-only /opt, "
                    f"-B; {len(runs['shipped'][0].compiled)} modules compiled at start; median of {repeats}",
                )
            )
            rows.append(
                row(
                    f"Cold import, {label}, without bytecode (bare `sam build`)",
                    f"{without * 1000:.0f} ms",
                    f"{without / with_pyc:.2f}× slower than with",
                    f"CPU {cpu_without * 1000:.0f} ms; {len(runs['bare'][0].compiled)} modules compiled "
                    "on every cold start",
                )
            )
        cli = [probe(shipped, "ChatFunction", UVICORN_CLI) for _ in range(repeats)]
        rows.append(
            row(
                "Cold import, chat, started by `python -m uvicorn` instead (its command line, click)",
                f"{median([p.seconds for p in cli]) * 1000:.0f} ms",
                "",
                f"CPU {median([p.cpu for p in cli]) * 1000:.0f} ms; what run.sh started before `python -m chat`; "
                f"median of {repeats}",
            )
        )
        for function, code in ENTRIES.items():
            full = [probe(shipped, function, f"{code}\n{FIRST_USE[function]}") for _ in range(repeats)]
            seconds, cpu = median([p.seconds for p in full]), median([p.cpu for p in full])
            label = function.removesuffix("Function").lower()
            when = "its first event" if label == "indexer" else "the app's start-up (the Web Adapter waits for it)"
            rows.append(
                row(
                    f"Cold start, {label}: import + what {when} loads, no network",
                    f"{seconds * 1000:.0f} ms",
                    "",
                    f"CPU {cpu * 1000:.0f} ms; opensearch-py, boto3 and its clients, loaded on first use "
                    f"rather than at import; the API key's fetch and the first connections come on top; median of "
                    f"{repeats}",
                )
            )
        bare_layer = size(bare.opt)
        for name, (folder, kind) in artifacts(build_dir).items():
            unzipped = size(shipped.opt if kind == "layer" else shipped.tasks[name])
            note = f"bytecode adds {(unzipped - bare_layer) / 1e6:.1f} MB" if kind == "layer" else ""
            rows.append(
                row(
                    f"{name} ({kind}), unzipped / zipped",
                    f"{unzipped / 1e6:.1f} / {shipped.zipped[name] / 1e6:.1f} MB",
                    f"{unzipped / 250e6:.2f}× of Lambda's 250 MB unzipped limit" if kind == "layer" else "",
                    note or f"{HOST_ARCH}; {folder.name}",
                )
            )
    return rows


if __name__ == "__main__":
    print("\n".join(run()))
