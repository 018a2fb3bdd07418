"""What the indexer is compared with, on the same chunks and the same stand-ins:

- ``plain_asyncio``: what a user would write without this project: ``AsyncOpenAI`` with the same
  number of calls in flight (the SDK's own retries on 429), then ``opensearchpy.helpers.bulk``.
- ``seed_design``: the seed's loop: one 25-text call after another, then one bulk write.
"""

from __future__ import annotations

import asyncio
from typing import Any

from opensearchpy import OpenSearch, helpers
from rag_shared.chunking import chunk_text
from rag_shared.store import ChunkDoc

BATCH = 25


def chunks_of(s3: Any, bucket: str, key: str) -> list[str]:
    """The object's chunks, cut exactly as the indexer cuts them (200 tokens, 30 overlap)."""
    text = s3.get_object(Bucket=bucket, Key=key)["Body"].read().decode()
    return [c.text for c in chunk_text(text, size=200, overlap=30)]


async def _plain(texts: list[str], base_url: str, api_key: str, model: str, concurrency: int) -> list[list[float]]:
    from openai import AsyncOpenAI

    client = AsyncOpenAI(base_url=base_url, api_key=api_key, max_retries=8)
    gate = asyncio.Semaphore(concurrency)

    async def one(batch: list[str]) -> list[list[float]]:
        async with gate:
            r = await client.embeddings.create(model=model, input=batch, encoding_format="float")
            return [d.embedding for d in r.data]

    try:
        parts = await asyncio.gather(*(one(texts[i : i + BATCH]) for i in range(0, len(texts), BATCH)))
    finally:
        await client.close()
    return [v for part in parts for v in part]


def plain_asyncio(
    s3: Any,
    bucket: str,
    key: str,
    *,
    base_url: str,
    api_key: str,
    model: str,
    dimensions: int,
    opensearch_url: str,
    index: str,
    concurrency: int,
) -> int:
    texts = chunks_of(s3, bucket, key)
    vectors = asyncio.run(_plain(texts, base_url, api_key, model, concurrency))
    return bulk_into(opensearch_url, index, dimensions, [(key, texts, vectors)])


def bulk_into(
    opensearch_url: str, index: str, dimensions: int, files: list[tuple[str, list[str], list[list[float]]]]
) -> int:
    """What a plain script does with its vectors: create the k-NN index unless it exists (another
    thread of the same run may have), then ``helpers.bulk``; the documents written."""
    search = OpenSearch(hosts=[opensearch_url], timeout=60)
    if not search.indices.exists(index=index):
        body = {
            "settings": {"index": {"knn": True}},
            "mappings": {
                "properties": {
                    "vector": {"type": "knn_vector", "dimension": dimensions},
                    "text": {"type": "text"},
                    "source_key": {"type": "keyword"},
                }
            },
        }
        try:
            search.indices.create(index=index, body=body)
        except Exception:  # noqa: S110 - another peer thread created it first
            pass
    actions = (
        {"_index": index, "_id": f"{key}-{i}", "_source": {"text": t, "vector": v, "source_key": key}}
        for key, texts, vectors in files
        for i, (t, v) in enumerate(zip(texts, vectors, strict=True))
    )
    ok, _ = helpers.bulk(search, actions, chunk_size=200, max_chunk_bytes=8 * 1024 * 1024)
    return int(ok)


def seed_design(indexer: Any, s3: Any, bucket: str, key: str) -> int:
    """The seed's loop, with this project's chunker, client and store: one 25-text call after
    another, then one bulk write."""
    texts = chunks_of(s3, bucket, key)
    embedder, store = indexer.embedder, indexer.store
    store.ensure_index()
    vectors: list[list[float]] = []
    for i in range(0, len(texts), BATCH):
        batch = embedder.backend.embed_batch(texts[i : i + BATCH], embedder.model, embedder.dimensions)
        vectors.extend(batch.vectors)
    docs = [
        ChunkDoc(
            id=f"seed-{key}-{n}",
            source_key=key,
            version="seed",
            chunk_number=n,
            text=t,
            start=0,
            end=len(t),
            content_hash=embedder.hash(t),
            embedding_model=embedder.model.name,
            source_seq="0A",
            vector=v,
        )
        for n, (t, v) in enumerate(zip(texts, vectors, strict=True))
    ]
    store.write_chunks(docs)
    return len(docs)


async def _plain_files(
    s3: Any, bucket: str, keys: list[str], base_url: str, api_key: str, model: str, concurrency: int
) -> list[tuple[str, list[str], list[list[float]]]]:
    """Every file at once (S3 reads on threads), each file's chunks in its own calls, ``concurrency``
    calls in flight in all: what a user writes for many small files with asyncio."""
    from openai import AsyncOpenAI

    client = AsyncOpenAI(base_url=base_url, api_key=api_key, max_retries=8)
    gate = asyncio.Semaphore(concurrency)

    async def one(key: str) -> tuple[str, list[str], list[list[float]]]:
        texts = await asyncio.to_thread(chunks_of, s3, bucket, key)
        vectors: list[list[float]] = []
        for i in range(0, len(texts), BATCH):
            async with gate:
                r = await client.embeddings.create(model=model, input=texts[i : i + BATCH], encoding_format="float")
            vectors += [d.embedding for d in r.data]
        return key, texts, vectors

    try:
        return list(await asyncio.gather(*(one(k) for k in keys)))
    finally:
        await client.close()


def plain_asyncio_files(
    s3: Any,
    bucket: str,
    keys: list[str],
    *,
    base_url: str,
    api_key: str,
    model: str,
    dimensions: int,
    opensearch_url: str,
    index: str,
    concurrency: int,
) -> int:
    """The plain peer for many small files: all files embedded concurrently, then one bulk write."""
    files = asyncio.run(_plain_files(s3, bucket, keys, base_url, api_key, model, concurrency))
    return bulk_into(opensearch_url, index, dimensions, files)


def plain_asyncio_files_batched(
    s3: Any,
    bucket: str,
    keys: list[str],
    *,
    base_url: str,
    api_key: str,
    model: str,
    dimensions: int,
    opensearch_url: str,
    index: str,
    concurrency: int,
) -> int:
    """The plain peer for many small files written by a user who knows the per-call cap: every file
    read and chunked first, then all their chunks embedded 25 per call across files (the fewest calls
    there can be), ``concurrency`` calls in flight, then one bulk write."""

    async def run() -> list[tuple[str, list[str], list[list[float]]]]:
        texts = await asyncio.gather(*(asyncio.to_thread(chunks_of, s3, bucket, k) for k in keys))
        flat = [t for ts in texts for t in ts]
        vectors = iter(await _plain(flat, base_url, api_key, model, concurrency))
        return [(k, ts, [next(vectors) for _ in ts]) for k, ts in zip(keys, texts, strict=True)]

    return bulk_into(opensearch_url, index, dimensions, asyncio.run(run()))
