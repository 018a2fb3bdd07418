from __future__ import annotations

import itertools
import json
from typing import Any

import pytest
from indexer import handler

from tests.conftest import API_KEY
from tests.events import FakeContext, s3_event, sqs_event

_seq = itertools.count(0x10)


def next_seq() -> str:
    """Increasing S3-style sequencers (hex, varying length is handled by the product)."""
    return f"0055AED6DCD9{next(_seq):06X}"


@pytest.fixture
def indexer_env(monkeypatch, aws, dashscope, vector_store, index_name, commit_table):
    """Configure the deployed handler as the template does: by environment only. These tests are
    written around text-embedding-v2 (1,536 dimensions, 25 texts per call), which only Beijing serves."""
    dashscope.region = "cn-beijing"
    env = {
        "DASHSCOPE_REGION": "cn-beijing",
        "EMBEDDING_MODEL": "text-embedding-v2",
        "DASHSCOPE_BASE_URL": dashscope.base_url,
        "DASHSCOPE_API_KEY": API_KEY,
        "DASHSCOPE_MAX_RETRIES": "4",
        "OPENSEARCH_URL": vector_store.url,
        "OPENSEARCH_SERVICE": "aoss" if vector_store.serverless else "es",
        "OPENSEARCH_INDEX": index_name,
        "CHUNK_SIZE_TOKENS": "200",
        "CHUNK_OVERLAP_TOKENS": "30",
        "MAX_FILE_BYTES": str(200_000),
        "POWERTOOLS_METRICS_NAMESPACE": "QwenRagTest",
        "COMMIT_TABLE": commit_table,
    }
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    handler.reset()
    yield env
    handler.reset()


class Uploader:
    """Puts objects in moto's S3 and runs the handler on the matching SQS-wrapped S3 event."""

    def __init__(self, s3: Any, bucket: str) -> None:
        self.s3, self.bucket = s3, bucket

    def put(self, key: str, body: bytes | str, content_type: str | None = None) -> dict[str, Any]:
        data = body.encode() if isinstance(body, str) else body
        extra = {"ContentType": content_type} if content_type else {}
        etag = self.s3.put_object(Bucket=self.bucket, Key=key, Body=data, **extra)["ETag"].strip('"')
        return s3_event(self.bucket, key, sequencer=next_seq(), etag=etag)

    def delete(self, key: str) -> dict[str, Any]:
        self.s3.delete_object(Bucket=self.bucket, Key=key)
        return s3_event(self.bucket, key, sequencer=next_seq(), delete=True)

    @staticmethod
    def run(*bodies: dict[str, Any] | str) -> dict[str, Any]:
        return handler.lambda_handler(sqs_event(*bodies), FakeContext())  # type: ignore[no-any-return]


@pytest.fixture
def uploader(indexer_env, s3, bucket) -> Uploader:
    return Uploader(s3, bucket)


class Queues:
    """An indexing queue and its dead-letter queue, wired as the template does (a redrive policy)."""

    def __init__(self, sqs: Any) -> None:
        self.sqs = sqs
        suffix = next(_seq)
        self.dlq = sqs.create_queue(QueueName=f"qwen-rag-dlq-{suffix}")["QueueUrl"]
        dlq_arn = sqs.get_queue_attributes(QueueUrl=self.dlq, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
        self.url = sqs.create_queue(
            QueueName=f"qwen-rag-index-{suffix}",
            Attributes={"RedrivePolicy": json.dumps({"deadLetterTargetArn": dlq_arn, "maxReceiveCount": "5"})},
        )["QueueUrl"]
        self.arn = sqs.get_queue_attributes(QueueUrl=self.url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]

    def event(self, *bodies: dict[str, Any] | str) -> dict[str, Any]:
        """An SQS event of ``bodies`` as received from this queue."""
        event = sqs_event(*bodies)
        for r in event["Records"]:
            r["eventSourceARN"] = self.arn
        return event

    def _drain(self, url: str) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        while True:
            got = self.sqs.receive_message(
                QueueUrl=url, MaxNumberOfMessages=10, MessageAttributeNames=["All"], AttributeNames=["All"]
            ).get("Messages", [])
            if not got:
                return out
            for m in got:
                self.sqs.delete_message(QueueUrl=url, ReceiptHandle=m["ReceiptHandle"])
            out += got

    def dead_letters(self) -> list[dict[str, Any]]:
        return self._drain(self.dlq)

    def messages(self) -> list[dict[str, Any]]:
        return self._drain(self.url)


@pytest.fixture
def queues(indexer_env, aws) -> Queues:
    import boto3

    q = Queues(boto3.client("sqs", region_name="us-east-1"))
    handler.reset()
    return q
