"""Keep the local bucket in step with a folder: what ``make serve DOCS=./my-docs`` indexes.

A polling watcher: every second it lists the folder (path, size, mtime) and puts or deletes the
objects that differ, so the indexer sees real S3 events through the same bucket → SQS path as in AWS.
Polling, not inotify (``watchdog``): a scan of a few thousand files costs milliseconds, it needs no
dependency, and it behaves the same on Linux, macOS, Docker bind mounts and network drives, where
native file events are missing or unreliable.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

Snapshot = dict[str, tuple[int, int]]  # relative POSIX path -> (size, mtime_ns)


@dataclass(frozen=True)
class Change:
    kind: Literal["put", "delete"]
    path: str  # relative to the folder, with "/" separators


def _ignored(rel: Path) -> bool:
    """Hidden files and folders (``.git``, ``.DS_Store``) and editors' backup/swap files."""
    return any(p.startswith(".") for p in rel.parts) or rel.name.endswith(("~", ".swp", ".tmp"))


def snapshot(root: Path) -> Snapshot:
    """Every regular file under ``root`` (recursively), by size and modification time."""
    found: Snapshot = {}
    for path in root.rglob("*"):
        rel = path.relative_to(root)
        if _ignored(rel):
            continue
        try:
            st = path.stat()
        except OSError:  # deleted between listing and stat
            continue
        if path.is_file():
            found[rel.as_posix()] = (st.st_size, st.st_mtime_ns)
    return found


def diff(before: Mapping[str, tuple[int, int]], after: Mapping[str, tuple[int, int]]) -> list[Change]:
    """Puts for new or changed files, deletes for vanished ones, in path order."""
    changes = [Change("put", p) for p in sorted(after) if before.get(p) != after[p]]
    changes += [Change("delete", p) for p in sorted(before.keys() - after.keys())]
    return changes


class FolderMirror:
    """Mirrors ``root`` into ``s3://bucket/prefix``; :meth:`sync` applies what changed since the last call."""

    def __init__(self, root: Path, s3: Any, bucket: str, prefix: str, say: Callable[[str], None] = print) -> None:
        self.root, self.s3, self.bucket, self.prefix, self.say = root, s3, bucket, prefix, say
        self.seen: Snapshot = {}

    def sync(self, *, quiet: bool = False) -> list[Change]:
        now = snapshot(self.root)
        changes = diff(self.seen, now)
        for change in changes:
            key = self.prefix + change.path
            if change.kind == "put":
                try:
                    body = (self.root / change.path).read_bytes()
                except OSError:  # gone again already: the next scan sees the delete
                    now.pop(change.path, None)
                    continue
                self.s3.put_object(Bucket=self.bucket, Key=key, Body=body)
            else:
                self.s3.delete_object(Bucket=self.bucket, Key=key)
            if not quiet:
                self.say(f"  {'uploaded' if change.kind == 'put' else 'deleted '} s3://{self.bucket}/{key}")
        self.seen = now
        return changes


class Poller:
    """Calls ``step`` every ``interval`` seconds on a daemon thread until stopped; an exception in
    one step is reported and the loop goes on (a folder briefly unreadable must not stop serving)."""

    def __init__(self, step: Callable[[], object], interval: float, name: str, say: Callable[[str], None]) -> None:
        self.step, self.interval, self.say = step, interval, say
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.step()
            except Exception as exc:
                self.say(f"  {self._thread.name}: {type(exc).__name__}: {exc}")
            self._stop.wait(self.interval)

    def start(self) -> Poller:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=30)
