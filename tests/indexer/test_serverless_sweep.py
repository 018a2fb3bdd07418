"""OpenSearch Serverless makes writes searchable only after a delay, so deleting an older version by
query can miss chunks written just before. The indexer then sweeps again from a delayed SQS message.

Here the stand-in publishes writes to search only when the test says so (``refresh_all``), which
makes the race deterministic: two versions are written before either is searchable.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import boto3
import pytest
from indexer import handler
from indexer.events import BadEvent, ObjectEvent, parse_notification, sweep_message
from rag_shared.config import load_settings
from rag_shared.store import VectorStore

from local.sqs_pump import drain
from standins.corpus import document
from standins.opensearch import OpenSearchStandIn
from tests.conftest import API_KEY
from tests.indexer.conftest import Uploader


@pytest.fixture
def lagging() -> Iterator[OpenSearchStandIn]:
    server = OpenSearchStandIn(serverless=True, refresh_interval=None).start()
    yield server
    server.stop()


@pytest.fixture
def queue(aws: str) -> str:
    sqs = boto3.client("sqs", region_name="us-east-1")
    return str(sqs.create_queue(QueueName=f"sweep-{id(sqs)}")["QueueUrl"])


def _env(monkeypatch: pytest.MonkeyPatch, dashscope: Any, store_url: str, service: str, index: str, queue: str) -> None:
    from tests.conftest import COMMIT_TABLE

    for k, v in {
        "COMMIT_TABLE": COMMIT_TABLE,
        "DASHSCOPE_BASE_URL": dashscope.base_url,
        "DASHSCOPE_API_KEY": API_KEY,
        "OPENSEARCH_URL": store_url,
        "OPENSEARCH_SERVICE": service,
        "OPENSEARCH_INDEX": index,
        "CHUNK_SIZE_TOKENS": "200",
        "CHUNK_OVERLAP_TOKENS": "30",
        "SWEEP_QUEUE_URL": queue,
        "SWEEP_DELAY_SECONDS": "0",
    }.items():
        monkeypatch.setenv(k, v)
    handler.reset()


def _texts(server: OpenSearchStandIn, index: str, key: str) -> list[str]:
    server.refresh_all()
    return sorted(d["text"][:2] for d in server.docs(index).values() if d["source_key"] == key)


def _v(tag: str, paragraphs: int) -> str:
    return "\n\n".join(f"{tag} {p}" for p in document(paragraphs).split("\n\n"))


def test_a_version_written_just_before_the_next_is_swept_once_searchable(
    monkeypatch, aws, commit_table, dashscope, lagging, index_name, s3, bucket, queue
):
    _env(monkeypatch, dashscope, lagging.url, "aoss", index_name, queue)
    up = Uploader(s3, bucket)
    up.run(up.put("docs/a.txt", _v("v1", 3)))
    up.run(up.put("docs/a.txt", _v("v2", 2)))  # v1 is not searchable yet: its delete finds nothing
    assert _texts(lagging, index_name, "docs/a.txt") == ["v1", "v1", "v1", "v2", "v2"]  # the race
    store = VectorStore.from_settings(load_settings())
    hits = store.search([1.0] * store.dimensions, 10)
    assert sorted(h.text[:2] for h in hits) == ["v2", "v2"]  # but readers see only the committed version

    sqs = boto3.client("sqs", region_name="us-east-1")
    assert drain(sqs, queue, timeout=30) == 2  # one sweep per applied event, delivered to the handler
    assert _texts(lagging, index_name, "docs/a.txt") == ["v2", "v2"]
    commit = store.commits.get("docs/a.txt")  # type: ignore[union-attr]
    assert commit is not None and commit.chunks == 2


def test_a_delete_is_swept_too(monkeypatch, aws, commit_table, dashscope, lagging, index_name, s3, bucket, queue):
    _env(monkeypatch, dashscope, lagging.url, "aoss", index_name, queue)
    up = Uploader(s3, bucket)
    up.run(up.put("docs/a.txt", _v("v1", 3)))
    up.run(up.delete("docs/a.txt"))
    assert len(_texts(lagging, index_name, "docs/a.txt")) == 3
    drain(boto3.client("sqs", region_name="us-east-1"), queue, timeout=30)
    assert _texts(lagging, index_name, "docs/a.txt") == []


def test_a_domain_needs_no_sweep(monkeypatch, aws, commit_table, dashscope, opensearch, index_name, s3, bucket, queue):
    _env(monkeypatch, dashscope, opensearch.url, "es", index_name, queue)
    up = Uploader(s3, bucket)
    up.run(up.put("docs/a.txt", _v("v1", 3)))
    up.run(up.put("docs/a.txt", _v("v2", 2)))
    sqs = boto3.client("sqs", region_name="us-east-1")
    assert sqs.receive_message(QueueUrl=queue, WaitTimeSeconds=0).get("Messages") is None
    opensearch.refresh_all()
    assert sorted(d["text"][:2] for d in opensearch.docs(index_name).values()) == ["v2", "v2"]


def test_sweep_messages_round_trip_and_malformed_ones_are_poison():
    event = ObjectEvent(action="sweep", bucket="b", key="docs/a b.txt", sequencer="00AB")
    assert parse_notification(sweep_message(event)) == [event]
    with pytest.raises(BadEvent, match="sweep"):
        parse_notification(json.dumps({"qwenRagSweep": {"bucket": "b"}}))
