"""Index objects that were in the bucket before the trigger existed.

    python -m indexer.backfill s3://my-bucket/docs/ [--prune] [--queue-url URL | --local [--workers N]]
                               [--no-wait] [--verify-chunks] [--dry-run]
    python -m indexer.backfill --attach [RUN_ID]

With a queue URL (``--queue-url`` or ``INDEX_QUEUE_URL``) it plans: one event per changed object
goes to the indexing queue and the deployed indexer fleet does the work (:mod:`indexer.planner`);
the run is recorded in the commit table and followed with a progress bar until the fleet has
committed it, here or from any machine with ``--attach`` (:mod:`indexer.progress`).
``--local`` (the default without a queue URL) indexes in this process, ``--workers`` files at a
time, with the indexer's own code path: objects whose ETag matches the key's commit record, and
whose committed chunks are all in the index, are skipped without reading them (so a chunk index
that was deleted or lost documents is restored). ``--prune`` also removes keys the commit table
knows but the bucket no longer has. Prints a summary and exits non-zero if anything failed.
"""

from __future__ import annotations

import argparse
import os
import sys
import threading
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
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
    workers: int = 1,
) -> Summary:
    """Index in this process, ``workers`` objects at a time (threads: the pipeline is synchronous
    and waits on the network; the commit table's conditional writes keep any overlap idempotent)."""
    from tqdm import tqdm

    indexer.store.ensure_index()
    indexer.store.refresh()
    states = {c.key: c for c in indexer.commits.scan() if c.key.startswith(prefix)}
    objects = list(list_objects(indexer.s3, bucket, prefix))
    summary = Summary(dry_run=dry_run)
    seen: set[str] = set()
    lock = threading.Lock()
    bar = tqdm(total=len(objects), desc="backfill", unit="file", disable=not progress, file=sys.stderr)

    def one(obj: dict[str, Any]) -> None:
        key, etag = obj["Key"], obj["ETag"].strip('"')
        state = states.get(key)
        if state is not None and not state.deleted and state.etag == etag and _all_there(indexer, state):
            with lock:
                summary.actions["unchanged"] += 1
            return
        if dry_run:
            with lock:
                summary.actions["indexed"] += 1
            return
        event = ObjectEvent(
            action="upsert",
            bucket=bucket,
            key=key,
            etag=etag,
            sequencer=sequencer_after(state.sequencer if state else None),
            size=obj.get("Size"),
        )
        _apply(indexer, event, summary, lock)

    # The workers share the one indexer, so its embedding pacer keeps the whole pool under the quota.
    with bar, ThreadPoolExecutor(max(1, workers), thread_name_prefix="backfill") as pool:
        for obj in objects:
            seen.add(obj["Key"])
        for _ in pool.map(one, objects):
            bar.update(1)
    if prune:
        for key, state in sorted(states.items()):
            if key not in seen and not state.deleted:
                if dry_run:
                    summary.actions["removed"] += 1
                    continue
                gone = ObjectEvent(action="remove", bucket=bucket, key=key, sequencer=sequencer_after(state.sequencer))
                _apply(indexer, gone, summary, lock)
    return summary


def _all_there(indexer: Indexer, commit: Commit) -> bool:
    """Are the committed chunks of ``commit`` all in the index (none lost with a deleted index)?"""
    return commit.version is None or indexer.store.count(commit.key, version=commit.version) == commit.chunks


def _apply(indexer: Indexer, event: ObjectEvent, summary: Summary, lock: threading.Lock) -> None:
    try:
        outcome = indexer.handle(event)
    except (RagError, OSError) as exc:
        with lock:
            summary.failed.append((event.key, str(exc)))
        return
    with lock:
        _count(summary, event, outcome)


def _count(summary: Summary, event: ObjectEvent, outcome: Any) -> None:
    summary.actions[outcome.action] += 1
    if outcome.action == "skipped":
        summary.skipped.append((event.key, outcome.reason or ""))
    summary.chunks += outcome.chunks
    summary.tokens += outcome.usage.prompt_tokens
    summary.cost_usd += outcome.usage.cost_usd


def default_workers() -> int:
    return min(8, (os.cpu_count() or 1) * 2)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m indexer.backfill", description=__doc__.splitlines()[0])
    parser.add_argument("url", nargs="?", help="s3://bucket/prefix (not with --attach)")
    parser.add_argument("--prune", action="store_true", help="remove indexed keys that are no longer in the bucket")
    parser.add_argument("--dry-run", action="store_true", help="report what would change, change nothing")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar (the summary is still printed)")
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--queue-url", help="enqueue changed objects for the indexer fleet (default: $INDEX_QUEUE_URL)")
    mode.add_argument("--local", action="store_true", help="index in this process instead of through the queue")
    mode.add_argument(
        "--attach", nargs="?", const="latest", metavar="RUN_ID", help="follow a planned run (default: the latest)"
    )
    parser.add_argument("--workers", type=int, default=default_workers(), help="--local: files indexed at once")
    parser.add_argument("--no-wait", action="store_true", help="queue mode: plan, print the run id and exit")
    parser.add_argument("--interval", type=float, default=5.0, help="seconds between progress polls")
    parser.add_argument("--timeout", type=float, default=None, help="stop following after this many seconds")
    parser.add_argument(
        "--verify-chunks", action="store_true", help="queue mode: re-enqueue committed keys whose chunks are missing"
    )
    args = parser.parse_args(argv)
    if args.attach:
        return _attach_main(args.attach, args)
    if not args.url:
        parser.error("an s3://bucket/prefix is needed (or --attach)")
    try:
        bucket, prefix = parse_s3_url(args.url)
    except ValueError as exc:
        parser.error(str(exc))
    queue_url = None if args.local else args.queue_url or os.environ.get("INDEX_QUEUE_URL")
    if queue_url and not args.dry_run:
        return _plan_main(queue_url, bucket, prefix, args)
    from indexer.handler import build_indexer

    try:
        indexer = build_indexer()
        summary = backfill(
            indexer,
            bucket,
            prefix,
            prune=args.prune,
            dry_run=args.dry_run,
            progress=not args.no_progress,
            workers=args.workers,
        )
    except RagError as exc:
        print(f"backfill failed: {exc}", file=sys.stderr)
        return 2
    print(summary.render())
    return 1 if summary.failed else 0


def _commits() -> Any:
    from rag_shared.commits import CommitStore
    from rag_shared.config import load_settings

    commits = CommitStore.from_settings(load_settings())
    if commits is None:
        raise RagError("queue mode compares with the commit records: set COMMIT_TABLE")
    return commits


def _plan_main(queue_url: str, bucket: str, prefix: str, args: argparse.Namespace) -> int:
    import boto3

    from indexer import planner, progress

    try:
        commits = _commits()
        s3, sqs = boto3.client("s3"), boto3.client("sqs")
        verify = None
        if args.verify_chunks:
            from rag_shared.config import load_settings
            from rag_shared.store import VectorStore

            verify = planner.chunk_checker(VectorStore.from_settings(load_settings(), commits=commits))
        runs = progress.RunStore(commits)
        dlq = progress.dead_letter_url(sqs, queue_url)
        manifest = progress.Manifest(
            run=progress.new_run_id(),
            bucket=bucket,
            prefix=prefix,
            queue_url=queue_url,
            dlq_url=dlq,
            dlq_baseline=progress.queue_count(sqs, dlq),
            started=datetime.now(UTC).isoformat(timespec="seconds"),
        )
        journal = progress.Journal(runs, manifest)
        journal.start()
        summary = _plan_recorded(
            journal,
            planner.plan,
            list_objects(s3, bucket, prefix),
            commits,
            planner.QueueSink(sqs, queue_url),
            bucket,
            prefix=prefix,
            prune=args.prune,
            exists=planner.s3_exists(s3, bucket),
            journal=journal,
            verify=verify,
        )
        journal.finish(
            enqueued=summary.enqueued,
            removals=summary.removals,
            unchanged=summary.unchanged,
            skipped=dict(summary.skipped),
        )
    except RagError as exc:
        print(f"backfill failed: {exc}", file=sys.stderr)
        return 2
    print(summary.render())
    print(f"run id: {manifest.run} (follow it with: python -m indexer.backfill --attach {manifest.run})", flush=True)
    if args.no_wait:
        return 0
    return _follow(runs, manifest, sqs, args)


def _plan_recorded(journal: Any, plan: Any, /, *args: Any, **kwargs: Any) -> Any:
    """``plan(*args, **kwargs)``; if it fails, the run record says so and keeps what was enqueued."""
    try:
        return plan(*args, **kwargs)
    except BaseException:
        journal.abort()
        raise


def _attach_main(run: str, args: argparse.Namespace) -> int:
    import boto3

    from indexer import progress

    try:
        runs = progress.RunStore(_commits())
        manifest = runs.load(run)
    except RagError as exc:
        print(f"backfill failed: {exc}", file=sys.stderr)
        return 2
    print(f"attached to backfill {manifest.run} of s3://{manifest.bucket}/{manifest.prefix}", flush=True)
    return _follow(runs, manifest, boto3.client("sqs"), args)


def _follow(runs: Any, manifest: Any, sqs: Any, args: argparse.Namespace) -> int:
    from indexer import progress

    watcher = progress.Watcher(runs, manifest, sqs)
    snap = progress.follow(watcher, interval=args.interval, progress=not args.no_progress, timeout=args.timeout)
    print(progress.render_summary(watcher.manifest, snap))
    return 0 if snap.committed >= snap.total and not snap.dead else 1


if __name__ == "__main__":
    sys.exit(main())
