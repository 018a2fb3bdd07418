"""One local stack as ``make serve`` runs it (stand-ins, SigV4 endpoint, folder watcher, queue pump),
shared by the tests of this package: starting it takes seconds."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from local.stack import ROOT, LocalStack
from local.watch import FolderMirror

UNSET = ("DASHSCOPE_API_KEY", "OPENSEARCH_URL", "AWS_ENDPOINT_URL", "DASHSCOPE_BASE_URL", "CHAT_TOKEN", "CHAT_PAGE")


class Served:
    def __init__(self, stack: LocalStack, docs: Path, mirror: FolderMirror, lines: list[str]) -> None:
        self.stack, self.docs, self.mirror, self.lines = stack, docs, mirror, lines


@pytest.fixture(scope="package")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    """``make serve`` on free ports, over a copy of samples/ (so the tests may change the folder)."""
    docs = tmp_path_factory.mktemp("docs") / "samples"
    shutil.copytree(ROOT / "samples", docs)
    lines: list[str] = []
    with pytest.MonkeyPatch.context() as mp:
        for name in UNSET:
            mp.delenv(name, raising=False)
        with LocalStack(iam_port=0, say=lines.append) as stack:
            mirror = stack.mirror(docs)
            mirror.sync(quiet=True)
            stack.run_indexer()
            stack.keep_indexing(mirror, interval=0.3)
            yield Served(stack, docs, mirror, lines)
