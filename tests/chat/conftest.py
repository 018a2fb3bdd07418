from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest
from chat.app import create_app
from chat.service import ChatDeps
from chat.settings import ChatSettings
from indexer.events import ObjectEvent
from indexer.pipeline import Indexer, IndexerConfig

from local.servers import AppServer

SAMPLES = Path(__file__).resolve().parents[2] / "samples"
TOKEN = "chat-token-for-tests-123456"


@pytest.fixture
def indexed(settings, store, embedder, s3, bucket) -> list[str]:
    """The sample documents, indexed through the real indexer from moto S3."""
    ix = Indexer(s3, store, embedder, IndexerConfig(chunk_size=120, chunk_overlap=20))
    keys = []
    for n, path in enumerate(sorted(SAMPLES.iterdir())):
        put = s3.put_object(Bucket=bucket, Key=f"samples/{path.name}", Body=path.read_bytes())
        ev = ObjectEvent(
            action="upsert",
            bucket=bucket,
            key=f"samples/{path.name}",
            etag=put["ETag"].strip('"'),
            sequencer=f"00A{n:04X}",
        )
        action = ix.handle(ev).action
        if path.name.endswith(".metadata.json"):  # a sidecar: its document's chunks get its attributes
            assert action == "metadata"
            continue
        assert action == "indexed"
        keys.append(f"samples/{path.name}")
    store.refresh()
    return keys


@pytest.fixture
def deps(settings, client, embedder, store) -> ChatDeps:
    return ChatDeps(settings, client, embedder, store)


@pytest.fixture
def chat_settings() -> ChatSettings:
    return ChatSettings(chat_auth_mode="token", chat_api_token=TOKEN, max_body_bytes=64 * 1024)


@pytest.fixture
def server(deps, chat_settings):
    with AppServer(create_app(deps, chat_settings)) as srv:
        yield srv


@pytest.fixture
def http(server) -> Any:
    with httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=30) as c:
        yield c
