"""The OpenSearch k-NN vector store: chunk documents, their cleanup, and search.

``<index>`` holds one document per chunk (text, metadata, vector), tagged with the *version* token
of the attempt that wrote it. Which version of a key readers may see is not recorded here but in
the commit table (:mod:`rag_shared.commits`): search keeps only committed chunks, so a partly
written, superseded or failed version is never served. One class per store kind:
:class:`VectorStore` for a managed domain (own ids, refresh, delete-by-query) and
:class:`ServerlessStore` for an OpenSearch Serverless collection (none of those).
"""

from importlib import import_module
from typing import TYPE_CHECKING, Any

from rag_shared.store.documents import (
    METADATA_FIELD,
    SPACE,
    VECTOR_FIELD,
    ChunkDoc,
    MetadataFilter,
    SearchFilter,
    SearchHit,
    SearchType,
)
from rag_shared.store.fusion import RRF_K, rrf
from rag_shared.store.mapping import (
    FAISS_COSINE_SINCE,
    GUARD,
    MIN_VERSION,
    SERVERLESS_ENGINE,
    TEMPLATE_PRIORITY,
    choose_engine,
    index_body,
    index_template,
    parse_version,
)
from rag_shared.store.queries import SearchResult

if TYPE_CHECKING:
    from rag_shared.store.client import FastJSONSerializer, make_client, pool_size
    from rag_shared.store.stores import BULK_BYTES, BULK_DOCS, ServerlessStore, VectorStore

# opensearch-py costs ~0.1-0.3 s of a cold start (its package imports requests, urllib3, dateutil and
# every client namespace), and only talking to OpenSearch needs it: its modules load on first access
# (PEP 562), so the chat's models and the indexer's handler import this package without it.
_LAZY = {
    "FastJSONSerializer": "client",
    "make_client": "client",
    "pool_size": "client",
    "BULK_BYTES": "stores",
    "BULK_DOCS": "stores",
    "ServerlessStore": "stores",
    "VectorStore": "stores",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value


__all__ = [
    "BULK_BYTES",
    "BULK_DOCS",
    "FAISS_COSINE_SINCE",
    "GUARD",
    "METADATA_FIELD",
    "MIN_VERSION",
    "RRF_K",
    "SERVERLESS_ENGINE",
    "SPACE",
    "TEMPLATE_PRIORITY",
    "VECTOR_FIELD",
    "ChunkDoc",
    "FastJSONSerializer",
    "MetadataFilter",
    "SearchFilter",
    "SearchHit",
    "SearchResult",
    "SearchType",
    "ServerlessStore",
    "VectorStore",
    "choose_engine",
    "index_body",
    "index_template",
    "make_client",
    "parse_version",
    "pool_size",
    "rrf",
]
