"""One indexer instance in its own process, as a Lambda instance is: ``python -m bench.instance CONTENDER``.

Lambda instances sharing one DashScope quota are separate processes that cannot see each other, so
a benchmark that runs them as threads of one process could be helped by what they share (the GIL's
pacing, one connection pool). Here each instance builds its contender from the environment (the
project: ``indexer.handler.build_indexer``, the function's own wiring), prints ``ready``, waits for
``go`` on stdin, indexes the one file named on its command line and prints a JSON line with the
chunks written (or the error). The parent (bench.indexing) starts all instances, waits until every
one is ready, then says go to all at once and times from there to the last answer.
"""

from __future__ import annotations

import json
import os
import sys
import traceback
from collections.abc import Callable
from typing import Any

import boto3
from indexer.events import ObjectEvent
from rag_shared.chunking import chunk_text
from rag_shared.config import load_settings

from bench.peers import plain_asyncio, seed_design

CONTENDERS = ("project", "peer", "seed")


def build(contender: str, event: ObjectEvent, index: str, concurrency: int) -> Callable[[], int]:
    """The contender, built before the clock starts (a warm instance), as a call that indexes ``event``."""
    s3: Any = boto3.client("s3")
    chunk_text("warm", size=200, overlap=30)  # the tokenizer's vocabulary loads once per instance (~1 s)
    if contender == "project":
        from indexer.handler import build_indexer

        indexer = build_indexer(load_settings(opensearch_index=index), s3=s3)
        return lambda: indexer.handle(event).chunks
    if contender == "peer":
        model = load_settings().embedder
        return lambda: plain_asyncio(
            s3,
            event.bucket,
            event.key,
            base_url=os.environ["DASHSCOPE_BASE_URL"],
            api_key=os.environ["DASHSCOPE_API_KEY"],
            model=model.name,
            dimensions=model.default_dimensions,
            opensearch_url=os.environ["OPENSEARCH_URL"],
            index=index,
            concurrency=concurrency,
        )
    if contender == "seed":
        from indexer.pipeline import Indexer, IndexerConfig
        from rag_shared.dashscope import DashScopeClient
        from rag_shared.embeddings import Embedder
        from rag_shared.secrets import ApiKeyProvider
        from rag_shared.store import VectorStore

        settings = load_settings(opensearch_index=index)
        client = DashScopeClient(settings, ApiKeyProvider.from_settings(settings))
        embedder = Embedder(client, settings.embedder, settings.dimensions, concurrency=1)
        seed = Indexer(
            s3, VectorStore.from_settings(settings), embedder, IndexerConfig(chunk_size=200, chunk_overlap=30)
        )
        return lambda: seed_design(seed, s3, event.bucket, event.key)
    raise SystemExit(f"unknown contender {contender!r}; one of {CONTENDERS}")


def main() -> None:
    contender, bucket, key, etag, index, concurrency = sys.argv[1:7]
    event = ObjectEvent(action="upsert", bucket=bucket, key=key, etag=etag, sequencer="0A")
    run = build(contender, event, index, int(concurrency))
    print("ready", flush=True)
    if sys.stdin.readline().strip() != "go":
        return
    try:
        print(json.dumps({"chunks": run()}), flush=True)
    except Exception as exc:  # reported to the parent: a contender that fails does not count
        traceback.print_exc()
        print(json.dumps({"chunks": 0, "error": f"{type(exc).__name__}: {str(exc)[:80]}"}), flush=True)


if __name__ == "__main__":
    main()
