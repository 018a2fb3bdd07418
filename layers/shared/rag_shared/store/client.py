"""The opensearch-py client: SigV4 in AWS, basic auth or none locally, orjson for vector-heavy bodies."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit, urlunsplit

import orjson
from opensearchpy import OpenSearch
from opensearchpy.exceptions import SerializationError
from opensearchpy.serializer import JSONSerializer

from rag_shared.config import OpenSearchAuth, Settings
from rag_shared.errors import StoreError


class FastJSONSerializer(JSONSerializer):
    """opensearch-py's serializer on orjson: a bulk body of 500 chunks holds 768,000 floats, and
    the standard library spent more CPU formatting them than the rest of the indexer together."""

    def dumps(self, data: Any) -> str:
        if isinstance(data, str):
            return data
        try:
            return orjson.dumps(data, default=self.default, option=orjson.OPT_NON_STR_KEYS).decode()
        except (TypeError, orjson.JSONEncodeError) as exc:
            raise SerializationError(data, exc) from None

    def loads(self, s: str | bytes) -> Any:
        try:
            return orjson.loads(s)
        except orjson.JSONDecodeError as exc:
            raise SerializationError(s, exc) from None


def pool_size(settings: Settings) -> int:
    """Connections the store may use at once: the embedder's threads look up the cache, two window
    threads and the bulk writer run beside the handler's thread (functions/indexer pipeline)."""
    return settings.embedding_concurrency + 4


def make_client(settings: Settings, *, credentials: Any = None, pool_maxsize: int | None = None) -> OpenSearch:
    """An opensearch-py client for ``OPENSEARCH_URL``: SigV4 in AWS, basic auth or none locally.

    ``pool_maxsize`` (default :func:`pool_size`) sizes urllib3's connection pool: its default holds one
    connection, so threads writing at once each opened another and urllib3 warned "Connection pool is
    full, discarding connection" for every one it then dropped."""
    parts = urlsplit(settings.opensearch_url)
    if not parts.scheme or not parts.hostname:
        raise StoreError(f"OPENSEARCH_URL must be a URL like https://host:443, got {settings.opensearch_url!r}")
    port = parts.port or (443 if parts.scheme == "https" else 9200)
    clean_url = urlunsplit((parts.scheme, f"{parts.hostname}:{port}", parts.path, "", ""))
    kwargs: dict[str, Any] = {
        "hosts": [clean_url],
        "use_ssl": parts.scheme == "https",
        "verify_certs": parts.scheme == "https",
        "timeout": settings.opensearch_timeout_seconds,
        "max_retries": 0,  # VectorStore retries with backoff instead of immediately
        # No request gzip: opensearch-py compresses at level 9, ~1 s of Lambda CPU per 8 MiB bulk body
        # of vectors (which only shrink to ~40%), to save well under 0.1 s of in-region transfer.
        "http_compress": False,
        "serializer": FastJSONSerializer(),
        "pool_maxsize": pool_maxsize or pool_size(settings),
    }
    if settings.opensearch_auth is OpenSearchAuth.SIGV4:
        from opensearchpy import AWSV4SignerAuth, RequestsHttpConnection

        if credentials is None:
            import boto3

            credentials = boto3.Session().get_credentials()
        kwargs["http_auth"] = AWSV4SignerAuth(credentials, settings.aws_region, settings.opensearch_service)
        kwargs["connection_class"] = RequestsHttpConnection
    elif settings.opensearch_auth is OpenSearchAuth.BASIC or parts.username:
        kwargs["http_auth"] = (parts.username or "", parts.password or "")
    return OpenSearch(**kwargs)
