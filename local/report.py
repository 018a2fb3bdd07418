"""One readable line per file for the local stack, from the indexer's own structured log records.

In AWS the indexer logs JSON for CloudWatch. Locally those lines are noise in a terminal, so the stack
mutes them and this handler turns the same records (``file indexed``, ``file skipped``, ``record
failed``: their ``extra`` fields are attributes of the record) into ``indexed samples/a.md: 5
chunks…`` and counts what happened, so a summary can say "3 failed, 0 indexed".
"""

from __future__ import annotations

import logging
import threading
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

ORDER = ("indexed", "removed", "metadata", "unchanged", "skipped", "failed")
LABELS = {"metadata": "sidecar(s)"}


def describe(record: logging.LogRecord) -> tuple[str, str] | None:
    """(outcome, line) for an indexer record about a file; None for other records."""
    f: dict[str, Any] = record.__dict__
    if "s3_keys" in f:  # a message that failed: it goes back to the queue
        keys = ", ".join(f["s3_keys"]) or "(unparsed message)"
        again = f"try {f.get('tries')}, again in {f.get('retry_in_seconds')} s"
        return "failed", f"failed    {keys} ({again}): {f.get('reason') or f.get('error')}"
    action = f.get("action")
    if not isinstance(action, str) or "key" not in f:
        return None
    key = f["key"]
    if action == "indexed":
        cost = f.get("estimated_cost_usd") or 0.0
        return "indexed", (
            f"indexed   {key}: {f.get('chunks')} chunks ({f.get('embedded')} embedded, {f.get('cached')} reused), "
            f"{f.get('tokens')} tokens, ${cost:.6f}, {f.get('seconds', 0.0):.1f} s"
        )
    if action == "removed":
        return "removed", f"removed   {key}: {f.get('removed')} chunks"
    if action == "skipped":
        return "skipped", f"skipped   {key}: {f.get('reason')}"
    if action == "metadata":  # a sidecar or user metadata applied to the indexed chunks, not re-embedded
        return "metadata", f"metadata  {key}: applied to the indexed chunks"
    if action == "deferred":  # a sidecar that arrived before its document: that document's indexing reads it
        return "metadata", f"metadata  {key}: {f.get('reason')}"
    # stale, superseded, already gone, swept: a replayed or late event that changed nothing
    why = f" ({f['reason']})" if f.get("reason") else ""
    return "unchanged", f"{action:<9} {key}{why}"


def summary(counts: Counter[str]) -> str:
    """``2 indexed, 1 failed`` (failures always named, even at zero, when nothing was indexed)."""
    parts = [f"{counts[k]} {LABELS.get(k, k)}" for k in ORDER if counts[k]]
    if counts["failed"] or not counts["indexed"]:
        parts = [f"{counts['failed']} failed", f"{counts['indexed']} indexed"] + [
            p for p in parts if not p.endswith((" failed", " indexed"))
        ]
    return ", ".join(parts) or "nothing to index"


class FileLines(logging.Handler):
    """Writes one line per file outcome and counts outcomes; other warnings pass as one line too."""

    def __init__(self, say: Callable[[str], None]) -> None:
        super().__init__(logging.INFO)
        self.say = say
        self.latest: dict[str, str] = {}  # key -> its latest outcome (a retried file counts once)
        self._lock_counts = threading.Lock()

    def emit(self, record: logging.LogRecord) -> None:
        described = describe(record)
        if described is None:
            if record.levelno >= logging.WARNING:
                self.say(f"  indexer: {record.getMessage()}")
            return
        outcome, line = described
        keys = record.__dict__.get("s3_keys") or [record.__dict__.get("key", "")]
        with self._lock_counts:
            for key in keys:
                self.latest[key] = outcome
        self.say("  " + line)

    def take(self) -> Counter[str]:
        """Files by latest outcome since the last call (one summary per batch of work)."""
        with self._lock_counts:
            latest, self.latest = self.latest, {}
        return Counter(latest.values())


@contextmanager
def file_lines(say: Callable[[str], None], logger_name: str = "indexer") -> Iterator[FileLines]:
    """Route the indexer's records to :class:`FileLines` while muting its JSON output."""
    logger = logging.getLogger(logger_name)
    handler = FileLines(say)
    saved_level = logger.level
    muted = [(h, h.level) for h in logger.handlers]
    for h, _ in muted:
        h.setLevel(logging.CRITICAL + 1)
    logger.setLevel(logging.INFO)
    logger.addHandler(handler)
    try:
        yield handler
    finally:
        logger.removeHandler(handler)
        logger.setLevel(saved_level)
        for h, level in muted:
            h.setLevel(level)
