"""What the chunk index holds and returns: chunk documents, search hits, and search filters."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field

VECTOR_FIELD = "embedding"
SPACE = "cosinesimil"


class ChunkDoc(BaseModel):
    """One chunk as stored. ``id``: the key's hash, the version token and the chunk number (never the
    raw key: S3 keys reach 1,024 bytes, OpenSearch ids 512). ``version``: the writing attempt's token."""

    id: str
    source_key: str
    version: str
    chunk_number: int
    text: str
    start: int
    end: int
    heading: str | None = None
    content_hash: str
    embedding_model: str
    source_seq: str
    etag: str | None = None
    version_id: str | None = None
    # Filterable attributes (the indexer's sidecar and S3 user metadata), stored as the object field
    # ``metadata``; numbers stay numbers so ``range`` filters work.
    metadata: dict[str, str | int | float | bool | list[str]] = Field(default_factory=dict)
    vector: list[float] = Field(repr=False)

    def body(self) -> dict[str, Any]:
        data = self.model_dump(exclude={"id", "vector", "metadata"})
        data[VECTOR_FIELD] = self.vector
        # After the vector, and only when there is some: a write to a chunk index re-created by the
        # template's strict guard must be refused naming the vector field (mapping.index_lost).
        if self.metadata:
            data["metadata"] = self.metadata
        return data


class SearchHit(BaseModel):
    id: str
    score: float
    source_key: str
    chunk_number: int
    text: str
    heading: str | None = None
    start: int = 0
    end: int = 0
    version: str | None = None


class SearchFilter(BaseModel):
    """Restricts retrieval: to keys under a prefix, or to an explicit list of keys."""

    key_prefix: str | None = None
    keys: list[str] | None = None

    def clauses(self) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        if self.key_prefix:
            out.append({"prefix": {"source_key": self.key_prefix}})
        if self.keys:
            out.append({"terms": {"source_key": self.keys}})
        return out
