"""A seeded, randomized schedule checker for the indexer (model-based test).

Each schedule is a random sequence of S3 operations on a versioned bucket (puts, overwrites,
deletes, deletes of a specific version, undeletes) whose events are delivered to the real Lambda
handler in random order, in random wrappers (direct, SNS envelope, EventBridge), duplicated,
replayed, and several at once in threads, with injected faults (DashScope 503s, OpenSearch
transient and permanent item rejections, invocations out of time). Failed messages come back
(up to MAX_RECEIVES, then the DLQ); continuations and sweeps the indexer sends itself are
delivered too. Then every message is drained, and the invariants are checked:

1. for every key, retrieval returns only chunks of the version S3 currently serves (none if deleted);
2. the committed chunk count equals the live count of the committed version;
3. after cleanup no other chunk of the key remains (no orphan);
4. nothing is in the DLQ (every fault injected is one a retry can overcome).

``SCHEDULES`` (default 4 per store kind) bounds the suite; ``make soak`` runs many more
(``SCHEDULES=200``). The seed of a failing schedule is in the assertion message: rerun it with
``SCHEDULE_SEED=<seed> SCHEDULES=1``.
"""

from __future__ import annotations

import itertools
import json
import os
import random
import threading
import uuid
from dataclasses import dataclass, field
from typing import Any

import boto3
import pytest
from indexer import handler
from rag_shared.config import load_settings
from rag_shared.store import VectorStore

from local.lambda_context import FakeContext
from standins.dashscope import Fault
from tests.conftest import API_KEY

SCHEDULES = int(os.environ.get("SCHEDULES", "4"))
BASE_SEED = int(os.environ.get("SCHEDULE_SEED", "20261124"))
MAX_RECEIVES = 10
KEYS = ["docs/a.txt", "docs/b 文.md"]
_seq = itertools.count(0x100)
TOTALS = {"schedules": 0, "violations": 0, "deliveries": 0, "faults": 0}


def sequencer() -> str:
    return f"00A1B2C3D4{next(_seq):08X}"


@dataclass
class Message:
    body: str
    id: str = field(default_factory=lambda: str(uuid.uuid4()))
    receives: int = 0


@dataclass
class World:
    rng: random.Random
    s3: Any
    sqs: Any
    bucket: str
    queue_url: str
    queue_arn: str
    dashscope: Any
    opensearch: Any
    pending: list[Message] = field(default_factory=list)
    dead: list[Message] = field(default_factory=list)
    log: list[str] = field(default_factory=list)
    faults: int = 0

    # S3 operations: each returns the event S3 would send

    def content(self, key: str) -> str:
        n = self.rng.randint(1, 5)
        tag = uuid.uuid4().hex[:6]
        return "\n\n".join(f"{key} {tag} part {i}. " + "Words of the version. " * 12 for i in range(n))

    def put(self, key: str) -> None:
        got = self.s3.put_object(Bucket=self.bucket, Key=key, Body=self.content(key).encode())
        self.emit("ObjectCreated:Put", key, got["VersionId"], got["ETag"].strip('"'))

    def delete(self, key: str) -> None:
        got = self.s3.delete_object(Bucket=self.bucket, Key=key)
        self.emit("ObjectRemoved:DeleteMarkerCreated", key, got.get("VersionId"))

    def delete_version(self, key: str) -> None:
        versions = self.versions(key)
        if versions:
            vid = self.rng.choice(versions)
            self.s3.delete_object(Bucket=self.bucket, Key=key, VersionId=vid)
            self.emit("ObjectRemoved:Delete", key, vid)

    def undelete(self, key: str) -> None:
        listing = self.s3.list_object_versions(Bucket=self.bucket, Prefix=key)
        markers = [m for m in listing.get("DeleteMarkers", []) if m["Key"] == key and m["IsLatest"]]
        if markers:
            self.s3.delete_object(Bucket=self.bucket, Key=key, VersionId=markers[0]["VersionId"])
            self.emit("ObjectRemoved:Delete", key, markers[0]["VersionId"])

    def versions(self, key: str) -> list[str]:
        listing = self.s3.list_object_versions(Bucket=self.bucket, Prefix=key)
        return [v["VersionId"] for v in listing.get("Versions", []) if v["Key"] == key]

    def emit(self, name: str, key: str, version_id: str | None, etag: str | None = None) -> None:
        from urllib.parse import quote_plus

        seq = sequencer()
        obj: dict[str, Any] = {"key": quote_plus(key, safe="/"), "sequencer": seq}
        if version_id:
            obj["versionId"] = version_id
        if etag:
            obj["eTag"] = etag
        notification = {
            "Records": [
                {"eventSource": "aws:s3", "eventName": name, "s3": {"bucket": {"name": self.bucket}, "object": obj}}
            ]
        }
        shape = self.rng.choice(["direct", "sns", "eventbridge"])
        body: dict[str, Any] = notification
        if shape == "sns":
            body = {
                "Type": "Notification",
                "TopicArn": "arn:aws:sns:us-east-1:123456789012:t",
                "Message": json.dumps(notification),
            }
        elif shape == "eventbridge":
            eb_obj = {"key": key, "sequencer": seq} | ({"version-id": version_id} if version_id else {})
            if etag:
                eb_obj["etag"] = etag
            body = {
                "version": "0",
                "detail-type": "Object Created" if name.startswith("ObjectCreated") else "Object Deleted",
                "source": "aws.s3",
                "detail": {"bucket": {"name": self.bucket}, "object": eb_obj},
            }
        self.log.append(f"{name} {key} v={version_id} seq={seq} via {shape}")
        self.pending.append(Message(json.dumps(body)))

    # deliveries

    def invoke(self, msg: Message, remaining_ms: int) -> bool:
        msg.receives += 1
        record = {
            "messageId": msg.id,
            "receiptHandle": f"rh-{msg.id}-{msg.receives}",
            "body": msg.body,
            "attributes": {"ApproximateReceiveCount": str(msg.receives)},
            "messageAttributes": {},
            "md5OfBody": "",
            "eventSource": "aws:sqs",
            "eventSourceARN": self.queue_arn,
            "awsRegion": "us-east-1",
        }
        result = handler.lambda_handler({"Records": [record]}, FakeContext(remaining_ms=remaining_ms))
        TOTALS["deliveries"] += 1
        return not result["batchItemFailures"]

    def deliver(self, batch: list[Message], *, faults: bool) -> None:
        """Deliver ``batch`` at once (threads); a message may appear twice (a concurrent duplicate)."""
        remaining = 60_000
        if faults:
            remaining = self.inject()
        done: dict[int, bool] = {}

        def run(i: int, m: Message) -> None:
            done[i] = self.invoke(m, remaining)

        threads = [threading.Thread(target=run, args=(i, m)) for i, m in enumerate(batch)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        for i, m in enumerate(batch):
            ok = done.get(i, False)
            if ok and m in self.pending:
                if not (faults and self.rng.random() < 0.2):  # else kept: S3 delivers it again later
                    self.pending.remove(m)
            elif not ok and m.receives >= MAX_RECEIVES and m in self.pending:
                self.pending.remove(m)
                self.dead.append(m)
        self.collect()

    def inject(self) -> int:
        """Maybe one fault for this delivery; returns the invocation's remaining time (ms)."""
        roll = self.rng.random()
        if roll < 0.12:
            self.dashscope.inject(Fault(status=503, code="ServiceUnavailable"), times=1)
        elif roll < 0.22:
            self.opensearch.fail_items(1, status=429)
        elif roll < 0.30:
            self.opensearch.fail_items(1, status=400)  # rejected for good (this try)
        elif roll < 0.40:
            self.faults += 1
            return 25  # out of time after the first window
        else:
            return 60_000
        self.faults += 1
        return 60_000

    def collect(self) -> None:
        """Continuations and sweeps the indexer sent itself join the pending messages."""
        while got := self.sqs.receive_message(QueueUrl=self.queue_url, MaxNumberOfMessages=10).get("Messages"):
            for m in got:
                self.sqs.delete_message(QueueUrl=self.queue_url, ReceiptHandle=m["ReceiptHandle"])
                self.pending.append(Message(m["Body"]))


def run_schedule(world: World) -> None:
    rng = world.rng
    for _ in range(rng.randint(4, 9)):
        key = rng.choice(KEYS)
        op = rng.choices(["put", "delete", "delete_version", "undelete"], weights=[4, 2, 2, 2])[0]
        getattr(world, op)(key)
        # deliver some of what is pending, in random order, sometimes several at once
        for _ in range(rng.randint(0, 2)):
            if not world.pending:
                break
            batch = rng.sample(world.pending, k=min(len(world.pending), rng.randint(1, 3)))
            if rng.random() < 0.3:
                batch.append(batch[0])  # the same message twice at once (two containers)
            world.deliver(batch, faults=True)
    for _ in range(200):  # drain: everything is delivered, in random order, without new faults
        if not world.pending:
            break
        world.deliver([rng.choice(world.pending)], faults=False)
    assert not world.pending, "messages still pending after 200 deliveries"


def check_invariants(world: World, store: VectorStore) -> list[str]:
    violations: list[str] = []
    store.refresh()
    hits = store.search_all([1.0] * store.dimensions, 2000)
    committed = store.commits.get_many(KEYS)  # type: ignore[union-attr]
    visible = store.search([1.0] * store.dimensions, 500)
    for key in KEYS:
        try:
            head = world.s3.head_object(Bucket=world.bucket, Key=key)
            body = world.s3.get_object(Bucket=world.bucket, Key=key)["Body"].read().decode()
        except world.s3.exceptions.ClientError:
            head, body = None, ""
        commit = committed.get(key)
        seen = [h for h in visible if h.source_key == key]
        live = [h for h in hits if h.source_key == key]
        if head is None:
            if seen:
                violations.append(f"{key}: deleted in S3 but {len(seen)} chunks retrievable")
            if live:
                violations.append(f"{key}: deleted in S3 but {len(live)} orphaned chunks remain")
            continue
        if commit is None or commit.deleted:
            violations.append(f"{key}: S3 serves {head['VersionId']} but the commit is {commit}")
            continue
        if commit.version_id != head["VersionId"]:
            violations.append(f"{key}: S3 serves {head['VersionId']}, committed {commit.version_id}")
        if any(h.text not in body for h in seen):
            violations.append(f"{key}: a retrievable chunk is not from the version S3 serves")
        if len(seen) != commit.chunks:
            violations.append(f"{key}: {len(seen)} chunks retrievable, commit says {commit.chunks}")
        if len(live) != commit.chunks or any(h.version != commit.version for h in live):
            violations.append(f"{key}: {len(live)} chunks live, commit says {commit.chunks} (orphans)")
    if world.dead:
        violations.append(f"{len(world.dead)} messages dead-lettered that could have succeeded")
    return violations


@pytest.fixture
def schedule_env(monkeypatch, aws, dashscope, vector_store, index_name, s3, bucket, commit_table):
    sqs = boto3.client("sqs", region_name="us-east-1")
    url = sqs.create_queue(QueueName=f"{bucket}-schedules")["QueueUrl"]
    arn = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    s3.put_bucket_versioning(Bucket=bucket, VersioningConfiguration={"Status": "Enabled"})
    for k, v in {
        "DASHSCOPE_BASE_URL": dashscope.base_url,
        "DASHSCOPE_API_KEY": API_KEY,
        "DASHSCOPE_MAX_RETRIES": "0",  # an injected 503 fails the record: SQS retries it
        "OPENSEARCH_URL": vector_store.url,
        "OPENSEARCH_SERVICE": "aoss" if vector_store.serverless else "es",
        "OPENSEARCH_INDEX": index_name,
        "CHUNK_SIZE_TOKENS": "64",
        "CHUNK_OVERLAP_TOKENS": "8",
        "COMMIT_TABLE": commit_table,
        "SWEEP_QUEUE_URL": url,
        "SWEEP_DELAY_SECONDS": "0",
        "STOP_BEFORE_TIMEOUT_SECONDS": "0",
        "RETRY_BASE_SECONDS": "0",
        "POWERTOOLS_LOG_LEVEL": "CRITICAL",
    }.items():
        monkeypatch.setenv(k, v)
    handler.reset()
    ix = handler.get_indexer()
    ix.config.window = 2  # several windows per file, so running out of time stops mid-file
    ix.store.max_attempts = 2  # an injected item fault fails the try quickly
    ix.store.backoff_seconds = 0.01
    yield sqs, url, arn
    handler.reset()


@pytest.mark.parametrize("n", range(SCHEDULES))
def test_random_schedules_keep_the_invariants(schedule_env, dashscope, vector_store, s3, bucket, n):
    sqs, url, arn = schedule_env
    seed = BASE_SEED + n * 7919 + (1 if vector_store.serverless else 0)
    world = World(random.Random(seed), s3, sqs, bucket, url, arn, dashscope, vector_store)
    run_schedule(world)
    store = VectorStore.from_settings(load_settings())
    violations = check_invariants(world, store)
    TOTALS["schedules"] += 1
    TOTALS["faults"] += world.faults
    TOTALS["violations"] += bool(violations)
    print(f"schedules run: {TOTALS}")
    assert not violations, (
        f"seed {seed} ({'serverless' if vector_store.serverless else 'domain'}): "
        + "; ".join(violations)
        + "\nschedule:\n  "
        + "\n  ".join(world.log)
    )
