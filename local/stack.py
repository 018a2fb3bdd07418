"""The whole service on loopback, with no AWS account and no Docker.

moto's server plays S3 (with real bucket → SQS notifications), SQS, DynamoDB and Secrets Manager; the vector
store is the OpenSearch at ``OPENSEARCH_URL`` if given, else the stand-in; DashScope is the real
service if ``DASHSCOPE_API_KEY`` is set, else the stand-in; the chat app runs under uvicorn and
the indexer is fed from the queue the way Lambda's SQS trigger feeds it.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]


@dataclass
class LocalStack:
    chat_port: int = 0
    say: Any = print
    env: dict[str, str] = field(default_factory=dict)
    bucket: str = "qwen-rag-documents"
    queue_url: str = ""
    chat_url: str = ""
    token: str = ""
    uses_real_dashscope: bool = False
    uses_real_opensearch: bool = False
    _stack: contextlib.ExitStack = field(default_factory=contextlib.ExitStack)
    _saved_env: dict[str, str | None] = field(default_factory=dict)

    def _setenv(self, **values: str) -> None:
        for k, v in values.items():
            self._saved_env.setdefault(k, os.environ.get(k))
            os.environ[k] = v
            self.env[k] = v

    def __enter__(self) -> LocalStack:
        try:
            self._start()
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stack.close()
        for k, v in self._saved_env.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v

    def _start(self) -> None:
        import logging

        from moto.server import ThreadedMotoServer

        logging.getLogger("werkzeug").setLevel(logging.WARNING)  # moto's access log
        self._setenv(
            POWERTOOLS_LOG_LEVEL=os.environ.get("POWERTOOLS_LOG_LEVEL", "WARNING"),
            POWERTOOLS_METRICS_DISABLED=os.environ.get("POWERTOOLS_METRICS_DISABLED", "true"),
            CHUNK_SIZE_TOKENS=os.environ.get("CHUNK_SIZE_TOKENS", "120"),
            CHUNK_OVERLAP_TOKENS=os.environ.get("CHUNK_OVERLAP_TOKENS", "20"),
            # a failed file comes back after 5 s, as the local queue's visibility timeout says,
            # not after the deployed 30 s+ backoff the handler would otherwise set on the message
            RETRY_BASE_SECONDS=os.environ.get("RETRY_BASE_SECONDS", "5"),
            RETRY_MAX_SECONDS=os.environ.get("RETRY_MAX_SECONDS", "5"),
        )

        moto = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
        moto.start()
        self._stack.callback(moto.stop)
        host, port = moto.get_host_and_port()
        for name in [k for k in os.environ if k.startswith("AWS_ENDPOINT_URL_")]:
            # a per-service endpoint would win over the moto server's; set aside for the run
            self._saved_env.setdefault(name, os.environ.pop(name))
        self._setenv(
            AWS_ENDPOINT_URL=f"http://{host}:{port}",
            AWS_ACCESS_KEY_ID="local",
            AWS_SECRET_ACCESS_KEY="local",  # noqa: S106 - moto accepts anything
            AWS_DEFAULT_REGION="us-east-1",
            AWS_REGION="us-east-1",
        )
        self.say(f"• AWS (S3, SQS, DynamoDB, Secrets Manager): moto server on http://{host}:{port}")

        import boto3

        # DashScope: the real service when a key is given, else the stand-in (said plainly)
        sm = boto3.client("secretsmanager")
        real_key = os.environ.get("DASHSCOPE_API_KEY")
        if real_key:
            self.uses_real_dashscope = True
            key = real_key
            self.say(f"• DashScope: the real service (region {os.environ.get('DASHSCOPE_REGION', 'ap-southeast-1')})")
        else:
            from standins.dashscope import DashScopeStandIn

            key = "sk-local-standin-" + secrets.token_hex(8)
            from rag_shared.config import parse_region

            # the stand-in serves what the configured region serves, as the real one would
            region = parse_region(os.environ.get("DASHSCOPE_REGION") or "ap-southeast-1").value
            ds = DashScopeStandIn({key}, chunk_delay=0.04, region=region).start()
            self._stack.callback(ds.stop)
            self._setenv(DASHSCOPE_BASE_URL=ds.base_url)
            self.say(
                f"• DashScope: DASHSCOPE_API_KEY is not set, so a local STAND-IN answers on {ds.base_url}\n"
                "  (canned answers built from the retrieved passages, not Qwen; set DASHSCOPE_API_KEY for real ones)"
            )
        # the key goes through Secrets Manager, as in AWS
        arn = sm.create_secret(Name="qwen-rag/dashscope", SecretString=json.dumps({"api_key": key}))["ARN"]
        self._saved_env.setdefault("DASHSCOPE_API_KEY", os.environ.get("DASHSCOPE_API_KEY"))
        os.environ.pop("DASHSCOPE_API_KEY", None)
        self._setenv(DASHSCOPE_SECRET_ARN=arn)

        # vector store
        if os.environ.get("OPENSEARCH_URL"):
            self.uses_real_opensearch = True
            self.say(f"• OpenSearch: {os.environ['OPENSEARCH_URL']}")
        else:
            from standins.opensearch import OpenSearchStandIn

            osi = OpenSearchStandIn().start()
            self._stack.callback(osi.stop)
            self._setenv(OPENSEARCH_URL=osi.url)
            self.say(f"• OpenSearch: OPENSEARCH_URL is not set, so the k-NN stand-in serves on {osi.url}")
        self._setenv(OPENSEARCH_INDEX=os.environ.get("OPENSEARCH_INDEX") or f"local-demo-{int(time.time())}")

        # the indexer's commit table (which chunk version readers see), as the template declares it
        from rag_shared.commits import create_table

        create_table(boto3.client("dynamodb"), "qwen-rag-commits")
        self._setenv(COMMIT_TABLE="qwen-rag-commits")

        # bucket → queue notifications, as the template wires them
        s3, sqs = boto3.client("s3"), boto3.client("sqs")
        dlq = sqs.create_queue(QueueName="qwen-rag-index-dlq")["QueueUrl"]
        dlq_arn = sqs.get_queue_attributes(QueueUrl=dlq, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
        self.queue_url = sqs.create_queue(
            QueueName="qwen-rag-index",
            Attributes={
                "RedrivePolicy": json.dumps({"deadLetterTargetArn": dlq_arn, "maxReceiveCount": "5"}),
                "VisibilityTimeout": "5",
            },
        )["QueueUrl"]
        queue_arn = sqs.get_queue_attributes(QueueUrl=self.queue_url, AttributeNames=["QueueArn"])["Attributes"][
            "QueueArn"
        ]
        s3.create_bucket(Bucket=self.bucket)
        s3.put_bucket_notification_configuration(
            Bucket=self.bucket,
            NotificationConfiguration={
                "QueueConfigurations": [{"QueueArn": queue_arn, "Events": ["s3:ObjectCreated:*", "s3:ObjectRemoved:*"]}]
            },
        )
        sqs.purge_queue(QueueUrl=self.queue_url)  # drop S3's test event

        # the chat app, as run.sh starts it behind the adapter
        self.token = os.environ.get("CHAT_API_TOKEN") or secrets.token_urlsafe(24)
        self._setenv(CHAT_AUTH_MODE="token", CHAT_API_TOKEN=self.token)
        from chat.app import create_app
        from indexer import handler

        from local.servers import AppServer

        handler.reset()
        server = AppServer(create_app(), port=self.chat_port or None)
        self._stack.enter_context(server)
        self.chat_url = server.url
        self.say(f"• Chat app: uvicorn on {self.chat_url} (bearer token auth)")

    def upload(self, directory: Path, prefix: str = "samples/") -> list[str]:
        import boto3

        s3 = boto3.client("s3")
        keys = []
        for path in sorted(directory.iterdir()):
            if path.is_file():
                s3.put_object(Bucket=self.bucket, Key=prefix + path.name, Body=path.read_bytes())
                keys.append(prefix + path.name)
        return keys

    def run_indexer(self) -> int:
        import boto3

        from local.sqs_pump import pump

        return pump(boto3.client("sqs"), self.queue_url)
