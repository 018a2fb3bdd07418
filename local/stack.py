"""The whole service on loopback, with no AWS account and no Docker.

moto's server plays S3 (with real bucket → SQS notifications), SQS, DynamoDB and Secrets Manager; the vector
store is the OpenSearch at ``OPENSEARCH_URL`` if given, else the stand-in; DashScope is the real
service if ``DASHSCOPE_API_KEY`` is set, else the stand-in; the chat app runs under uvicorn and
the indexer is fed from the queue the way Lambda's SQS trigger feeds it.

Under ``make serve`` it keeps going: a folder is mirrored into the bucket (:mod:`local.watch`) and
the queue is pumped continuously, so a file added, changed or deleted there, or copied to the bucket
with ``aws s3 cp --endpoint-url``, is indexed within seconds, with one line per file
(:mod:`local.report`). Failures are meant to be quick and plain here: a wrong key or an unreachable
DashScope is found by one embedding call at start with one retry, not after a Lambda's patient
backoff, and the error names what to change.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from local.report import FileLines
    from local.watch import FolderMirror

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_TOKEN = "local-dev-token"  # noqa: S105 - loopback only; CHAT_TOKEN overrides it
LOCAL_CREDENTIALS = {"local": "local"}  # moto's and the SigV4 endpoint's access key -> secret key


class StackError(RuntimeError):
    """The local stack cannot start; the message names the variable or option to change."""


@dataclass
class LocalStack:
    chat_port: int = 0
    aws_port: int = 0  # moto's server (S3, SQS, Secrets Manager); 0: any free port
    iam_port: int | None = None  # also serve a SigV4-checking function URL (None: not at all)
    say: Any = print
    env: dict[str, str] = field(default_factory=dict)
    bucket: str = "qwen-rag-documents"
    queue_url: str = ""
    chat_url: str = ""
    iam_url: str = ""
    token: str = ""
    uses_real_dashscope: bool = False
    uses_real_opensearch: bool = False
    lines: FileLines | None = None
    # moto's state is per process: a second stack in the same process (tests) gets its own secret and queues
    run_id: str = field(default_factory=lambda: secrets.token_hex(3))
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
        from indexer import handler

        handler.reset()  # its wired clients point at this stack's services, now gone
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

        from indexer import handler  # its logger must exist before file_lines mutes it

        from local.report import file_lines
        from local.servers import bind

        self.lines = self._stack.enter_context(file_lines(self.say))
        if self.aws_port:
            bind(self.aws_port, "--aws-port").close()  # a busy port: one clear error, not a dead thread
        moto = ThreadedMotoServer(ip_address="127.0.0.1", port=self.aws_port, verbose=False)
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
            # a demo should fail in seconds, not retry for a minute as a Lambda does (values the user set win)
            self._setenv(
                DASHSCOPE_MAX_RETRIES=os.environ.get("DASHSCOPE_MAX_RETRIES", "1"),
                DASHSCOPE_TIMEOUT_SECONDS=os.environ.get("DASHSCOPE_TIMEOUT_SECONDS", "15"),
            )
            self.say(f"• DashScope: the real service (region {os.environ.get('DASHSCOPE_REGION', 'ap-southeast-1')})")
        else:
            from standins.dashscope import DashScopeStandIn

            key = "sk-local-standin-" + secrets.token_hex(8)
            from rag_shared.config import parse_region
            from rag_shared.errors import ConfigError

            # the stand-in serves what the configured region serves, as the real one would
            try:
                region = parse_region(os.environ.get("DASHSCOPE_REGION") or "ap-southeast-1").value
            except ValueError as exc:  # the demo prints a ConfigError as one line, not a traceback
                raise ConfigError(str(exc)) from exc
            ds = DashScopeStandIn({key}, chunk_delay=0.04, region=region).start()
            self._stack.callback(ds.stop)
            self._setenv(DASHSCOPE_BASE_URL=ds.base_url)
            self.say(
                f"• DashScope: DASHSCOPE_API_KEY is not set, so a local STAND-IN answers on {ds.base_url}\n"
                "  (canned answers built from the retrieved passages, not Qwen; set DASHSCOPE_API_KEY for real ones)"
            )
        # the key goes through Secrets Manager, as in AWS
        name = f"qwen-rag/dashscope-{self.run_id}"
        arn = sm.create_secret(Name=name, SecretString=json.dumps({"api_key": key}))["ARN"]
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
        dlq = sqs.create_queue(QueueName=f"qwen-rag-index-dlq-{self.run_id}")["QueueUrl"]
        dlq_arn = sqs.get_queue_attributes(QueueUrl=dlq, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
        self.queue_url = sqs.create_queue(
            QueueName=f"qwen-rag-index-{self.run_id}",
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

        settings = self._check()

        # the chat app, as run.sh starts it behind the adapter
        self.token = os.environ.get("CHAT_TOKEN") or os.environ.get("CHAT_API_TOKEN") or DEFAULT_TOKEN
        self._setenv(CHAT_AUTH_MODE="token", CHAT_API_TOKEN=self.token, CHAT_PAGE=os.environ.get("CHAT_PAGE", "true"))
        from chat.app import create_app
        from chat.settings import ChatSettings

        from local.servers import AppServer

        handler.reset()
        server = AppServer(create_app(), port=self.chat_port or None)
        self._stack.enter_context(server)
        self.chat_url = server.url
        self.say(f"• Chat app: uvicorn on {self.chat_url} (bearer token auth: CHAT_TOKEN={self.token})")
        if self.iam_port is not None:
            # the default AWS_IAM function URL: the stand-in checks SigV4 as AWS does, then relays
            from standins.function_url import FunctionUrl

            # its own app and clients: an async client is bound to the event loop of the server that made it
            inner = self._stack.enter_context(AppServer(create_app(None, ChatSettings(chat_auth_mode="iam"))))
            front = FunctionUrl(inner.url, LOCAL_CREDENTIALS, region="us-east-1")
            try:
                front.start(self.iam_port)
            except OSError as exc:
                raise StackError(f"port {self.iam_port} is already in use: choose another with --iam-port N") from exc
            self._stack.callback(front.stop)
            self.iam_url = front.url
            self.say(
                f"• Function URL (AWS_IAM): {self.iam_url} checks SigV4 signatures made with "
                "AWS_ACCESS_KEY_ID=local AWS_SECRET_ACCESS_KEY=local AWS_REGION=us-east-1"
            )
        del settings

    def _check(self) -> Any:
        """Settings and, with a real key, one embedding call: a bad setting, a wrong key or an
        unreachable DashScope is reported now, in one line, instead of by every file and question."""
        from rag_shared.config import load_settings
        from rag_shared.errors import InvalidApiKeyError, RagError

        settings = load_settings()  # ConfigError names the variable
        if not self.uses_real_dashscope:
            return settings
        from rag_shared.dashscope import DashScopeClient
        from rag_shared.secrets import ApiKeyProvider

        client = DashScopeClient(settings, ApiKeyProvider.from_settings(settings))
        try:
            client.embed_batch(["ping"], settings.embedder, settings.dimensions)
        except InvalidApiKeyError as exc:
            raise StackError(f"DashScope check failed: {exc}") from exc
        except RagError as exc:
            where = f"{settings.base_url} (DASHSCOPE_REGION={settings.region.value})"
            raise StackError(
                f"DashScope check failed at {where}: {exc}; check the network, DASHSCOPE_REGION "
                "(a key works only in its own region) or DASHSCOPE_BASE_URL"
            ) from exc
        return settings

    def mirror(self, directory: Path, prefix: str | None = None) -> FolderMirror:
        """A mirror of ``directory`` into the bucket under ``prefix`` (default: the folder's name + /)."""
        import boto3

        from local.watch import FolderMirror

        if not directory.is_dir():
            raise StackError(f"DOCS={directory}: no such folder; point DOCS at a folder of documents")
        prefix = prefix or directory.resolve().name + "/"
        return FolderMirror(directory, boto3.client("s3"), self.bucket, prefix, self.say)

    def upload(self, directory: Path, prefix: str = "samples/") -> list[str]:
        changes = self.mirror(directory, prefix).sync(quiet=True)
        return [prefix + c.path for c in changes]

    def run_indexer(self, timeout: float = 120.0) -> int:
        """Deliver until the queue is empty and nothing is in flight (failed files come back after
        5 s, up to the queue's five receives); returns the number of messages delivered."""
        import boto3

        from local.sqs_pump import drain

        return drain(boto3.client("sqs"), self.queue_url, timeout=timeout)

    def keep_indexing(self, mirror: FolderMirror | None, interval: float = 1.0) -> None:
        """Until the stack stops: mirror the folder every ``interval`` s and pump the queue continuously."""
        import boto3

        from local.sqs_pump import pump
        from local.watch import Poller

        sqs = boto3.client("sqs")
        pumper = Poller(lambda: pump(sqs, self.queue_url, max_rounds=1, wait_seconds=1), 0.0, "queue", self.say)
        self._stack.callback(pumper.start().stop)
        if mirror is not None:
            # quiet: the indexer's line for each file is the one line to read
            watcher = Poller(lambda: mirror.sync(quiet=True), interval, "watcher", self.say)
            self._stack.callback(watcher.start().stop)
