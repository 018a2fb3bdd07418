"""Every README example that calls the service runs as written against ``make serve``.

The blocks are read from README.md here, so an edited example is the one tested: each ```bash block
that uses ``$URL`` and each ```python block that reads ``URL`` from the environment is run in a fresh
shell or interpreter from the repository root, with the environment the README tells you to export.
The README's addresses, ports and token must be the ones ``make serve`` uses.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from local import demo
from local.stack import DEFAULT_TOKEN, ROOT
from tests.local_stack.conftest import Served

README = (ROOT / "README.md").read_text(encoding="utf-8")
BLOCK = re.compile(r"^```(bash|python)\n(.*?)^```$", re.S | re.M)


def blocks(kind: str, marker: str) -> list[str]:
    return [code for lang, code in BLOCK.findall(README) if lang == kind and marker in code]


SIGV4_MARKERS = ("--aws-sigv4", "openai_sigv4")
SHELL = blocks("bash", "$URL")
PYTHON = blocks("python", 'os.environ["URL"]') + blocks("python", "os.environ['URL']")
S3_COPY = blocks("bash", "aws s3 cp samples/")


def test_the_readme_has_the_examples_this_test_runs() -> None:
    # the SigV4 curl, the bearer curl, the SigV4 SDK from the shell; the SigV4 and bearer SDK snippets
    assert len(SHELL) >= 3 and len(PYTHON) >= 2, (SHELL, PYTHON)
    assert any("--aws-sigv4" in b for b in SHELL) and any("Bearer $CHAT_TOKEN" in b for b in SHELL)
    assert len(S3_COPY) == 1


def test_the_readme_states_the_local_addresses_and_token_make_serve_uses() -> None:
    defaults = demo.parser().parse_args([])
    assert f"export URL=http://127.0.0.1:{defaults.port} CHAT_TOKEN={DEFAULT_TOKEN}" in README
    assert f"export URL=http://127.0.0.1:{defaults.iam_port} AWS_ACCESS_KEY_ID=local" in README
    assert f"--endpoint-url http://127.0.0.1:{defaults.aws_port}" in README
    assert f"http://127.0.0.1:{defaults.port}/#token={DEFAULT_TOKEN}" in README


def _env(served: Served, code: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "DASHSCOPE_", "OPENSEARCH_", "CHAT_"))}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env["PYTHONPATH"] = ""  # as in a fresh shell: the repository root is the working directory
    if any(m in code for m in SIGV4_MARKERS):
        env |= {
            "URL": served.stack.iam_url,
            "AWS_ACCESS_KEY_ID": "local",
            "AWS_SECRET_ACCESS_KEY": "local",
            "AWS_REGION": "us-east-1",
        }
    else:
        env |= {"URL": served.stack.chat_url, "CHAT_TOKEN": served.stack.token}
    return env


def _run(args: list[str], env: dict[str, str]) -> str:
    done = subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True, timeout=90, check=False)  # noqa: S603
    assert done.returncode == 0, f"exit {done.returncode}\nstdout:\n{done.stdout}\nstderr:\n{done.stderr}"
    assert "Traceback" not in done.stderr, done.stderr
    return done.stdout


def _answered_from_the_samples(out: str) -> None:
    # the stand-in model quotes a retrieved passage and cites it: proof that retrieval found samples/
    assert "(stand-in model) From " in out and "samples/" in out, out


@pytest.mark.parametrize("code", SHELL, ids=[f"bash-{i}" for i in range(len(SHELL))])
def test_shell_example(served: Served, code: str) -> None:
    out = _run(["bash", "-eo", "pipefail", "-c", code], _env(served, code))
    if "/v1/retrieve" in code:  # retrieval only: JSON, no answer
        body = json.loads(out)
        assert body["sources"] and all(s["source_key"].startswith("samples/") for s in body["sources"]), out
    elif "curl" in code:
        # JSON spacing is the serialiser's (orjson writes none): match the field, not the bytes
        assert "event: sources" in out and re.search(r'"source_key":\s*"samples/', out), out
        assert out.count("event: delta") > 3 and "event: done" in out
    else:
        _answered_from_the_samples(out)


@pytest.mark.parametrize("code", PYTHON, ids=[f"python-{i}" for i in range(len(PYTHON))])
def test_python_example(served: Served, code: str) -> None:
    _answered_from_the_samples(_run([sys.executable, "-c", code], _env(served, code)))


def test_copying_to_the_local_bucket_as_the_readme_shows(served: Served) -> None:
    aws = shutil.which("aws")
    if aws is None:
        pytest.skip("the AWS CLI is not installed")
    code = S3_COPY[0].replace("http://127.0.0.1:8082", served.stack.env["AWS_ENDPOINT_URL"])
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    served.lines.clear()
    _run(["bash", "-eo", "pipefail", "-c", code], env)
    from tests.local_stack.test_watch import _wait_line

    _wait_line(served, "docs/handbook.md: 3 chunks")
