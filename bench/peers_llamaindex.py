"""The LlamaIndex peer (optional: ``pip install -e '.[bench]'``): the same chunks embedded by
``OpenAIEmbedding`` against the DashScope stand-in's OpenAI-compatible base URL and written by
``OpensearchVectorStore``, as LlamaIndex documents them:

- the OpenSearch vector store guide (https://docs.llamaindex.ai/en/stable/examples/vector_stores/OpensearchDemo/):
  ``OpensearchVectorClient(endpoint, index, dim, embedding_field=..., text_field=...)``,
  ``OpensearchVectorStore(client)``, ``StorageContext.from_defaults(vector_store=...)``, then
  ``VectorStoreIndex(...)``;
- OpenAI-compatible embeddings (https://docs.llamaindex.ai/en/stable/examples/embeddings/OpenAI/):
  ``OpenAIEmbedding(model_name=..., api_base=..., api_key=..., embed_batch_size=...)``; ``num_workers``
  and ``use_async=True`` run the batches concurrently (BaseEmbedding.aget_text_embedding_batch).

Given our chunks as ``TextNode`` s (no LlamaIndex splitter: the same chunks for every contender),
25 texts per call (text-embedding-v2's limit), 8 calls in flight like the others, the SDK's own
retries on 429 (``max_retries=10`` by default). The vector store's async OpenSearch client runs in
the event loops LlamaIndex starts and stops itself, so it cannot be closed afterwards: aiohttp's
"Unclosed client session" warnings at exit come from there. ``engine="faiss"``: the default nmslib cannot create
an index on OpenSearch 3.x, which the stand-in models.
"""

from __future__ import annotations

import importlib.util
from typing import Any

from bench.peers import BATCH, chunks_of
from bench.peers_standin import async_client, sync_client

NAME = "LlamaIndex peer (VectorStoreIndex, use_async, 8 workers)"
MODULES = ("llama_index.core", "llama_index.vector_stores.opensearch", "llama_index.embeddings.openai")


def missing() -> str | None:
    """Why this peer cannot run here, or None."""
    absent = [m for m in MODULES if importlib.util.find_spec(m.split(".")[0]) is None or _spec(m) is None]
    return f"not installed ({', '.join(absent)}): pip install -e '.[bench]'" if absent else None


def _spec(module: str) -> Any:
    try:
        return importlib.util.find_spec(module)
    except ModuleNotFoundError:
        return None


def index_file(
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
    from llama_index.core import StorageContext, VectorStoreIndex
    from llama_index.core.schema import TextNode
    from llama_index.embeddings.openai import OpenAIEmbedding
    from llama_index.vector_stores.opensearch import OpensearchVectorClient, OpensearchVectorStore

    texts = chunks_of(s3, bucket, key)
    nodes = [TextNode(text=t, id_=f"{key}-{i}", metadata={"source_key": key}) for i, t in enumerate(texts)]
    embed_model = OpenAIEmbedding(
        model_name=model,
        api_base=base_url,
        api_key=api_key,
        embed_batch_size=BATCH,
        num_workers=concurrency,
        # the openai SDK asks for base64 unless told; DashScope answers "encoding_format only supports float"
        additional_kwargs={"encoding_format": "float"},
    )
    client = OpensearchVectorClient(
        opensearch_url,
        index,
        dimensions,
        embedding_field="vector",
        text_field="text",
        engine="faiss",
        os_client=sync_client(opensearch_url),
        os_async_client=async_client(opensearch_url),
        timeout=60,
    )
    storage = StorageContext.from_defaults(vector_store=OpensearchVectorStore(client))
    VectorStoreIndex(nodes, storage_context=storage, embed_model=embed_model, use_async=True)
    return len(nodes)
