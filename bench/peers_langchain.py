"""The LangChain peer (optional: ``pip install -e '.[bench]'``): the same chunks embedded by
``OpenAIEmbeddings`` against the DashScope stand-in's OpenAI-compatible base URL and written by
``OpenSearchVectorSearch.from_texts``, as LangChain documents them:

- OpenSearch (https://python.langchain.com/docs/integrations/vectorstores/opensearch/):
  ``OpenSearchVectorSearch(opensearch_url, index_name, embeddings).add_texts(texts, ...)`` (what
  ``from_texts`` does, with the client swapped as bench.peers_standin explains); ``bulk_size``
  (default 500, an error above it) set to the file's chunk count;
- OpenAI-compatible APIs (langchain_openai.OpenAIEmbeddings' docstring, "OpenAI-compatible APIs"):
  ``check_embedding_ctx_length=False`` sends raw text (DashScope takes no token ids), ``chunk_size``
  = 25 texts per call (text-embedding-v2's limit; the default 1000 is refused).

``OpenAIEmbeddings.embed_documents`` sends its batches one after another, so this peer has one call
in flight whatever the others have: that is the library's behaviour, not a setting left out.
``engine="faiss"``: the default nmslib cannot create an index on OpenSearch 3.x (the stand-in's).
"""

from __future__ import annotations

import importlib.util
from typing import Any

from bench.peers import BATCH, chunks_of
from bench.peers_standin import sync_client

NAME = "LangChain peer (OpenAIEmbeddings + OpenSearchVectorSearch)"
MODULES = ("langchain_openai", "langchain_community")


def missing() -> str | None:
    """Why this peer cannot run here, or None."""
    absent = [m for m in MODULES if importlib.util.find_spec(m) is None]
    return f"not installed ({', '.join(absent)}): pip install -e '.[bench]'" if absent else None


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
    from langchain_community.vectorstores import OpenSearchVectorSearch
    from langchain_openai import OpenAIEmbeddings

    texts = chunks_of(s3, bucket, key)
    embeddings = OpenAIEmbeddings(
        model=model,
        base_url=base_url,
        api_key=api_key,  # type: ignore[call-arg]  # pydantic alias of openai_api_key, as documented
        check_embedding_ctx_length=False,
        chunk_size=BATCH,
        # the docstring's advice for compatible APIs; DashScope refuses the SDK's default base64
        model_kwargs={"encoding_format": "float"},
    )
    store = OpenSearchVectorSearch(opensearch_url, index, embeddings, timeout=60)
    store.client = sync_client(opensearch_url)  # see bench.peers_standin
    store.add_texts(
        texts,
        metadatas=[{"source_key": key}] * len(texts),
        ids=[f"{key}-{i}" for i in range(len(texts))],
        engine="faiss",
        vector_field="vector",
        bulk_size=len(texts),
    )
    return len(texts)
