"""What the local stack says about each file: one line from the indexer's own records, and counts
that say what happened ("2 failed, 0 indexed"; tests/test_local_demo.py proves it with DashScope failing)."""

from __future__ import annotations

import logging
from collections import Counter

from local.report import describe, summary


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


def test_a_sidecar_reads_as_metadata_not_as_an_unchanged_file() -> None:
    early = _record(
        "file deferred",
        key="h.md.metadata.json",
        action="deferred",
        reason="applied when 'h.md' is indexed (its indexing reads the sidecar)",
    )
    assert describe(early) == (
        "metadata",
        "metadata  h.md.metadata.json: applied when 'h.md' is indexed (its indexing reads the sidecar)",
    )
    applied = _record("file metadata", key="h.md.metadata.json", action="metadata")
    assert describe(applied) == ("metadata", "metadata  h.md.metadata.json: applied to the indexed chunks")
    assert summary(Counter({"indexed": 3, "metadata": 1})) == "3 indexed, 1 sidecar(s)"


def test_counts_name_failures_even_when_nothing_was_indexed() -> None:
    assert summary(Counter({"failed": 3})) == "3 failed, 0 indexed"
    assert summary(Counter({"indexed": 2, "skipped": 1})) == "2 indexed, 1 skipped"
    assert summary(Counter({"indexed": 1, "failed": 1, "removed": 1})) == "1 failed, 1 indexed, 1 removed"
    assert summary(Counter()) == "0 failed, 0 indexed"
