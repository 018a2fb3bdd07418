"""Progress of a planned backfill: what was enqueued, what the fleet has committed, what failed.

The run record lives in the commit table, beside the commits it is measured against, so any
machine with the table (the one that planned or another) can re-attach to it; a JSON file in a
local state directory would tie progress to the planning laptop, and the planner already needs
the table. Items use a reserved partition key prefix ``_backfill/<index>/``: an OpenSearch index
name cannot begin with ``_`` (OpenSearch docs, "Index naming restrictions"), so no commit key
(``<index>/<S3 key>``) can collide, and :meth:`CommitStore.scan` (``begins_with <index>/``) never
sees them.

- ``_backfill/<index>/<run>``: the manifest (bucket, prefix, queue, dead-letter queue and its count
  when planning started, plan counts, number of key pages, status).
- ``_backfill/<index>/<run>/<n>``: a page of the enqueued keys with the sequencer each was planned
  at, at most :data:`PAGE_BYTES` of JSON (a DynamoDB item holds at most 400 KB: DynamoDB developer
  guide, "Service, account, and table quotas", item size).
- ``_backfill/<index>/latest``: the newest run's id (``--attach`` without an id).

A key is *committed* once its commit record has a sequencer at or after the planned one: this
event's commit or a later live event's (which supersedes it). The watcher keeps one byte per key
(done or not, and how) and checks at most ``budget`` pending keys per poll with BatchGetItem, one
page item in memory at a time, so polling 100,000 keys stays cheap and its memory small.
"""

from __future__ import annotations

import json
import secrets
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

from rag_shared.commits import Commit, CommitStore
from rag_shared.errors import RagError

PAGE_BYTES = 300_000  # under DynamoDB's 400 KB item limit with the attribute names and pk
PAGE_KEYS = 1000  # and at most a listing page's keys, so the planner's memory stays flat
RESERVED = "_backfill"

# One byte per enqueued key in the watcher: not yet committed, or how it ended.
PENDING, INDEXED, REMOVED, SKIPPED = 0, 1, 2, 3


class RunNotFound(RagError):
    """No backfill run with that id (or no run at all) in the commit table."""


def new_run_id(now: datetime | None = None) -> str:
    """Sortable and unique: UTC time plus 4 random bytes."""
    now = now or datetime.now(UTC)
    return f"{now:%Y%m%dT%H%M%SZ}-{secrets.token_hex(4)}"


@dataclass
class Manifest:
    run: str
    bucket: str
    prefix: str
    queue_url: str
    dlq_url: str | None = None
    dlq_baseline: int = 0
    started: str = ""
    status: Literal["planning", "planned", "aborted"] = "planning"  # aborted: the planner failed midway
    enqueued: int = 0
    removals: int = 0
    unchanged: int = 0
    pages: int = 0
    skipped: dict[str, int] = field(default_factory=dict)

    @property
    def total(self) -> int:
        return self.enqueued + self.removals

    def to_json(self) -> str:
        return json.dumps(self.__dict__, separators=(",", ":"))

    @classmethod
    def from_json(cls, raw: str) -> Manifest:
        return cls(**json.loads(raw))


class RunStore:
    """Run records in the commit table (the same DynamoDB client and table as ``commits``)."""

    def __init__(self, commits: CommitStore) -> None:
        self.commits = commits
        self.client, self.table = commits.client, commits.table
        self.base = f"{RESERVED}/{commits.namespace}"

    def _put(self, pk: str, body: str) -> None:
        self.commits._call(
            "write backfill run",
            lambda: self.client.put_item(TableName=self.table, Item={"pk": {"S": pk}, "body": {"S": body}}),
        )

    def _get(self, pk: str) -> str | None:
        item = self.commits._call(
            "read backfill run",
            lambda: self.client.get_item(TableName=self.table, Key={"pk": {"S": pk}}, ConsistentRead=True),
        ).get("Item")
        return str(item["body"]["S"]) if item else None

    def save(self, manifest: Manifest) -> None:
        self._put(f"{self.base}/{manifest.run}", manifest.to_json())

    def mark_latest(self, run: str) -> None:
        self._put(f"{self.base}/latest", run)

    def load(self, run: str | None = None) -> Manifest:
        """The run ``run``, or the latest one."""
        if run in (None, "latest"):
            run = self._get(f"{self.base}/latest")
            if run is None:
                raise RunNotFound("no backfill run recorded in the commit table")
        raw = self._get(f"{self.base}/{run}")
        if raw is None:
            raise RunNotFound(f"no backfill run {run} in the commit table")
        return Manifest.from_json(raw)

    def put_page(self, run: str, number: int, entries: list[tuple[str, str, str]]) -> None:
        self._put(f"{self.base}/{run}/{number}", json.dumps(entries, separators=(",", ":")))

    def page(self, run: str, number: int) -> list[tuple[str, str, str]]:
        raw = self._get(f"{self.base}/{run}/{number}")
        if raw is None:
            raise RunNotFound(f"backfill run {run} lost its key page {number}")
        return [(k, a, s) for k, a, s in json.loads(raw)]


class Journal:
    """What the planner enqueued, written to the run record a page at a time (constant memory)."""

    def __init__(self, runs: RunStore, manifest: Manifest) -> None:
        self.runs, self.manifest = runs, manifest
        self._entries: list[tuple[str, str, str]] = []
        self._bytes = 2
        self.added: Counter[str] = Counter()

    def start(self) -> None:
        self.runs.save(self.manifest)
        self.runs.mark_latest(self.manifest.run)

    def add(self, key: str, action: str, sequencer: str) -> None:
        size = len(json.dumps(key)) + len(sequencer) + 14
        if self._entries and (self._bytes + size > PAGE_BYTES or len(self._entries) == PAGE_KEYS):
            self._flush()
        self._entries.append((key, action[0], sequencer))  # "u"psert or "r"emove
        self._bytes += size
        self.added[action] += 1

    def _flush(self) -> None:
        if self._entries:
            self.runs.put_page(self.manifest.run, self.manifest.pages, self._entries)
            self.manifest.pages += 1
            self.runs.save(self.manifest)  # the pages written so far can be watched already
        self._entries, self._bytes = [], 2

    def finish(self, *, enqueued: int, removals: int, unchanged: int, skipped: dict[str, int]) -> None:
        self._flush()
        m = self.manifest
        m.enqueued, m.removals, m.unchanged, m.skipped, m.status = enqueued, removals, unchanged, skipped, "planned"
        self.runs.save(m)

    def abort(self) -> None:
        """The planner failed: record what was enqueued so far, so followers still settle."""
        self._flush()
        m = self.manifest
        m.enqueued, m.removals, m.status = self.added["upsert"], self.added["remove"], "aborted"
        self.runs.save(m)


@dataclass
class Snapshot:
    """One poll: counts over the run's keys, and the queues' own (approximate) counts."""

    total: int
    committed: int
    outcomes: Counter[str]
    reasons: Counter[str]
    visible: int
    in_flight: int
    dead: int
    checked_all: bool  # a sweep over every pending key ended, the queue empty all along: counts are exact
    planning: bool

    @property
    def settled(self) -> bool:
        """Nothing more will happen: all committed, or the queue is empty and every key checked."""
        if self.planning:
            return False
        return self.committed >= self.total or (self.checked_all and self.visible == 0 and self.in_flight == 0)


def classify(commit: Commit | None, planned: str) -> int:
    """How a key planned at sequencer ``planned`` ended, from its commit (PENDING: not yet)."""
    if commit is None or commit.sequencer < planned:
        return PENDING
    if commit.deleted:
        return REMOVED
    return INDEXED if commit.version is not None else SKIPPED


class Watcher:
    """Polls one run: ``budget`` pending keys per poll (rotating through the pages), plus the
    queues' attributes. Memory: one byte per key and one key page at a time."""

    def __init__(self, runs: RunStore, manifest: Manifest, sqs: Any, *, budget: int = 5000) -> None:
        self.runs, self.manifest, self.sqs, self.budget = runs, manifest, sqs, budget
        self._state: list[bytearray] = []
        self._cursor = (0, 0)  # (page, index) the next poll starts at
        self._quiet = False  # the queue has been empty since the current sweep started
        self.reasons: Counter[str] = Counter()

    def poll(self) -> Snapshot:
        m = self.runs.load(self.manifest.run)
        self.manifest = m
        visible, in_flight = self._queue(m.queue_url)
        if self._cursor == (0, 0):  # a sweep over the pending keys starts
            self._quiet = True
        self._quiet = self._quiet and visible == 0 and in_flight == 0
        swept = self._check(m)
        counts = Counter(b for page in self._state for b in page)
        committed = sum(n for state, n in counts.items() if state != PENDING)
        dead = max(0, self._queue(m.dlq_url)[0] - m.dlq_baseline) if m.dlq_url else 0
        outcomes = Counter({"indexed": counts[INDEXED], "removed": counts[REMOVED], "skipped": counts[SKIPPED]})
        # exact only if the queue was empty for the whole sweep: no key can commit behind the cursor
        exact = swept and self._quiet
        return Snapshot(
            m.total, committed, outcomes, self.reasons, visible, in_flight, dead, exact, m.status == "planning"
        )

    def _check(self, m: Manifest) -> bool:
        """Check up to ``budget`` pending keys from where the last poll stopped; True when this
        finished a sweep over every page (the next poll starts a new one)."""
        while len(self._state) < m.pages:
            self._state.append(bytearray(len(self.runs.page(m.run, len(self._state)))))
        chosen, swept = self._choose(self.budget)
        for number, positions in chosen.items():
            entries = self.runs.page(m.run, number)
            commits = self.runs.commits.get_many(entries[i][0] for i in positions)
            state = self._state[number]
            for i in positions:
                key, _, planned = entries[i]
                commit = commits.get(key)
                state[i] = classify(commit, planned)
                if state[i] == SKIPPED and commit is not None:
                    self.reasons[commit.reason or "unindexable"] += 1
        return swept

    def _choose(self, n: int) -> tuple[dict[int, list[int]], bool]:
        """Up to ``n`` pending positions (page number -> indexes) from the cursor on, and whether
        the walk reached the last page's end."""
        chosen: dict[int, list[int]] = {}
        taken = 0
        start_page, start_index = self._cursor
        for number in range(start_page, len(self._state)):
            state = self._state[number]
            for i in range(start_index if number == start_page else 0, len(state)):
                if state[i] != PENDING:
                    continue
                if taken == n:
                    self._cursor = (number, i)
                    return chosen, False
                chosen.setdefault(number, []).append(i)
                taken += 1
        self._cursor = (0, 0)
        return chosen, True

    def _queue(self, url: str | None) -> tuple[int, int]:
        if not url:
            return 0, 0
        names = ["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"]
        attrs = self.sqs.get_queue_attributes(QueueUrl=url, AttributeNames=names)["Attributes"]
        return int(attrs.get(names[0], 0)), int(attrs.get(names[1], 0))


def dead_letter_url(sqs: Any, queue_url: str) -> str | None:
    """The queue's redrive target (its RedrivePolicy), or None."""
    attrs = sqs.get_queue_attributes(QueueUrl=queue_url, AttributeNames=["RedrivePolicy"])["Attributes"]
    if not attrs.get("RedrivePolicy"):
        return None
    arn = str(json.loads(attrs["RedrivePolicy"])["deadLetterTargetArn"])
    _, _, _, _, account, name = arn.split(":", 5)
    return str(sqs.get_queue_url(QueueName=name, QueueOwnerAWSAccountId=account)["QueueUrl"])


def queue_count(sqs: Any, url: str | None) -> int:
    if not url:
        return 0
    attrs = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["ApproximateNumberOfMessages"])["Attributes"]
    return int(attrs.get("ApproximateNumberOfMessages", 0))


def render_summary(m: Manifest, s: Snapshot) -> str:
    lines = [
        f"backfill {m.run} summary:",
        f"  indexed: {s.outcomes['indexed']}",
        f"  unchanged: {m.unchanged}",
        f"  removed: {s.outcomes['removed']}",
        f"  skipped: {s.outcomes['skipped'] + sum(m.skipped.values())}",
    ]
    reasons = Counter(m.skipped) + s.reasons
    lines += [f"    {reason}: {n}" for reason, n in sorted(reasons.items())]
    lines.append(f"  failed → DLQ: {s.dead}")
    if s.committed < s.total:
        lines.append(f"  not committed: {s.total - s.committed} (queued {s.visible}, in flight {s.in_flight})")
    return "\n".join(lines)


def follow(
    watcher: Watcher,
    *,
    interval: float = 5.0,
    progress: bool = True,
    timeout: float | None = None,
    sleep: Callable[[float], None] = time.sleep,
    out: Any = None,
) -> Snapshot:
    """Poll until the run settles (or ``timeout``), showing a bar of committed vs enqueued; tqdm's
    rate and ETA are the observed commit rate (``initial`` keeps what was done before attaching out)."""
    import sys

    from tqdm import tqdm

    snap = watcher.poll()
    deadline = None if timeout is None else time.monotonic() + timeout
    bar = tqdm(
        total=snap.total,
        initial=snap.committed,
        desc=f"backfill {watcher.manifest.run}",
        unit="file",
        disable=not progress,
        file=out or sys.stderr,
        smoothing=0.1,
    )
    with bar:
        while True:
            bar.total = snap.total
            bar.update(snap.committed - bar.n)
            bar.set_postfix(queued=snap.visible, in_flight=snap.in_flight, dlq=snap.dead, refresh=True)
            if snap.settled or (deadline is not None and time.monotonic() > deadline):
                return snap
            sleep(interval)
            snap = watcher.poll()
