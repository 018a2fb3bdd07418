"""`python -m local.backfill --demo N`: planner → local queue → pumped indexers, end to end on the
local stack, with the progress bar running to completion."""

from __future__ import annotations

import re

import pytest

from local import backfill as local_backfill


@pytest.fixture
def clean_env(monkeypatch):
    """The local stack sets its own AWS and service variables and restores them on exit."""
    for name in ("AWS_ENDPOINT_URL", "COMMIT_TABLE", "OPENSEARCH_URL", "DASHSCOPE_API_KEY", "INDEX_QUEUE_URL"):
        monkeypatch.delenv(name, raising=False)


def test_demo_backfills_generated_files_through_the_local_queue(clean_env, capsys):
    lines: list[str] = []
    assert local_backfill.demo(150, workers=4, interval=0.2, say=lambda *a, **k: lines.append(" ".join(a))) == 0
    captured = capsys.readouterr()
    out, bar = captured.out, captured.err
    assert "enqueued: 150" in out
    assert re.search(r"indexed: 150\n\s+unchanged: 0\n\s+removed: 0\n\s+skipped: 0\n\s+failed → DLQ: 0", out), out
    assert "not committed" not in out
    # the bar moved (some poll saw part of the work done) and ended at 150/150
    counts = [int(n) for n in re.findall(r"\| *(\d+)/150 \[", bar)]
    assert counts and counts[-1] == 150 and any(0 < n < 150 for n in counts), counts
    assert lines == ["Putting 150 generated files in s3://qwen-rag-documents/backfill-demo/ …"]


def test_options_are_passed_on_to_the_indexer_backfill():
    import argparse

    args = argparse.Namespace(
        attach=None, prune=True, dry_run=False, local=True, no_wait=False, verify_chunks=True, workers=3
    )
    assert local_backfill.passed_on(args, "s3://b/p/") == [
        "s3://b/p/",
        "--prune",
        "--local",
        "--verify-chunks",
        "--workers",
        "3",
    ]
    args.attach = "latest"
    assert local_backfill.passed_on(args, "s3://b/p/") == ["--attach", "latest"]
