"""Index objects that were in the bucket before the trigger existed.

    python -m indexer.backfill s3://my-bucket/docs/ [--prune] [--queue-url URL | --local] [--dry-run]

With a queue URL (``--queue-url`` or ``INDEX_QUEUE_URL``) it plans: one event per changed object
goes to the indexing queue and the deployed indexer fleet does the work (:mod:`indexer.planner`).
``--local`` (the default without a queue URL) indexes in this process with the indexer's own code
path: objects whose ETag matches the key's commit record, and whose committed chunks are all in
the index, are skipped without reading them (so a chunk index that was deleted or lost documents
is restored). ``--prune`` also removes keys the commit table knows but the bucket no longer has.
Prints a summary and exits non-zero if anything failed.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from rag_shared.commits import Commit
from rag_shared.errors import RagError

from indexer.events import ObjectEvent, sequencer_after
from indexer.pipeline import Indexer


@dataclass
class Summary:
    actions: Counter[str] = field(default_factory=Counter)
    skipped: list[tuple[str, str]] = field(default_factory=list)
    failed: list[tuple[str, str]] = field(default_factory=list)
    chunks: int = 0
    tokens: int = 0
    cost_usd: float = 0.0
    dry_run: bool = False  # counts are of what would change: say so, never "indexed"

    def render(self) -> str:
        if self.dry_run:
            head = ["backfill dry run (nothing was changed):", f"  would index: {self.actions['indexed']}"]
        else:
            head = [
                "backfill summary:",
                f"  indexed: {self.actions['indexed']} ({self.chunks} chunks, {self.tokens} embedding tokens, "
                f"~${self.cost_usd:.6f})",
            ]
        lines = [
            *head,
            f"  unchanged: {self.actions['unchanged']}",
            f"  {'would remove' if self.dry_run else 'removed'}: {self.actions['removed']}",
            f"  skipped: {len(self.skipped)}",
        ]
        lines += [f"    {key}: {reason}" for key, reason in self.skipped]
        lines.append(f"  failed: {len(self.failed)}")
        lines += [f"    {key}: {error}" for key, error in self.failed]
        return "\n".join(lines)


def parse_s3_url(url: str) -> tuple[str, str]:
    parts = urlsplit(url)
    if parts.scheme != "s3" or not parts.netloc:
        raise ValueError(f"expected s3://bucket/prefix, got {url!r}")
    return parts.netloc, parts.path.lstrip("/")


def list_objects(s3: Any, bucket: str, prefix: str) -> Iterator[dict[str, Any]]:
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        for obj in page.get("Contents", []):
            if not obj["Key"].endswith("/"):  # folder placeholders
                yield obj


def backfill(
    indexer: Indexer,
    bucket: str,
    prefix: str = "",
    *,
    prune: bool = False,
    dry_run: bool = False,
    progress: bool = True,
) -> Summary:
    from tqdm import tqdm

    indexer.store.ensure_index()
    indexer.store.refresh()
    states = {c.key: c for c in indexer.commits.scan() if c.key.startswith(prefix)}
    objects = list(list_objects(indexer.s3, bucket, prefix))
    summary = Summary(dry_run=dry_run)
    seen: set[str] = set()
    for obj in tqdm(objects, desc="backfill", unit="file", disable=not progress, file=sys.stderr):
        key, etag = obj["Key"], obj["ETag"].strip('"')
        seen.add(key)
        state = states.get(key)
        if state is not None and not state.deleted and state.etag == etag and _all_there(indexer, state):
            summary.actions["unchanged"] += 1
            continue
        if dry_run:
            summary.actions["indexed"] += 1
            continue
        event = ObjectEvent(
            action="upsert",
            bucket=bucket,
            key=key,
            etag=etag,
            sequencer=sequencer_after(state.sequencer if state else None),
            size=obj.get("Size"),
        )
        _apply(indexer, event, summary)
    if prune:
        for key, state in sorted(states.items()):
            if key not in seen and not state.deleted:
                if dry_run:
                    summary.actions["removed"] += 1
                    continue
                gone = ObjectEvent(action="remove", bucket=bucket, key=key, sequencer=sequencer_after(state.sequencer))
                _apply(indexer, gone, summary)
    return summary


def _all_there(indexer: Indexer, commit: Commit) -> bool:
    """Are the committed chunks of ``commit`` all in the index (none lost with a deleted index)?"""
    return commit.version is None or indexer.store.count(commit.key, version=commit.version) == commit.chunks


def _apply(indexer: Indexer, event: ObjectEvent, summary: Summary) -> None:
    try:
        outcome = indexer.handle(event)
    except (RagError, OSError) as exc:
        summary.failed.append((event.key, str(exc)))
        return
    summary.actions[outcome.action] += 1
    if outcome.action == "skipped":
        summary.skipped.append((event.key, outcome.reason or ""))
    summary.chunks += outcome.chunks
    summary.tokens += outcome.usage.prompt_tokens
    summary.cost_usd += outcome.usage.cost_usd


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m indexer.backfill", description=__doc__.splitlines()[0])
    parser.add_argument("url", help="s3://bucket/prefix")
    parser.add_argument("--prune", action="store_true", help="remove indexed keys that are no longer in the bucket")
    parser.add_argument("--dry-run", action="store_true", help="report what would change, change nothing")
    parser.add_argument("--no-progress", action="store_true")
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--queue-url", help="enqueue changed objects for the indexer fleet (default: $INDEX_QUEUE_URL)")
    mode.add_argument("--local", action="store_true", help="index in this process instead of through the queue")
    args = parser.parse_args(argv)
    try:
        bucket, prefix = parse_s3_url(args.url)
    except ValueError as exc:
        parser.error(str(exc))
    queue_url = None if args.local else args.queue_url or os.environ.get("INDEX_QUEUE_URL")
    if queue_url and not args.dry_run:
        return _plan_main(queue_url, bucket, prefix, prune=args.prune)
    from indexer.handler import build_indexer

    try:
        indexer = build_indexer()
        summary = backfill(
            indexer, bucket, prefix, prune=args.prune, dry_run=args.dry_run, progress=not args.no_progress
        )
    except RagError as exc:
        print(f"backfill failed: {exc}", file=sys.stderr)
        return 2
    print(summary.render())
    return 1 if summary.failed else 0


def _plan_main(queue_url: str, bucket: str, prefix: str, *, prune: bool) -> int:
    import boto3
    from rag_shared.commits import CommitStore
    from rag_shared.config import load_settings

    from indexer import planner

    try:
        commits = CommitStore.from_settings(load_settings())
        if commits is None:
            print("backfill failed: queue mode compares with the commit records: set COMMIT_TABLE", file=sys.stderr)
            return 2
        s3, sqs = boto3.client("s3"), boto3.client("sqs")
        summary = planner.plan(
            list_objects(s3, bucket, prefix),
            commits,
            planner.QueueSink(sqs, queue_url),
            bucket,
            prefix=prefix,
            prune=prune,
            exists=planner.s3_exists(s3, bucket),
        )
    except RagError as exc:
        print(f"backfill failed: {exc}", file=sys.stderr)
        return 2
    print(summary.render())
    return 0


if __name__ == "__main__":
    sys.exit(main())
