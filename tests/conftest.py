"""Fixtures: the stand-ins and moto's server on loopback, and settings pointing at them.

The product is configured exactly as in production, by settings and environment
(``AWS_ENDPOINT_URL`` for moto); nothing inside it is patched.
"""

from __future__ import annotations

import itertools
import logging
import os
from collections.abc import Iterator
from typing import Any

import boto3
import pytest
from moto.server import ThreadedMotoServer
from rag_shared.commits import CommitStore, create_table
from rag_shared.config import Settings, load_settings
from rag_shared.dashscope import DashScopeClient
from rag_shared.embeddings import Embedder
from rag_shared.secrets import ApiKeyProvider
from rag_shared.store import VectorStore, make_client

from standins.dashscope import DashScopeStandIn
from standins.opensearch import OpenSearchStandIn

API_KEY = "sk-standin-test-key-0123456789"
_ids = itertools.count()


@pytest.fixture(scope="session")
def dashscope_server() -> Iterator[DashScopeStandIn]:
    server = DashScopeStandIn({API_KEY}).start()
    yield server
    server.stop()


@pytest.fixture
def dashscope(dashscope_server: DashScopeStandIn) -> DashScopeStandIn:
    dashscope_server.reset()
    dashscope_server.latency = 0.0
    dashscope_server.chunk_delay = 0.0
    dashscope_server.rate_limit_per_second = None
    dashscope_server.context_limit = None
    dashscope_server.reply = None
    dashscope_server.api_keys = {API_KEY}
    dashscope_server.region = "ap-southeast-1"
    return dashscope_server


@pytest.fixture(scope="session")
def opensearch_server() -> Iterator[OpenSearchStandIn]:
    server = OpenSearchStandIn().start()
    yield server
    server.stop()


@pytest.fixture
def opensearch(opensearch_server: OpenSearchStandIn) -> OpenSearchStandIn:
    return _clean(opensearch_server)


@pytest.fixture(scope="session")
def serverless_server() -> Iterator[OpenSearchStandIn]:
    """An OpenSearch Serverless vector collection: server-assigned ids, no refresh API."""
    server = OpenSearchStandIn(serverless=True, realtime=True, refresh_interval=None).start()
    yield server
    server.stop()


@pytest.fixture
def serverless(serverless_server: OpenSearchStandIn) -> OpenSearchStandIn:
    return _clean(serverless_server)


@pytest.fixture(params=["domain", "serverless"])
def vector_store(request: pytest.FixtureRequest) -> OpenSearchStandIn:
    """For tests that run against both a managed domain and an OpenSearch Serverless collection."""
    return request.getfixturevalue("opensearch" if request.param == "domain" else "serverless")  # type: ignore[no-any-return]


def _clean(server: OpenSearchStandIn) -> OpenSearchStandIn:
    with server.lock:
        server.item_faults.clear()
        server.request_faults.clear()
    return server


@pytest.fixture(scope="session")
def moto_url() -> Iterator[str]:
    os.environ.setdefault("AWS_ACCESS_KEY_ID", "testing")
    os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "testing")
    os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    url = f"http://{host}:{port}"
    yield url
    server.stop()


@pytest.fixture
def aws(moto_url: str, monkeypatch: pytest.MonkeyPatch) -> str:
    """Point every boto3 client at moto's server, as AWS_ENDPOINT_URL does for any AWS SDK."""
    monkeypatch.setenv("AWS_ENDPOINT_URL", moto_url)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    return moto_url


COMMIT_TABLE = "qwen-rag-commits"


@pytest.fixture(scope="session")
def commit_table(moto_url: str) -> str:
    """The commit table as the template declares it, once per session on moto's DynamoDB; commit
    records are namespaced by index name, and every test has its own index."""
    create_table(boto3.client("dynamodb", endpoint_url=moto_url, region_name="us-east-1"), COMMIT_TABLE)
    return COMMIT_TABLE


@pytest.fixture
def commits(aws: str, commit_table: str, index_name: str) -> CommitStore:
    return CommitStore(boto3.client("dynamodb", region_name="us-east-1"), commit_table, index_name)


@pytest.fixture
def index_name() -> str:
    return f"test-{os.getpid()}-{next(_ids)}"


@pytest.fixture
def make_settings(dashscope: DashScopeStandIn, opensearch: OpenSearchStandIn, index_name: str) -> Any:
    def make(**overrides: Any) -> Settings:
        values: dict[str, Any] = {
            "dashscope_base_url": dashscope.base_url,
            "dashscope_api_key": API_KEY,
            "dashscope_max_retries": 4,
            "dashscope_timeout_seconds": 10,
            "opensearch_url": opensearch.url,
            "opensearch_index": index_name,
            "chunk_size_tokens": 200,
            "chunk_overlap_tokens": 30,
        }
        values.update(overrides)
        return load_settings(**values)

    return make


@pytest.fixture
def settings(make_settings: Any) -> Settings:
    return make_settings()  # type: ignore[no-any-return]


@pytest.fixture
def client(settings: Settings) -> DashScopeClient:
    return DashScopeClient(settings, ApiKeyProvider.from_settings(settings))


@pytest.fixture
def embedder(settings: Settings, client: DashScopeClient) -> Embedder:
    return Embedder(client, settings.embedder, settings.dimensions, concurrency=4)


@pytest.fixture
def store(settings: Settings, commits: CommitStore) -> VectorStore:
    return VectorStore(
        make_client(settings), settings.opensearch_index, settings.dimensions, commits=commits, backoff_seconds=0.01
    )


@pytest.fixture
def s3(aws: str) -> Any:
    return boto3.client("s3", region_name="us-east-1")


@pytest.fixture
def bucket(s3: Any) -> str:
    name = f"docs-{os.getpid()}-{next(_ids)}"
    s3.create_bucket(Bucket=name)
    return name


@pytest.fixture
def captured_logs(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    caplog.set_level(logging.DEBUG)
    return caplog
