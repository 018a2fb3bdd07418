from __future__ import annotations

import pytest
from indexer import backfill as bf
from indexer.handler import get_indexer

from standins.dashscope import fake_embedding
from tests.indexer.test_handler import store_for


def test_backfill_indexes_existing_objects_skips_unchanged_and_prunes(uploader, indexer_env, capsys):
    s3, bucket = uploader.s3, uploader.bucket
    s3.put_object(Bucket=bucket, Key="docs/a.md", Body=b"# A\n\nAlpha document body.")
    s3.put_object(Bucket=bucket, Key="docs/b.txt", Body=b"Beta document body.")
    s3.put_object(Bucket=bucket, Key="docs/c.png", Body=b"\x89PNG\r\n\x1a\n\x00\x00")
    s3.put_object(Bucket=bucket, Key="other/z.txt", Body=b"Not under the prefix.")

    code = bf.main([f"s3://{bucket}/docs/", "--no-progress"])
    out = capsys.readouterr().out
    assert code == 0
    assert "indexed: 2" in out and "skipped: 1" in out and "docs/c.png: unsupported file type .png" in out
    store = store_for(indexer_env)
    assert store.count("docs/a.md") == 1 and store.count("docs/b.txt") == 1 and store.count("other/z.txt") == 0

    # second run: nothing changed, nothing re-read; one object changed, one deleted
    s3.put_object(Bucket=bucket, Key="docs/b.txt", Body=b"Beta document, second version.")
    s3.delete_object(Bucket=bucket, Key="docs/a.md")
    summary = bf.backfill(get_indexer(), bucket, "docs/", prune=True, progress=False)
    assert summary.actions["indexed"] == 1, summary
    assert summary.actions["removed"] == 1
    store.refresh()
    assert store.count("docs/a.md") == 0
    hits = store.search(
        fake_embedding("Beta document, second version.", 1536),
        1,
    )
    assert hits[0].text == "Beta document, second version."


def test_backfill_after_events_does_not_redo_them(uploader, dashscope, indexer_env):
    uploader.run(uploader.put("docs/a.txt", "Indexed by an event."))
    dashscope.reset()
    summary = bf.backfill(get_indexer(), uploader.bucket, "docs/", progress=False)
    assert summary.actions["unchanged"] == 1
    assert dashscope.calls() == []


def test_bad_url_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as info:
        bf.main(["https://example.com/x"])
    assert info.value.code == 2
    assert "expected s3://bucket/prefix" in capsys.readouterr().err


def test_a_dry_run_says_what_would_change_and_changes_nothing(uploader, dashscope, indexer_env, capsys):
    s3, bucket = uploader.s3, uploader.bucket
    s3.put_object(Bucket=bucket, Key="docs/a.md", Body=b"# A\n\nAlpha document body.")
    s3.put_object(Bucket=bucket, Key="docs/b.txt", Body=b"Beta document body.")
    calls = len(dashscope.calls("/embeddings"))
    assert bf.main([f"s3://{bucket}/docs/", "--no-progress", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "dry run (nothing was changed)" in out and "would index: 2" in out
    assert "  indexed:" not in out
    store = store_for(indexer_env)
    store.refresh()
    assert store.count("docs/a.md") == 0 and store.count("docs/b.txt") == 0
    assert len(dashscope.calls("/embeddings")) == calls  # nothing was embedded either
