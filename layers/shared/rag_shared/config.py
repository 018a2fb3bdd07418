"""Configuration: model catalogs shipped with the layer, and settings from the environment.

Both functions call :func:`load_settings` once at start-up, so a bad value fails the cold start
with a message naming the variable, instead of failing the first request in some odd way.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from enum import StrEnum
from functools import cache
from importlib import resources
from typing import Any, Literal, Self

from pydantic import (
    AliasChoices,
    BaseModel,
    ConfigDict,
    Field,
    PositiveInt,
    SecretStr,
    ValidationError,
    model_validator,
)

from rag_shared.errors import ConfigError


class PriceTier(BaseModel):
    """List price (USD per 1K tokens) for prompts up to ``max_input_tokens`` (``None``: any size)."""

    max_input_tokens: PositiveInt | None = None
    input: float = Field(ge=0)
    output: float = Field(ge=0)


class GeneratorModel(BaseModel):
    """A chat model as offered in one region: its limits, default sampling parameters and list price."""

    name: str
    context_window: PositiveInt
    max_input_tokens: PositiveInt | None = None
    max_output_tokens: PositiveInt
    temperature: float = Field(0.7, ge=0, lt=2)
    top_p: float = Field(0.8, gt=0, le=1)
    max_tokens: PositiveInt = 2000
    # the first (cheapest) tier; models priced by prompt size list more tiers in price_tiers
    price_input_per_1k: float = Field(ge=0)
    price_output_per_1k: float = Field(ge=0)
    price_tiers: list[PriceTier] = Field(default_factory=list)
    # "always": a reasoning model that streams reasoning_content; "optional": Qwen3 with enable_thinking.
    thinking: Literal["never", "optional", "always"] = "never"
    region: str | None = None
    source: str = ""

    def prices_for(self, prompt_tokens: int) -> tuple[float, float]:
        """(input, output) USD per 1K tokens for a prompt of this size: tiered models cost more per token
        for longer prompts (e.g. qwen3-max above 32K)."""
        for tier in self.price_tiers:
            if tier.max_input_tokens is None or prompt_tokens <= tier.max_input_tokens:
                return tier.input, tier.output
        return self.price_input_per_1k, self.price_output_per_1k


class EmbeddingModel(BaseModel):
    """An embedding model as offered in one region and the request limits DashScope enforces for it."""

    name: str
    default_dimensions: PositiveInt
    dimensions: list[PositiveInt]
    max_batch: PositiveInt
    max_tokens_per_text: PositiveInt
    price_per_1k: float = Field(ge=0)
    region: str | None = None
    source: str = ""


class RerankModel(BaseModel):
    """A text rerank model as offered in one region and the limits DashScope enforces for it."""

    name: str
    max_documents: PositiveInt
    max_tokens_per_item: PositiveInt  # longer items are truncated by the service (we cut them first)
    max_tokens_per_request: PositiveInt  # query tokens x documents + all document tokens
    price_per_1k: float = Field(ge=0)
    region: str | None = None
    source: str = ""


class Catalog(BaseModel):
    """The models one region offers (``region``), resolved from the shipped per-region catalog."""

    generators: dict[str, GeneratorModel]
    default_generator: str
    embedders: dict[str, EmbeddingModel]
    default_embedder: str | None
    region: str
    rerankers: dict[str, RerankModel] = Field(default_factory=dict)
    default_reranker: str | None = None


# --- the shipped catalog (all regions) ------------------------------------------------------------


class _GeneratorOffer(BaseModel):
    prices: list[PriceTier] = Field(min_length=1)
    source: str = ""


class Retirement(BaseModel):
    """Model Studio discontinued the model: no region serves it any more."""

    on: str
    use: str
    source: str = Field(min_length=1)


class _GeneratorSpec(BaseModel):
    retired: Retirement | None = None
    context_window: PositiveInt
    max_input_tokens: PositiveInt
    max_output_tokens: PositiveInt
    thinking: Literal["never", "optional", "always"] = "never"
    temperature: float = Field(0.7, ge=0, lt=2)
    top_p: float = Field(0.8, gt=0, le=1)
    max_tokens: PositiveInt = 2000
    source: str = Field(min_length=1)
    regions: dict[str, _GeneratorOffer] = Field(min_length=1)


class _EmbedderOffer(BaseModel):
    dimensions: list[PositiveInt] = Field(min_length=1)
    price_per_1k: float = Field(ge=0)
    source: str = ""


class _EmbedderSpec(BaseModel):
    default_dimensions: PositiveInt
    max_batch: PositiveInt
    max_tokens_per_text: PositiveInt
    source: str = Field(min_length=1)
    regions: dict[str, _EmbedderOffer] = Field(min_length=1)


class _RerankerOffer(BaseModel):
    max_tokens_per_request: PositiveInt
    price_per_1k: float = Field(ge=0)
    source: str = ""


class _RerankerSpec(BaseModel):
    max_documents: PositiveInt
    max_tokens_per_item: PositiveInt
    source: str = Field(min_length=1)
    regions: dict[str, _RerankerOffer] = Field(min_length=1)


class CatalogSpec(BaseModel):
    """Every model the catalog knows, with the regions that offer it (``catalog/*.json``)."""

    generators: dict[str, _GeneratorSpec]
    default_generator: str
    embedders: dict[str, _EmbedderSpec]
    default_embedders: dict[str, str]
    rerankers: dict[str, _RerankerSpec] = Field(default_factory=dict)
    default_rerankers: dict[str, str] = Field(default_factory=dict)

    def reranker_regions(self, name: str) -> list[str]:
        spec = self.rerankers.get(name)
        return sorted(spec.regions) if spec else []

    def generator_regions(self, name: str) -> list[str]:
        spec = self.generators.get(name)
        return sorted(spec.regions) if spec and spec.retired is None else []

    def embedder_regions(self, name: str) -> list[str]:
        spec = self.embedders.get(name)
        return sorted(spec.regions) if spec else []

    def for_region(self, region: str) -> Catalog:
        generators = {
            name: _generator(name, spec, region)
            for name, spec in self.generators.items()
            if region in spec.regions and spec.retired is None
        }
        embedders = {
            name: _embedder(name, spec, region) for name, spec in self.embedders.items() if region in spec.regions
        }
        rerankers = {
            name: RerankModel(
                name=name,
                max_documents=spec.max_documents,
                max_tokens_per_item=spec.max_tokens_per_item,
                max_tokens_per_request=spec.regions[region].max_tokens_per_request,
                price_per_1k=spec.regions[region].price_per_1k,
                region=region,
                source="; ".join(s for s in (spec.source, spec.regions[region].source) if s),
            )
            for name, spec in self.rerankers.items()
            if region in spec.regions
        }
        return Catalog(
            generators=generators,
            default_generator=self.default_generator,
            embedders=embedders,
            default_embedder=self.default_embedders.get(region),
            region=region,
            rerankers=rerankers,
            default_reranker=self.default_rerankers.get(region),
        )


def _generator(name: str, spec: _GeneratorSpec, region: str) -> GeneratorModel:
    offer = spec.regions[region]
    first = offer.prices[0]
    return GeneratorModel(
        name=name,
        context_window=spec.context_window,
        max_input_tokens=spec.max_input_tokens,
        max_output_tokens=spec.max_output_tokens,
        temperature=spec.temperature,
        top_p=spec.top_p,
        max_tokens=spec.max_tokens,
        price_input_per_1k=first.input,
        price_output_per_1k=first.output,
        price_tiers=offer.prices,
        thinking=spec.thinking,
        region=region,
        source="; ".join(s for s in (spec.source, offer.source) if s),
    )


def _embedder(name: str, spec: _EmbedderSpec, region: str) -> EmbeddingModel:
    offer = spec.regions[region]
    return EmbeddingModel(
        name=name,
        default_dimensions=spec.default_dimensions,
        dimensions=offer.dimensions,
        max_batch=spec.max_batch,
        max_tokens_per_text=spec.max_tokens_per_text,
        price_per_1k=offer.price_per_1k,
        region=region,
        source="; ".join(s for s in (spec.source, offer.source) if s),
    )


def _read_catalog_file(name: str) -> dict[str, Any]:
    text = resources.files("rag_shared.catalog").joinpath(name).read_text(encoding="utf-8")
    data: dict[str, Any] = json.loads(text)
    return data


@cache
def load_catalog_spec() -> CatalogSpec:
    """The whole catalog shipped in the layer (``rag_shared/catalog/*.json``), every region."""
    gen = _read_catalog_file("generators.json")
    emb = _read_catalog_file("embedders.json")
    rer = _read_catalog_file("rerankers.json")
    return CatalogSpec(
        generators=gen["models"],
        default_generator=gen["default"],
        embedders=emb["models"],
        default_embedders=emb["defaults"],
        rerankers=rer["models"],
        default_rerankers=rer["defaults"],
    )


@cache
def _catalog_for(region: str) -> Catalog:
    return load_catalog_spec().for_region(region)


def load_catalog(region: str | None = None) -> Catalog:
    """The models offered in ``region`` (default: ``DASHSCOPE_REGION``, as the functions are configured)."""
    if region is None:
        region = parse_region(os.environ.get("DASHSCOPE_REGION") or DEFAULT_REGION).value
    return _catalog_for(str(region))


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

DEFAULT_REGION = Region.SINGAPORE

# Workspace-specific domains, recommended over the shared ones in Beijing, Singapore and Hong Kong
# ("Alibaba Cloud Model Studio has launched workspace-specific domains for the China (Beijing),
# Singapore and China (Hong Kong) regions ... We recommend migrating", anthropic-api-messages page,
# Oct 2026; the OpenAI-compatible base URL is https://{WorkspaceId}.{region}.maas.aliyuncs.com/compatible-mode/v1,
# deepseek-api page, Oct 2026). US (Virginia) keeps dashscope-us.aliyuncs.com.
WORKSPACE_DOMAIN_REGIONS = frozenset({Region.BEIJING, Region.SINGAPORE, Region.HONG_KONG})


def parse_region(raw: str) -> Region:
    """A region from its id or a friendly alias (``intl``, ``cn``, ``hk``...)."""
    value = raw.strip().lower()
    if value in REGION_ALIASES:
        return REGION_ALIASES[value]
    try:
        return Region(value)
    except ValueError:
        known = sorted({r.value for r in Region} | set(REGION_ALIASES))
        raise ValueError(f"DASHSCOPE_REGION={raw!r} is unknown; use one of {known}") from None


def compatible_base_url(region: Region, workspace_id: str | None = None) -> str:
    """The OpenAI-compatible base URL: the workspace's own domain where Model Studio recommends it."""
    if workspace_id and region in WORKSPACE_DOMAIN_REGIONS:
        return f"https://{workspace_id}.{region.value}.maas.aliyuncs.com/compatible-mode/v1"
    return REGION_BASE_URLS[region]


def region_of_base_url(url: str) -> Region | None:
    """The region whose documented endpoint ``url`` is (shared or workspace domain), or None for others
    (a stand-in, a proxy)."""
    host = url.split("://", 1)[-1].split("/", 1)[0].rsplit(":", 1)[0].lower()
    for region, base in REGION_BASE_URLS.items():
        if host == base.split("://", 1)[1].split("/", 1)[0]:
            return region
    for region in Region:
        if host.endswith(f".{region.value}.maas.aliyuncs.com"):
            return region
    return None


def _not_offered(variable: str, name: str, offered_in: list[str], region: Region, alternative: str | None) -> str:
    """The start-up error for a model the region does not serve, naming both ways out."""
    where = ", ".join(offered_in)
    fixes = [f"{variable}={alternative}"] if alternative else []
    if len(offered_in) == 1:
        fixes.append(f"DASHSCOPE_REGION={offered_in[0]}")
    fix = " or ".join(fixes) if fixes else f"DASHSCOPE_REGION to one of {where}"
    return f"{name} is offered only in {where}, not in {region.value}; set {fix}"


class OpenSearchAuth(StrEnum):
    NONE = "none"
    BASIC = "basic"  # user:password in OPENSEARCH_URL
    SIGV4 = "sigv4"  # IAM: AWSV4SignerAuth with OPENSEARCH_SERVICE (es or aoss)


def _from_environment(model: type[BaseModel], given: Mapping[str, Any]) -> dict[str, str]:
    """The environment variables naming ``model``'s fields (any case), keyed as pydantic validates
    them: by field name, or by the first of a field's ``AliasChoices`` that is set. Fields in
    ``given`` are left out (keyword arguments win)."""
    env = {k.lower(): v for k, v in os.environ.items()}
    found: dict[str, str] = {}
    for name, field in model.model_fields.items():
        alias = field.validation_alias
        choices = alias.choices if isinstance(alias, AliasChoices) else [alias] if isinstance(alias, str) else [name]
        names = [c for c in choices if isinstance(c, str)]
        if name in given or any(n in given for n in names):
            continue
        for n in names:
            if n.lower() in env:
                found[n] = env[n.lower()]
                break
    return found


class EnvSettings(BaseModel):
    """Settings whose fields are read from the environment: ``foo_bar`` from ``FOO_BAR`` (any case), a
    field with ``AliasChoices`` from the first of them that is set; keyword arguments win.

    What pydantic-settings' ``BaseSettings`` did for these classes, without importing it: its sources
    (dotenv, the command-line parser...) cost ~30 ms of every cold start of both functions (CPU, quiet
    machine; bench/coldstart.py), for settings that are plain strings (no JSON-decoded fields, no .env).
    Values are validated as pydantic validates strings (lax mode: "8" is 8, "true" is True)."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    def __init__(self, **values: Any) -> None:
        super().__init__(**{**_from_environment(type(self), values), **values})


class Settings(EnvSettings):
    """Every knob of the service. Field ``foo_bar`` is read from env var ``FOO_BAR``."""

    # DashScope
    dashscope_region: str = "ap-southeast-1"
    dashscope_base_url: str | None = None
    # with a workspace id, the workspace-specific domain is used where recommended (see compatible_base_url)
    dashscope_workspace_id: str | None = Field(None, pattern=r"^[A-Za-z0-9][A-Za-z0-9-]{0,62}$")
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
    # Small files (issue 14): an SQS batch's records run this many at once (records naming the same
    # key in order), and the last, partly filled embedding call of each file waits this long for
    # other files' texts to share the call. 1 and 0 give the one-record-at-a-time behaviour. The
    # pacer stays the binding limit: every call, shared or not, waits for its slot there.
    indexer_record_concurrency: int = Field(10, ge=1, le=64)
    embedding_pack_linger_ms: float = Field(20.0, ge=0, le=1000)

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
    # Hostile input (issue 13): bounds on what an object may expand into, apart from its size;
    # defaults and why in indexer.extract.Limits. Passed to extract(..., limits=...).
    max_extracted_chars: PositiveInt = 32_000_000
    max_pdf_pages: PositiveInt = 5_000
    max_pdf_stream_bytes: PositiveInt = 4_000_000
    max_pdf_content_bytes: PositiveInt = 32_000_000
    # OpenSearch Serverless only: the queue the indexer sends its delayed sweep messages to
    sweep_queue_url: str | None = None
    sweep_delay_seconds: int = Field(60, ge=0, le=900)  # SQS's DelaySeconds range
    # A file too big for one invocation stops this long before the function's timeout and is retried
    stop_before_timeout_seconds: float = Field(60, ge=0)
    # A failed record comes back after base × 4^(tries-1) seconds, at most max (SQS allows 12 h)
    retry_base_seconds: int = Field(30, ge=0, le=43200)
    retry_max_seconds: int = Field(900, ge=0, le=43200)

    # Consistency: the DynamoDB table of per-key commit records (which chunk version readers see),
    # and the dead-letter queue a poison message is moved to at once instead of being retried
    commit_table: str | None = None
    dead_letter_queue_url: str | None = None

    # Retrieval
    rag_top_k: int = Field(5, ge=0, le=50)
    # Default per request: semantic (k-NN), hybrid (k-NN + BM25, reciprocal rank fusion), keyword (BM25)
    search_type: Literal["semantic", "hybrid", "keyword"] = "hybrid"
    # Default floor on the k-NN cosine score ((2 - d) / 2, in [0, 1]); env RAG_MIN_SCORE; not applied to keyword
    min_score: float | None = Field(None, ge=0, le=1, validation_alias=AliasChoices("RAG_MIN_SCORE", "min_score"))
    # Rerank (issue 16): unset, the region's default rerank model (catalog/rerankers.json); empty, off.
    # Candidates fetched for it: 4 x top_k, at most RERANK_MAX_CANDIDATES (the API takes 500).
    rerank_model: str | None = None
    rerank_max_candidates: int = Field(40, ge=1, le=500)
    rerank_timeout_seconds: float = Field(10.0, gt=0)
    # Follow-up questions: with history, rewrite the last question into a standalone query first.
    query_rewrite: Literal["off", "history"] = "history"
    query_rewrite_model: str | None = None  # unset: the region's cheapest fast model (REWRITE_MODELS)
    query_rewrite_timeout_seconds: float = Field(8.0, gt=0)

    @model_validator(mode="after")
    def _check_consistency(self) -> Self:
        region = self.region  # validates DASHSCOPE_REGION
        url_region = region_of_base_url(self.dashscope_base_url or "")
        if url_region is not None and url_region is not region:
            raise ValueError(
                f"DASHSCOPE_BASE_URL is the {url_region.value} endpoint but DASHSCOPE_REGION is {region.value}; "
                f"set DASHSCOPE_REGION={url_region.value} (the catalog and the key follow the region)"
            )
        spec = load_catalog_spec()
        catalog = load_catalog(region.value)
        chat = self.chat_model or catalog.default_generator
        if chat not in spec.generators:
            raise ValueError(f"CHAT_MODEL={chat!r} is not in the catalog; known: {sorted(spec.generators)}")
        retired = spec.generators[chat].retired
        if retired is not None:
            raise ValueError(
                f"{chat} was discontinued by Model Studio on {retired.on}; set CHAT_MODEL={retired.use} "
                f"(source: {retired.source.split(' ')[0]})"
            )
        if chat not in catalog.generators:
            alternative = catalog.default_generator if catalog.default_generator in catalog.generators else None
            raise ValueError(_not_offered("CHAT_MODEL", chat, spec.generator_regions(chat), region, alternative))
        name = self.embedding_model or catalog.default_embedder
        if name is None:
            raise ValueError(
                f"no embedding model is documented in {region.value}; set DASHSCOPE_REGION to one of "
                f"{sorted(spec.default_embedders)} (with a key from that region)"
            )
        if name not in spec.embedders:
            raise ValueError(f"EMBEDDING_MODEL={name!r} is not in the catalog; known: {sorted(spec.embedders)}")
        if name not in catalog.embedders:
            raise ValueError(
                _not_offered("EMBEDDING_MODEL", name, spec.embedder_regions(name), region, catalog.default_embedder)
            )
        emb = catalog.embedders[name]
        if self.embedding_dimensions is not None and self.embedding_dimensions not in emb.dimensions:
            elsewhere = [
                r for r, o in spec.embedders[name].regions.items() if self.embedding_dimensions in o.dimensions
            ]
            hint = f" (offered in {', '.join(sorted(elsewhere))})" if elsewhere else ""
            raise ValueError(
                f"EMBEDDING_DIMENSIONS={self.embedding_dimensions} is not offered by {emb.name} in "
                f"{region.value}{hint}; choose one of {emb.dimensions}"
            )
        if self.rerank_model:
            if self.rerank_model not in spec.rerankers:
                raise ValueError(
                    f"RERANK_MODEL={self.rerank_model!r} is not in the catalog; known: {sorted(spec.rerankers)}"
                )
            if self.rerank_model not in catalog.rerankers:
                raise ValueError(
                    _not_offered(
                        "RERANK_MODEL",
                        self.rerank_model,
                        spec.reranker_regions(self.rerank_model),
                        region,
                        catalog.default_reranker or "",
                    )
                )
        rewrite = self.query_rewrite_model
        if rewrite is not None and rewrite not in catalog.generators:
            raise ValueError(
                _not_offered(
                    "QUERY_REWRITE_MODEL", rewrite, spec.generator_regions(rewrite), region, self.rewrite_generator.name
                )
                if rewrite in spec.generators
                else f"QUERY_REWRITE_MODEL={rewrite!r} is not in the catalog; known: {sorted(spec.generators)}"
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
        return parse_region(self.dashscope_region)

    @property
    def base_url(self) -> str:
        return (self.dashscope_base_url or compatible_base_url(self.region, self.dashscope_workspace_id)).rstrip("/")

    @property
    def catalog(self) -> Catalog:
        """The models offered in the configured region."""
        return load_catalog(self.region.value)

    @property
    def generator(self) -> GeneratorModel:
        catalog = self.catalog
        return catalog.generators[self.chat_model or catalog.default_generator]

    @property
    def embedder(self) -> EmbeddingModel:
        catalog = self.catalog
        name = self.embedding_model or catalog.default_embedder
        if name is None or name not in catalog.embedders:  # the validator refuses this; kept for type safety
            raise ValueError(f"EMBEDDING_MODEL={name!r} is not offered in {self.region.value}")
        return catalog.embedders[name]

    @property
    def dimensions(self) -> int:
        return self.embedding_dimensions or self.embedder.default_dimensions

    @property
    def reranker(self) -> RerankModel | None:
        """The rerank model, or None when reranking is off (RERANK_MODEL empty, or none in the region)."""
        catalog = self.catalog
        name = catalog.default_reranker if self.rerank_model is None else self.rerank_model
        return catalog.rerankers.get(name) if name else None

    @property
    def rewrite_generator(self) -> GeneratorModel:
        """The model that rewrites follow-up questions: QUERY_REWRITE_MODEL, else the region's first
        offered of REWRITE_MODELS (fast and cheap), else the chat model."""
        catalog = self.catalog
        if self.query_rewrite_model and self.query_rewrite_model in catalog.generators:
            return catalog.generators[self.query_rewrite_model]
        for name in REWRITE_MODELS:
            if name in catalog.generators:
                return catalog.generators[name]
        return self.generator


# Cheapest first (catalog prices, international: qwen-flash $0.05/M in, qwen-turbo $0.05/M, qwen-plus $0.4/M)
REWRITE_MODELS = ("qwen-flash", "qwen-turbo", "qwen-plus")


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
