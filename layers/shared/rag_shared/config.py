"""Configuration: model catalogs shipped with the layer, and settings from the environment.

Both functions call :func:`load_settings` once at start-up, so a bad value fails the cold start
with a message naming the variable, instead of failing the first request in some odd way.
"""

from __future__ import annotations

import json
from enum import StrEnum
from functools import cache
from importlib import resources
from typing import Any, Literal, Self

from pydantic import BaseModel, Field, PositiveInt, SecretStr, ValidationError, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from rag_shared.errors import ConfigError


class GeneratorModel(BaseModel):
    """A chat model: its limits, default sampling parameters and list price."""

    name: str
    context_window: PositiveInt
    max_output_tokens: PositiveInt
    temperature: float = Field(0.7, ge=0, lt=2)
    top_p: float = Field(0.8, gt=0, le=1)
    max_tokens: PositiveInt = 2000
    price_input_per_1k: float = Field(ge=0)
    price_output_per_1k: float = Field(ge=0)
    # "always": a reasoning model that streams reasoning_content; "optional": Qwen3 with enable_thinking.
    thinking: Literal["never", "optional", "always"] = "never"


class EmbeddingModel(BaseModel):
    """An embedding model and the request limits DashScope enforces for it."""

    name: str
    default_dimensions: PositiveInt
    dimensions: list[PositiveInt]
    max_batch: PositiveInt
    max_tokens_per_text: PositiveInt
    price_per_1k: float = Field(ge=0)


class Catalog(BaseModel):
    generators: dict[str, GeneratorModel]
    default_generator: str
    embedders: dict[str, EmbeddingModel]
    default_embedder: str


def _read_catalog_file(name: str) -> dict[str, Any]:
    text = resources.files("rag_shared.catalog").joinpath(name).read_text(encoding="utf-8")
    data: dict[str, Any] = json.loads(text)
    return data


@cache
def load_catalog() -> Catalog:
    """The model catalog shipped in the layer (``rag_shared/catalog/*.json``)."""
    gen = _read_catalog_file("generators.json")
    emb = _read_catalog_file("embedders.json")
    return Catalog(
        generators={k: GeneratorModel(name=k, **v) for k, v in gen["models"].items()},
        default_generator=gen["default"],
        embedders={k: EmbeddingModel(name=k, **v) for k, v in emb["models"].items()},
        default_embedder=emb["default"],
    )


class Region(StrEnum):
    """DashScope deployments with an OpenAI-compatible endpoint. A key works only in its own region."""

    BEIJING = "cn-beijing"
    SINGAPORE = "ap-southeast-1"
    US_VIRGINIA = "us-east-1"
    HONG_KONG = "cn-hongkong"


REGION_BASE_URLS: dict[Region, str] = {
    Region.BEIJING: "https://dashscope.aliyuncs.com/compatible-mode/v1",
    Region.SINGAPORE: "https://dashscope-intl.aliyuncs.com/compatible-mode/v1",
    Region.US_VIRGINIA: "https://dashscope-us.aliyuncs.com/compatible-mode/v1",
    Region.HONG_KONG: "https://cn-hongkong.dashscope.aliyuncs.com/compatible-mode/v1",
}

# Friendly spellings users type, mapped to the canonical region.
REGION_ALIASES: dict[str, Region] = {
    "cn": Region.BEIJING,
    "china": Region.BEIJING,
    "beijing": Region.BEIJING,
    "intl": Region.SINGAPORE,
    "international": Region.SINGAPORE,
    "singapore": Region.SINGAPORE,
    "us": Region.US_VIRGINIA,
    "virginia": Region.US_VIRGINIA,
    "hk": Region.HONG_KONG,
    "hongkong": Region.HONG_KONG,
    "hong-kong": Region.HONG_KONG,
}


class OpenSearchAuth(StrEnum):
    NONE = "none"
    BASIC = "basic"  # user:password in OPENSEARCH_URL
    SIGV4 = "sigv4"  # IAM: AWSV4SignerAuth with OPENSEARCH_SERVICE (es or aoss)


class Settings(BaseSettings):
    """Every knob of the service. Field ``foo_bar`` is read from env var ``FOO_BAR``."""

    model_config = SettingsConfigDict(extra="ignore", frozen=True)

    # DashScope
    dashscope_region: str = "ap-southeast-1"
    dashscope_base_url: str | None = None
    dashscope_workspace_id: str | None = None
    dashscope_api_key: SecretStr | None = None
    dashscope_secret_arn: str | None = None
    secret_max_age_seconds: int = Field(300, ge=0)
    dashscope_timeout_seconds: float = Field(60.0, gt=0)
    dashscope_max_retries: int = Field(5, ge=0, le=20)
    # The account's quota for the embedding model (Model Studio rate-limits page: per account and
    # model, also enforced per second as RPM/60 and TPM/60). The indexer paces its calls under both;
    # unset, the limit is learned from 429s. QUOTA_SHARE: instances sharing it (the event source's
    # MaximumConcurrency), each starting at quota/share and adapting (rag_shared.pacing).
    dashscope_rpm: PositiveInt | None = None
    dashscope_tpm: PositiveInt | None = None
    dashscope_quota_share: int = Field(1, ge=1, le=1000)

    # Models
    chat_model: str | None = None
    embedding_model: str | None = None
    embedding_dimensions: PositiveInt | None = None
    embedding_batch_size: PositiveInt | None = None
    embedding_concurrency: int = Field(8, ge=1, le=64)

    # Vector store
    opensearch_url: str = "http://127.0.0.1:9200"
    opensearch_index: str = Field("rag-chunks", pattern=r"^[a-z0-9][a-z0-9_\-]*$")
    opensearch_auth: OpenSearchAuth = OpenSearchAuth.NONE
    opensearch_service: Literal["es", "aoss"] = "es"
    opensearch_engine: Literal["faiss", "lucene"] = "faiss"
    opensearch_timeout_seconds: float = Field(30.0, gt=0)
    aws_region: str = "us-east-1"

    # Indexing
    chunk_size_tokens: int = Field(400, ge=32, le=8192)
    chunk_overlap_tokens: int = Field(60, ge=0)
    max_file_bytes: PositiveInt = 50 * 1024 * 1024
    # OpenSearch Serverless only: the queue the indexer sends its delayed sweep messages to
    sweep_queue_url: str | None = None
    sweep_delay_seconds: int = Field(60, ge=0, le=900)  # SQS's DelaySeconds range
    # A file too big for one invocation stops this long before the function's timeout and is retried
    stop_before_timeout_seconds: float = Field(60, ge=0)
    # A failed record comes back after base × 4^(tries-1) seconds, at most max (SQS allows 12 h)
    retry_base_seconds: int = Field(30, ge=0, le=43200)
    retry_max_seconds: int = Field(900, ge=0, le=43200)

    # Retrieval
    rag_top_k: int = Field(5, ge=0, le=50)

    @model_validator(mode="after")
    def _check_consistency(self) -> Self:
        catalog = load_catalog()
        self.region  # noqa: B018 - validates DASHSCOPE_REGION
        if self.chat_model is not None and self.chat_model not in catalog.generators:
            raise ValueError(
                f"CHAT_MODEL={self.chat_model!r} is not in the catalog; known: {sorted(catalog.generators)}"
            )
        emb = self.embedder
        if self.embedding_dimensions is not None and self.embedding_dimensions not in emb.dimensions:
            raise ValueError(
                f"EMBEDDING_DIMENSIONS={self.embedding_dimensions} is not offered by {emb.name}; "
                f"choose one of {emb.dimensions}"
            )
        if self.chunk_overlap_tokens >= self.chunk_size_tokens:
            raise ValueError(
                f"CHUNK_OVERLAP_TOKENS ({self.chunk_overlap_tokens}) must be smaller than "
                f"CHUNK_SIZE_TOKENS ({self.chunk_size_tokens})"
            )
        if self.chunk_size_tokens > emb.max_tokens_per_text:
            raise ValueError(
                f"CHUNK_SIZE_TOKENS={self.chunk_size_tokens} exceeds {emb.name}'s limit of "
                f"{emb.max_tokens_per_text} tokens per text"
            )
        return self

    @property
    def region(self) -> Region:
        raw = self.dashscope_region.strip().lower()
        if raw in REGION_ALIASES:
            return REGION_ALIASES[raw]
        try:
            return Region(raw)
        except ValueError:
            known = sorted({r.value for r in Region} | set(REGION_ALIASES))
            raise ValueError(f"DASHSCOPE_REGION={self.dashscope_region!r} is unknown; use one of {known}") from None

    @property
    def base_url(self) -> str:
        return (self.dashscope_base_url or REGION_BASE_URLS[self.region]).rstrip("/")

    @property
    def generator(self) -> GeneratorModel:
        catalog = load_catalog()
        return catalog.generators[self.chat_model or catalog.default_generator]

    @property
    def embedder(self) -> EmbeddingModel:
        catalog = load_catalog()
        name = self.embedding_model or catalog.default_embedder
        if name not in catalog.embedders:
            raise ValueError(f"EMBEDDING_MODEL={name!r} is not in the catalog; known: {sorted(catalog.embedders)}")
        return catalog.embedders[name]

    @property
    def dimensions(self) -> int:
        return self.embedding_dimensions or self.embedder.default_dimensions


def load_settings(**overrides: Any) -> Settings:
    """Settings from the environment (overrides win), or a :class:`ConfigError` naming each bad field."""
    try:
        return Settings(**overrides)
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            field = ".".join(str(p) for p in err["loc"]).upper()
            msg = str(err["msg"]).removeprefix("Value error, ")
            problems.append(f"{field}: {msg}" if field else msg)
        raise ConfigError("invalid configuration: " + "; ".join(problems)) from None
