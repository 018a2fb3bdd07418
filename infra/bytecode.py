"""Compile a `sam build` output to the Lambda runtime's bytecode: ``python3.12 infra/bytecode.py DIR``.

Why: Lambda mounts layers read-only at /opt (and the function at /var/task), so Python cannot
write the .pyc it compiles there, and every cold start compiles every module it imports again.
`sam build` ships no bytecode (aws-lambda-builders excludes ``*.pyc`` and ``__pycache__``).

How: PEP 552 hash-based, *unchecked* .pyc, because `sam package`/`sam deploy` zip every file with
a 1980 timestamp (samcli.lib.package.utils.make_zip_with_permissions leaves ZipInfo.date_time
unset), which would invalidate timestamp-based .pyc; unchecked ones are used without reading the
source. They are compiled for the deployed paths (/var/task, /opt), so tracebacks in Lambda show
source lines. Run it after every `sam build` (``make build`` does), never on a dir edited by hand.
"""

from __future__ import annotations

import compileall
import py_compile
import sys
from pathlib import Path

from cfnlint.decode import decode  # type: ignore[import-untyped]

RUNTIME = (3, 12)  # template.yaml Globals.Function.Runtime python3.12
TASK_ROOT = "/var/task"  # where Lambda unpacks a function
LAYER_ROOT = "/opt"  # where Lambda unpacks a layer (read-only)


def artifacts(build_dir: Path) -> dict[Path, str]:
    """Each built function or layer folder, with the path Lambda mounts it at."""
    template, errors = decode(str(build_dir / "template.yaml"))
    if errors:
        raise SystemExit(f"cannot read {build_dir / 'template.yaml'}: {errors}")
    found: dict[Path, str] = {}
    for resource in template.get("Resources", {}).values():
        props = resource.get("Properties") or {}
        if resource.get("Type") == "AWS::Serverless::Function" and isinstance(props.get("CodeUri"), str):
            found[build_dir / props["CodeUri"]] = TASK_ROOT
        elif resource.get("Type") == "AWS::Serverless::LayerVersion" and isinstance(props.get("ContentUri"), str):
            found[build_dir / props["ContentUri"]] = LAYER_ROOT
    return found


def compile_artifact(root: Path, mount: str) -> bool:
    """Compile every .py under ``root`` (replacing any .pyc there) as if it lived under ``mount``."""
    return bool(
        compileall.compile_dir(
            root,
            quiet=1,
            force=True,
            stripdir=str(root),
            prependdir=mount,
            workers=1,  # a process pool was 6x slower (wall) on a busy 2-core machine
            invalidation_mode=py_compile.PycInvalidationMode.UNCHECKED_HASH,
        )
    )


def main(argv: list[str]) -> int:
    if sys.version_info[:2] != RUNTIME:
        print(f"bytecode must be compiled by Python {RUNTIME[0]}.{RUNTIME[1]} (the runtime's)", file=sys.stderr)
        return 2
    build_dir = Path(argv[1] if len(argv) > 1 else ".aws-sam/build")
    found = artifacts(build_dir)
    if not found:
        print(f"no built functions or layers in {build_dir}", file=sys.stderr)
        return 1
    failed = [str(root) for root, mount in found.items() if root.is_dir() and not compile_artifact(root, mount)]
    if failed:
        print(f"some files did not compile in {failed}", file=sys.stderr)
        return 1
    print(f"compiled {len(found)} artifacts in {build_dir} to Python {RUNTIME[0]}.{RUNTIME[1]} bytecode")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv))
