"""What the framework peers need from the OpenSearch stand-in that it does not serve."""

from __future__ import annotations

from typing import Any


def sync_client(url: str) -> Any:
    """opensearch-py's client, with ``indices.get`` answered from ``indices.exists``: LlamaIndex's
    and LangChain's OpenSearch stores call ``GET /<index>`` to see whether to create the index (once
    or twice per file), and the OpenSearch stand-in does not serve that API (it answers HEAD)."""
    from opensearchpy import NotFoundError, OpenSearch

    client = OpenSearch(hosts=[url], timeout=60)

    def get(index: str, **_: Any) -> dict[str, Any]:
        if not client.indices.exists(index=index):
            raise NotFoundError(404, "index_not_found_exception", {"error": f"no such index [{index}]"})
        return {index: {}}

    client.indices.get = get
    return client


def async_client(url: str) -> Any:
    """The same for the async client the vector store writes with under ``use_async=True``."""
    from opensearchpy import AsyncOpenSearch, NotFoundError

    client = AsyncOpenSearch(hosts=[url], timeout=60)

    async def get(index: str, **_: Any) -> dict[str, Any]:
        if not await client.indices.exists(index=index):
            raise NotFoundError(404, "index_not_found_exception", {"error": f"no such index [{index}]"})
        return {index: {}}

    client.indices.get = get
    return client
