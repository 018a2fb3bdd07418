"""What the chunk index holds and returns: chunk documents, search hits, and search filters."""

from __future__ import annotations

from typing import Any, Literal, Self

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictFloat, StrictInt, StrictStr, model_validator

VECTOR_FIELD = "embedding"
SPACE = "cosinesimil"
# The object field holding a chunk's filterable metadata (Bedrock-style sidecars, S3 user metadata)
METADATA_FIELD = "metadata"

SearchType = Literal["semantic", "hybrid", "keyword"]
SEARCH_TYPES: tuple[SearchType, ...] = ("semantic", "hybrid", "keyword")


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
    metadata: dict[str, Any] | None = None
    # Hybrid search: each leg's own score (``score`` is then the fused RRF score). ``semantic_score``
    # is the k-NN cosine score, OpenSearch's (2 - d) / 2 in [0, 1]; ``keyword_score`` is BM25.
    semantic_score: float | None = None
    keyword_score: float | None = None


# Bounds on a metadata filter, so one request cannot send OpenSearch an unbounded bool tree:
# OpenSearch refuses a query of more than indices.query.bool.max_clause_count (1,024) clauses
# (documentation-website _install-and-configure/configuring-opensearch/index-settings.md).
MAX_FILTER_DEPTH = 5
MAX_FILTER_LEAVES = 50
MAX_IN_VALUES = 100
KEY_PATTERN = r"^[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)*$"

Scalar = StrictStr | StrictBool | StrictInt | StrictFloat
Bound = StrictStr | StrictInt | StrictFloat


class _Leaf(BaseModel):
    model_config = ConfigDict(extra="forbid")

    key: str = Field(min_length=1, max_length=100, pattern=KEY_PATTERN)

    def path(self) -> str:
        return f"{METADATA_FIELD}.{self.key}"


class Equals(_Leaf):
    value: Scalar


class In(_Leaf):
    values: list[StrictStr | StrictInt | StrictFloat] = Field(min_length=1, max_length=MAX_IN_VALUES)


class Range(_Leaf):
    gt: Bound | None = None
    gte: Bound | None = None
    lt: Bound | None = None
    lte: Bound | None = None

    @model_validator(mode="after")
    def _bounded(self) -> Self:
        bounds = [b for b in (self.gt, self.gte, self.lt, self.lte) if b is not None]
        if not bounds:
            raise ValueError("a range needs at least one of gt, gte, lt, lte")
        if len({isinstance(b, str) for b in bounds}) > 1:
            raise ValueError("range bounds must be all numbers or all strings (e.g. ISO dates)")
        if (self.gt is not None and self.gte is not None) or (self.lt is not None and self.lte is not None):
            raise ValueError("give at most one lower bound (gt or gte) and one upper bound (lt or lte)")
        return self


class MetadataFilter(BaseModel):
    """One node of a metadata filter: exactly one of ``equals``, ``in``, ``range``, ``and``, ``or``.

    ``{"and": [{"equals": {"key": "dept", "value": "hr"}}, {"range": {"key": "year", "gte": 2023}}]}``.
    Keys name fields under the chunk's ``metadata`` object; a list-valued field matches ``equals``/``in``
    when any element does (OpenSearch term semantics on arrays)."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    equals: Equals | None = None
    in_: In | None = Field(None, alias="in")
    range: Range | None = None
    and_: list[MetadataFilter] | None = Field(None, alias="and", min_length=1, max_length=MAX_FILTER_LEAVES)
    or_: list[MetadataFilter] | None = Field(None, alias="or", min_length=1, max_length=MAX_FILTER_LEAVES)

    @model_validator(mode="after")
    def _one_operator(self) -> Self:
        given = [n for n in ("equals", "in_", "range", "and_", "or_") if getattr(self, n) is not None]
        if len(given) != 1:
            raise ValueError("a metadata filter node needs exactly one of equals, in, range, and, or")
        if self.depth() > MAX_FILTER_DEPTH:
            raise ValueError(f"a metadata filter may nest at most {MAX_FILTER_DEPTH} levels")
        if self.leaves() > MAX_FILTER_LEAVES:
            raise ValueError(f"a metadata filter may hold at most {MAX_FILTER_LEAVES} conditions")
        return self

    def children(self) -> list[MetadataFilter]:
        return self.and_ or self.or_ or []

    def depth(self) -> int:
        return 1 + max((c.depth() for c in self.children()), default=0)

    def leaves(self) -> int:
        kids = self.children()
        return sum(c.leaves() for c in kids) if kids else 1

    def clause(self) -> dict[str, Any]:
        """The OpenSearch query clause (filter context) this node compiles to."""
        if self.equals is not None:
            return {"term": {self.equals.path(): self.equals.value}}
        if self.in_ is not None:
            return {"terms": {self.in_.path(): self.in_.values}}
        if self.range is not None:
            r = self.range
            bounds = {op: v for op, v in (("gt", r.gt), ("gte", r.gte), ("lt", r.lt), ("lte", r.lte)) if v is not None}
            return {"range": {r.path(): bounds}}
        if self.and_ is not None:
            return {"bool": {"filter": [c.clause() for c in self.and_]}}
        assert self.or_ is not None
        return {"bool": {"should": [c.clause() for c in self.or_], "minimum_should_match": 1}}


class SearchFilter(BaseModel):
    """Restricts retrieval: to keys under a prefix, to an explicit list of keys, and by metadata."""

    model_config = ConfigDict(extra="forbid")

    key_prefix: str | None = None
    keys: list[str] | None = None
    metadata: MetadataFilter | None = None

    def clauses(self) -> list[dict[str, Any]]:
        """Filter-context clauses, used both in the k-NN query's ``filter`` and the BM25 query's bool."""
        out: list[dict[str, Any]] = []
        if self.key_prefix:
            out.append({"prefix": {"source_key": self.key_prefix}})
        if self.keys:
            out.append({"terms": {"source_key": self.keys}})
        if self.metadata is not None:
            out.append(self.metadata.clause())
        return out
