"""What the local stack says about each file: one line from the indexer's own records, and counts
that say what happened ("2 failed, 0 indexed"), proven with DashScope failing after start."""

from __future__ import annotations

import logging
import shutil
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import boto3
import pytest

from local.report import describe, summary
from local.sqs_pump import pump
from local.stack import LocalStack
from standins.dashscope import DashScopeStandIn, Fault
from tests.local_stack.conftest import UNSET

DOCS = Path(__file__).parent / "demo_docs"


def _record(msg: str, **fields: object) -> logging.LogRecord:
    record = logging.LogRecord("indexer", logging.INFO, __file__, 1, msg, None, None)
    record.__dict__.update(fields)
    return record


def test_each_outcome_reads_as_one_line() -> None:
    indexed = _record("file indexed", key="a.md", action="indexed", chunks=5, embedded=3, cached=2, tokens=812)
    assert describe(indexed) == (
        "indexed",
        "indexed   a.md: 5 chunks (3 embedded, 2 reused), 812 tokens, $0.000000, 0.0 s",
    )
    skipped = _record("file skipped", key="b.bin", action="skipped", reason="unsupported file type .bin")
    assert describe(skipped) == ("skipped", "skipped   b.bin: unsupported file type .bin")
    failed = _record("record failed", s3_keys=["c.md"], error="X", reason="boom", tries=2, retry_in_seconds=5)
    assert describe(failed) == ("failed", "failed    c.md (try 2, again in 5 s): boom")
    stale = _record("file stale", key="d.md", action="stale", reason="older than the indexed version")
    assert describe(stale) == ("unchanged", "stale     d.md (older than the indexed version)")
    assert describe(_record("chat ready")) is None


def test_counts_name_failures_even_when_nothing_was_indexed() -> None:
    assert summary(Counter({"failed": 3})) == "3 failed, 0 indexed"
    assert summary(Counter({"indexed": 2, "skipped": 1})) == "2 indexed, 1 skipped"
    assert summary(Counter({"indexed": 1, "failed": 1, "removed": 1})) == "1 failed, 1 indexed, 1 removed"
    assert summary(Counter()) == "0 failed, 0 indexed"


@pytest.fixture
def failing_dashscope(monkeypatch: pytest.MonkeyPatch) -> Iterator[DashScopeStandIn]:
    for name in UNSET:
        monkeypatch.delenv(name, raising=False)
    ds = DashScopeStandIn({"sk-right"}).start()
    monkeypatch.setenv("DASHSCOPE_API_KEY", "sk-right")
    monkeypatch.setenv("DASHSCOPE_BASE_URL", ds.base_url)
    yield ds
    ds.stop()


def test_files_that_fail_are_counted_as_failed_with_their_reason(
    failing_dashscope: DashScopeStandIn, tmp_path: Path
) -> None:
    lines: list[str] = []
    docs = tmp_path / "docs"
    shutil.copytree(DOCS, docs)
    with LocalStack(say=lines.append) as stack:
        assert len(failing_dashscope.calls("/embeddings")) == 1  # the start-up check passed
        overloaded = Fault(status=503, code="ServiceUnavailable", message="overloaded", path="/embeddings")
        failing_dashscope.inject(overloaded, times=100)
        stack.mirror(docs).sync(quiet=True)
        pump(boto3.client("sqs"), stack.queue_url)
        assert stack.lines is not None
        counts = stack.lines.take()
    assert summary(counts) == "2 failed, 0 indexed"
    failed = [line for line in lines if line.strip().startswith("failed")]
    assert len(failed) == 2, lines
    assert all("(try 1, again in 5 s)" in line for line in failed), failed
    # locally one retry per call, not a Lambda's five
    assert len(failing_dashscope.calls("/embeddings", status=503)) == 2 * 2, failing_dashscope.calls("/embeddings")
