"""The chunk index's settings and mappings, the k-NN engine a cluster can serve, and the index
template that keeps automatic index creation from building an index without k-NN. Pure functions."""

from __future__ import annotations

import copy
import logging
from typing import Any

from rag_shared.errors import StoreError
from rag_shared.store.documents import METADATA_FIELD, SPACE, VECTOR_FIELD

log = logging.getLogger(__name__)

# Which engine can do cosinesimil, from which version (documentation-website
# _mappings/supported-field-types/knn-methods-engines.md): lucene hnsw always (engine since 2.2), faiss
# hnsw only from 2.19. Efficient filtering inside ``knn``, which search needs: lucene 2.4+, faiss 2.9+.
FAISS_COSINE_SINCE = (2, 19)
MIN_VERSION = (2, 4)
# Serverless vector collections refuse the lucene engine (AWS serverless-vector-search.md, Limitations).
SERVERLESS_ENGINE = "faiss"
# A write to a missing index creates it (automatic index creation) from the highest-priority index
# template matching its name, else with dynamic mappings, where a vector is a plain float array and
# k-NN is lost. So ensure_index installs a template per index (exact-name pattern, high priority).
TEMPLATE_PRIORITY = 200
# The chunk index template leaves the vector field out and sets ``dynamic: strict``; the store's own
# create request adds the field and ``dynamic: true`` (a create request's mappings override the
# template's). So a chunk index re-created by a write (after someone deleted it) refuses that write
# with strict_dynamic_mapping_exception: the store notices and adds the k-NN field to the new index
# (PUT _mapping; aoss:UpdateIndex on Serverless, where it cannot delete the index); the backfill
# re-indexes what was lost. Only mappings, which Serverless fully supports.
GUARD = "strict"
# Filterable metadata: every string under ``metadata`` maps to ``keyword`` (exact term/terms/range
# filters), instead of dynamic mapping's ``text`` + ``keyword`` subfield; a string that looks like a
# date would be mapped ``date`` by date detection, so that JSON type is kept a keyword too (ISO dates
# then range-compare as strings). Numbers and booleans map as dynamic mapping does (long, float,
# boolean). Dynamic templates apply to new fields only, in order, first match wins
# (documentation-website _mappings/dynamic-templates.md; match_mapping_type, path_match). They are
# part of an index's mapping ("the dynamic_templates array of an index mapping", same page), and the
# Put Mapping API updates an existing mapping (index-apis/put-mapping.md, whose stored copy shows only
# ``properties`` in its example: the in-place update is modelled by the stand-in, not yet checked on
# a live cluster). PUT _mapping is aoss:UpdateIndex on Serverless (AWS serverless-genref.md), so an
# index created before this template gets it in place.
DYNAMIC_TEMPLATES: list[dict[str, Any]] = [
    {
        f"{METADATA_FIELD}_{kind}_as_keyword": {
            "path_match": f"{METADATA_FIELD}.*",
            "match_mapping_type": kind,
            "mapping": {"type": "keyword"},
        }
    }
    for kind in ("string", "date")
]


def metadata_mapping() -> dict[str, Any]:
    """What an existing chunk index needs (PUT _mapping) to map metadata as filters expect."""
    return {
        "dynamic_templates": copy.deepcopy(DYNAMIC_TEMPLATES),
        "properties": {METADATA_FIELD: {"type": "object"}},
    }


def has_metadata_mapping(mappings: dict[str, Any]) -> bool:
    names = {name for t in mappings.get("dynamic_templates") or [] for name in t}
    return all(name in names for t in DYNAMIC_TEMPLATES for name in t)


def index_body(dimensions: int, engine: str, *, serverless: bool) -> dict[str, Any]:
    """Settings and mappings of the chunk index: HNSW, cosine similarity, on faiss or lucene."""
    settings: dict[str, Any] = {"index": {"knn": True}}
    if not serverless:  # OpenSearch Serverless manages shards itself and rejects these
        settings["index"].update({"number_of_shards": 1, "number_of_replicas": 1})
    return {
        "settings": settings,
        "mappings": {
            "dynamic": "true",  # overrides the template's guard (see GUARD)
            "dynamic_templates": copy.deepcopy(DYNAMIC_TEMPLATES),
            "properties": {
                VECTOR_FIELD: {
                    "type": "knn_vector",
                    "dimension": dimensions,
                    "method": {
                        "name": "hnsw",
                        "engine": engine,
                        "space_type": SPACE,
                        "parameters": {"m": 16, "ef_construction": 128},
                    },
                },
                "text": {"type": "text"},
                "source_key": {"type": "keyword"},
                "version": {"type": "keyword"},
                "chunk_number": {"type": "integer"},
                "start": {"type": "integer"},
                "end": {"type": "integer"},
                "heading": {"type": "text"},
                "content_hash": {"type": "keyword"},
                "embedding_model": {"type": "keyword"},
                "source_seq": {"type": "keyword"},
                "etag": {"type": "keyword"},
                "version_id": {"type": "keyword"},
                METADATA_FIELD: {"type": "object"},
            },
        },
    }


def parse_version(number: str) -> tuple[int, int]:
    """``"2.11.1"`` as ``(2, 11)``."""
    try:
        major, minor = (int(p) for p in number.split(".")[:2])
    except ValueError:
        raise StoreError(f"OpenSearch reported an unreadable version {number!r}") from None
    return major, minor


def choose_engine(version: tuple[int, int] | None, preferred: str, *, serverless: bool) -> str:
    """The k-NN engine for a new chunk index: the preferred one where the cluster can do cosine
    similarity with it, else lucene; always faiss on Serverless, which has no lucene engine."""
    if serverless:
        return SERVERLESS_ENGINE
    assert version is not None
    if version < MIN_VERSION:
        raise StoreError(
            f"OpenSearch {version[0]}.{version[1]} is too old: k-NN search with filters needs "
            f"{MIN_VERSION[0]}.{MIN_VERSION[1]} or later; upgrade the domain"
        )
    if preferred == "faiss" and version < FAISS_COSINE_SINCE:
        log.info("faiss supports cosinesimil from OpenSearch 2.19; using lucene on %d.%d", *version)
        return "lucene"
    return preferred


def index_lost(error: dict[str, Any]) -> bool:
    """A bulk item error saying the index is gone, or was re-created by a write (the template's guard)."""
    etype, reason = error.get("type"), str(error.get("reason", ""))
    return etype == "index_not_found_exception" or (
        etype == "strict_dynamic_mapping_exception" and f"[{VECTOR_FIELD}]" in reason
    )


def index_template(name: str, body: dict[str, Any], *, guard: bool) -> dict[str, Any]:
    """An index template applying ``body`` to an index called exactly ``name`` whenever it is
    created, also by a write to a missing index. ``guard`` leaves out the vector field and makes
    the mapping strict, so such an index refuses documents until the store adopts it."""
    template = copy.deepcopy(body)
    if guard:
        mappings = template.setdefault("mappings", {})
        mappings["dynamic"] = GUARD
        mappings.get("properties", {}).pop(VECTOR_FIELD, None)
    return {
        "index_patterns": [name],
        "priority": TEMPLATE_PRIORITY,
        "template": template,
    }
