"""A loopback stand-in for the OpenSearch REST calls this product makes.

No OpenSearch server installs from the reachable registries, so this implements exactly:
index exists/create/delete/get-mapping (validating a k-NN mapping as the k-NN plugin does),
``_bulk`` with per-item results, ``_doc`` get/index, ``_search`` (``knn`` with efficient
``filter``, ``term``/``terms``/``prefix``/``bool``/``match_all``, ``collapse``), ``_count``,
``_delete_by_query``, ``_refresh``, ``_settings`` and ``_index_template``. Like OpenSearch it is
near-real-time: searches see only
what a refresh (explicit, ``?refresh=true``, or the 1 s interval) has published, while ``GET
_doc`` is real-time. Scores follow the k-NN documentation's table for each space:
cosinesimil ``(2 - d) / 2`` with ``d = 1 - cos``; l2 ``1 / (1 + d)``; innerproduct as documented.
"""

from __future__ import annotations

import copy
import fnmatch
import math
import re
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Self

import orjson

from standins.base import Request, StandInServer

Version = tuple[int, int, int]

# Which k-NN engine/method/space each OpenSearch version accepts at index creation. Source:
# documentation-website _mappings/supported-field-types/knn-methods-engines.md ("Supported methods"
# tables): lucene hnsw supports l2 and cosinesimil, innerproduct from 2.13; faiss hnsw supports l2 and
# innerproduct, cosinesimil only from 2.19; faiss ivf needs training (not modelled); nmslib (deprecated
# in 2.19) supports l2, innerproduct, cosinesimil, l1, linf. The lucene engine arrived in k-NN 2.2.
# Creating an nmslib index is blocked from 3.0.0 (k-NN issue #2551, PR #2573; message quoted in
# mem0ai/mem0#3049). Efficient filtering inside ``knn``: lucene 2.4+, faiss 2.9+ (REFERENCE.md).
SPACES_SINCE: dict[str, dict[str, Version]] = {
    "lucene": {"l2": (2, 2, 0), "cosinesimil": (2, 2, 0), "innerproduct": (2, 13, 0)},
    "faiss": {"l2": (1, 0, 0), "innerproduct": (1, 0, 0), "cosinesimil": (2, 19, 0)},
    "nmslib": {s: (1, 0, 0) for s in ("l2", "innerproduct", "cosinesimil", "l1", "linf")},
}
ENGINE_SINCE: dict[str, Version] = {"lucene": (2, 2, 0), "faiss": (1, 0, 0), "nmslib": (1, 0, 0)}
NMSLIB_BLOCKED_FROM: Version = (3, 0, 0)
FILTER_SINCE: dict[str, Version] = {"lucene": (2, 4, 0), "faiss": (2, 9, 0)}
MAX_DIMENSION = 16000
# IndexRequest.validate() in OpenSearch core: "id [...] is too long, must be no longer than 512 bytes".
# A bulk request validates every item first, so one over-long id fails the whole request with 400.
MAX_ID_BYTES = 512
# Serverless runs current OpenSearch ("clients must be compatible with OpenSearch 3.x",
# AWS serverless-overview.md); its method rules are those of that line.
SERVERLESS_VERSION: Version = (3, 1, 0)
# Default dynamic date formats (documentation-website _mappings/index.md, "Date detection"):
# strict_date_optional_time, or yyyy/MM/dd HH:mm:ss Z || yyyy/MM/dd Z.
_DATE = re.compile(
    r"^\d{4}-\d{2}-\d{2}(T\d{2}(:\d{2}(:\d{2}(\.\d{1,9})?)?)?(Z|[+-]\d{2}(:?\d{2})?)?)?$"
    r"|^\d{4}/\d{2}/\d{2}( \d{2}:\d{2}:\d{2})?( [+-]\d{4})?$"
)
# Data access policy permissions of OpenSearch Serverless per API (AWS serverless-genref.md, "Supported
# OpenSearch API operations and permissions"): index templates and aliases are "collection items".
AOSS_ALL = frozenset(
    {
        "aoss:CreateIndex",
        "aoss:DescribeIndex",
        "aoss:UpdateIndex",
        "aoss:DeleteIndex",
        "aoss:ReadDocument",
        "aoss:WriteDocument",
        "aoss:CreateCollectionItems",
        "aoss:DescribeCollectionItems",
        "aoss:UpdateCollectionItems",
        "aoss:DeleteCollectionItems",
    }
)


def parse_version(number: str) -> Version:
    major, minor, patch = [*(int(p) for p in re.findall(r"\d+", number)[:3]), 0, 0, 0][:3]
    return major, minor, patch


def dynamic_mapping(value: Any) -> dict[str, Any] | None:
    """The field OpenSearch adds for an unmapped JSON value (_mappings/index.md, "Dynamic mapping
    rules"): null adds nothing, true/false boolean, 1 long, 1.5 float, an array maps as its first
    non-null element (so a vector becomes a plain ``float`` field), an object its own properties,
    a string ``date`` when it looks like one and otherwise ``text`` with a ``keyword`` subfield."""
    if value is None:
        return None
    if isinstance(value, bool):
        return {"type": "boolean"}
    if isinstance(value, int):
        return {"type": "long"}
    if isinstance(value, float):
        return {"type": "float"}
    if isinstance(value, list):
        return next((m for m in (dynamic_mapping(v) for v in value) if m is not None), None)
    if isinstance(value, dict):
        props = {k: m for k, m in ((k, dynamic_mapping(v)) for k, v in value.items()) if m is not None}
        return {"properties": props}
    if isinstance(value, str) and _DATE.match(value):
        return {"type": "date"}
    return {"type": "text", "fields": {"keyword": {"type": "keyword", "ignore_above": 256}}}


def flat_settings(settings: dict[str, Any], prefix: str = "") -> dict[str, str]:
    """``{"index": {"knn": true}}`` and ``{"index.knn": true}`` both as ``{"index.knn": "true"}``."""
    out: dict[str, str] = {}
    for k, v in settings.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flat_settings(v, f"{key}."))
        else:
            out[key] = str(v).lower() if isinstance(v, bool) else str(v)
    return {(k if k.startswith("index.") else f"index.{k}"): v for k, v in out.items()}


def merge_mappings(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    """Template mappings under the request's: the create-index request wins field by field, and
    an object field's own properties merge the same way (a PUT _mapping adding ``{"type": "object"}``
    keeps the fields already under it). ``dynamic_templates`` are replaced as a whole."""
    out = copy.deepcopy(base)
    for k, v in over.items():
        if k == "properties" and isinstance(v, dict):
            props = out.setdefault("properties", {})
            for fname, spec in v.items():
                old = props.get(fname)
                if isinstance(old, dict) and isinstance(spec, dict) and ("properties" in old or "properties" in spec):
                    props[fname] = merge_mappings(old, spec)
                else:
                    props[fname] = copy.deepcopy(spec)
        else:
            out[k] = copy.deepcopy(v)
    return out


def _pattern_matches(pattern: str, name: str) -> bool:
    return fnmatch.fnmatchcase(name, pattern)


def _err(etype: str, reason: str, index: str | None = None) -> dict[str, Any]:
    cause: dict[str, Any] = {"type": etype, "reason": reason}
    if index:
        cause["index"] = index
    return {"error": {"root_cause": [cause], **cause}, "status": 0}


class Refused(Exception):
    def __init__(self, status: int, etype: str, reason: str, index: str | None = None) -> None:
        super().__init__(reason)
        self.status, self.body = status, _err(etype, reason, index)
        self.body["status"] = status


def score(space: str, q: list[float], v: list[float]) -> float:
    if space == "cosinesimil":
        nq = math.sqrt(sum(x * x for x in q))
        nv = math.sqrt(sum(x * x for x in v))
        d = 1 - sum(a * b for a, b in zip(q, v, strict=True)) / (nq * nv)
        return (2 - d) / 2
    if space == "l2":
        return 1 / (1 + sum((a - b) ** 2 for a, b in zip(q, v, strict=True)))
    if space == "innerproduct":
        d = -sum(a * b for a, b in zip(q, v, strict=True))
        return 1 / (1 + d) if d >= 0 else -d + 1
    raise ValueError(space)


# --- analysis and scoring -------------------------------------------------------------------------
#
# The standard analyzer, the default for ``text`` fields (documentation-website _analyzers/
# analyzers/standard.md): the standard tokenizer, which splits on word boundaries per Unicode UAX #29
# (Lucene StandardTokenizer javadoc), then lowercase; no stop words unless configured (the
# ``stopwords`` default is ``_none_``). UAX #29 emits each CJK ideograph and hiragana character as a
# token of its own (Lucene's token types <IDEOGRAPHIC>, <HIRAGANA>: "a single CJKV ideographic
# character"), so Chinese text matches character by character. Modelled here: runs of word
# characters, letters/digits joined by ``.`` or ``'`` inside a word (``3.14``, ``don't``), one token per
# ideograph or hiragana; not modelled: URLs/emails (split as UAX #29 does anyway), the 255-char cap.
_CJK = "\u3040-\u309f\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\U00020000-\U0002fa1f"
_TOKEN = re.compile(rf"[{_CJK}]|[^\W{_CJK}]+(?:[.'][^\W{_CJK}]+)*")


def analyze(text: str) -> list[str]:
    return [t.lower() for t in _TOKEN.findall(text)]


# BM25, OpenSearch's default similarity (documentation-website _search-plugins/keyword-search.md,
# "By default, OpenSearch calculates document scores using the Okapi BM25 algorithm"; similarity.md),
# as Lucene's BM25Similarity computes it (Lucene 9 javadoc): k1 = 1.2, b = 0.75,
# idf = ln(1 + (docCount - docFreq + 0.5) / (docFreq + 0.5)), and per term
# idf * freq / (freq + k1 * (1 - b + b * dl / avgdl)), with docCount the documents that have the field
# and avgdl its total terms over docCount. A ``match`` sums its terms (a bool of SHOULD term queries);
# ``multi_match`` (type best_fields, tie_breaker 0) takes the best field. Not modelled: Lucene stores
# dl lossily in one byte (SmallFloat), so real scores differ in the last digits for long fields;
# per-shard statistics (the chunk index has one shard).
BM25_K1 = 1.2
BM25_B = 0.75
# indices.query.bool.max_clause_count, "the maximum product of fields and terms that are queryable
# simultaneously", 1,024 by default (documentation-website configuring-opensearch/index-settings.md);
# over it a search fails with root cause too_many_clauses, "maxClauseCount is set to 1024", answered
# as HTTP 500 search_phase_execution_exception (the error body quoted in linagora/tmail-flutter#2809).
MAX_CLAUSE_COUNT = 1024
NUMERIC = {"long", "integer", "short", "byte", "double", "float", "half_float", "scaled_float", "unsigned_long"}


def field_values(doc: dict[str, Any], path: str) -> list[Any]:
    """The values at a dotted path, through objects and arrays (OpenSearch flattens both)."""
    nodes: list[Any] = [doc]
    for part in path.split("."):
        nxt: list[Any] = []
        for node in nodes:
            for item in node if isinstance(node, list) else [node]:
                if isinstance(item, dict) and part in item:
                    value = item[part]
                    nxt.extend(value if isinstance(value, list) else [value])
        nodes = nxt
    if not nodes and path in doc:  # a dotted key stored as such
        value = doc[path]
        nodes = value if isinstance(value, list) else [value]
    return [v for v in nodes if v is not None]


def field_type(mappings: dict[str, Any], path: str) -> str | None:
    """The mapped type at a dotted path (``object`` for an object), or None when unmapped."""
    node: dict[str, Any] = mappings
    for part in path.split("."):
        spec = (node.get("properties") or {}).get(part)
        if spec is None:
            return None
        node = spec
    return str(node.get("type") or "object")


def _shard_error(reason: str) -> Refused:
    return Refused(400, "query_shard_exception", f"failed to create query: {reason}")


class Evaluator:
    """Matches and scores one query against documents of one index (its mappings and searchable docs)."""

    def __init__(self, mappings: dict[str, Any] | None = None, docs: dict[str, dict[str, Any]] | None = None) -> None:
        self.mappings = mappings or {}
        self.docs = docs or {}
        self._stats: dict[str, tuple[int, float, dict[str, int], dict[str, list[str]]]] = {}

    # field statistics, computed once per field per search

    def _field_stats(self, fname: str) -> tuple[int, float, dict[str, int], dict[str, list[str]]]:
        if fname not in self._stats:
            keyword = field_type(self.mappings, fname) != "text"
            tokens: dict[str, list[str]] = {}
            for doc_id, doc in self.docs.items():
                values = field_values(doc, fname)
                if values:
                    tokens[doc_id] = (
                        [_kw(v) for v in values] if keyword else [t for v in values for t in analyze(str(v))]
                    )
            df: dict[str, int] = {}
            for toks in tokens.values():
                for t in set(toks):
                    df[t] = df.get(t, 0) + 1
            total = sum(len(t) for t in tokens.values())
            self._stats[fname] = (len(tokens), total / len(tokens) if tokens else 0.0, df, tokens)
        return self._stats[fname]

    def _bm25(self, fname: str, doc_id: str, doc: dict[str, Any], terms: list[str], operator: str) -> float | None:
        keyword = field_type(self.mappings, fname) != "text"
        values = field_values(doc, fname)
        if not values:
            return None
        toks = [_kw(v) for v in values] if keyword else [t for v in values for t in analyze(str(v))]
        doc_count, avgdl, df, _ = self._field_stats(fname)
        if doc_id not in self.docs:  # a document outside the snapshot (filter context only)
            doc_count, avgdl = max(doc_count, 1), avgdl or float(len(toks))
        total, matched = 0.0, 0
        for term in terms:
            freq = toks.count(term)
            if not freq:
                continue
            matched += 1
            n = df.get(term, 1)
            idf = math.log(1 + (doc_count - n + 0.5) / (n + 0.5))
            # keyword fields have no norms (index-time length), so b has no effect there
            norm = 1.0 if keyword or not avgdl else 1 - BM25_B + BM25_B * len(toks) / avgdl
            total += idf * freq / (freq + BM25_K1 * norm)
        if not matched or (operator == "and" and matched < len(terms)):
            return None
        return total

    def _match(self, spec: dict[str, Any], doc: dict[str, Any], doc_id: str) -> float | None:
        ((fname, value),) = spec.items()
        opts = value if isinstance(value, dict) else {"query": value}
        unknown = set(opts) - {"query", "operator", "boost", "analyzer"}
        if unknown:
            raise Refused(400, "parsing_exception", f"[match] query does not support [{sorted(unknown)[0]}]")
        self._check_clauses(len(analyze(str(opts["query"]))), 1)
        return self._field_match(fname, opts["query"], str(opts.get("operator", "or")).lower(), doc, doc_id)

    @staticmethod
    def _check_clauses(terms: int, fields: int) -> None:
        if terms * fields > MAX_CLAUSE_COUNT:
            reason = f"maxClauseCount is set to {MAX_CLAUSE_COUNT}"
            exc = Refused(500, "search_phase_execution_exception", "all shards failed")
            exc.body["error"]["root_cause"] = [{"type": "too_many_clauses", "reason": reason}]
            raise exc

    def _field_match(self, fname: str, query: Any, operator: str, doc: dict[str, Any], doc_id: str) -> float | None:
        ftype = field_type(self.mappings, fname)
        if ftype == "knn_vector":
            raise _shard_error(f"Field [{fname}] of type [knn_vector] does not support match queries")
        terms = analyze(str(query)) if ftype in ("text", None) else [_kw(query)]
        return self._bm25(fname, doc_id, doc, terms, operator) if terms else None

    def _multi_match(self, spec: dict[str, Any], doc: dict[str, Any], doc_id: str) -> float | None:
        mtype = spec.get("type", "best_fields")
        if mtype != "best_fields":
            raise Refused(
                400, "illegal_argument_exception", f"stand-in implements multi_match best_fields, not {mtype}"
            )
        if "query" not in spec:
            raise Refused(400, "parsing_exception", "No text specified for multi_match query")
        self._check_clauses(len(analyze(str(spec["query"]))), len(spec.get("fields") or ["*"]))
        best: float | None = None
        for entry in spec.get("fields") or ["*"]:
            fname, _, boost = str(entry).partition("^")
            score = self._field_match(fname, spec["query"], str(spec.get("operator", "or")).lower(), doc, doc_id)
            if score is not None:
                score *= float(boost or 1)
                best = score if best is None else max(best, score)
        return best

    # term-level queries

    def _coerce(self, fname: str, value: Any) -> Any:
        """A query value as the field's type parses it; a value it cannot parse is refused (400)."""
        ftype = field_type(self.mappings, fname)
        if ftype in NUMERIC:
            if isinstance(value, bool):
                raise _shard_error(f'For input string: "{str(value).lower()}"')
            try:
                return float(value)
            except (TypeError, ValueError):
                raise _shard_error(f'For input string: "{value}"') from None
        if ftype == "boolean":
            if value in (True, "true"):
                return True
            if value in (False, "false"):
                return False
            raise _shard_error(f"Can't parse boolean value [{value}], expected [true] or [false]")
        if ftype == "knn_vector":
            raise _shard_error(f"Field [{fname}] of type [knn_vector] does not support term queries")
        return _kw(value)

    def _doc_terms(self, fname: str, doc: dict[str, Any]) -> list[Any]:
        ftype = field_type(self.mappings, fname)
        values = field_values(doc, fname)
        if ftype in NUMERIC:
            return [float(v) for v in values if isinstance(v, int | float) and not isinstance(v, bool)]
        if ftype == "boolean":
            return [v for v in values if isinstance(v, bool)]
        if ftype == "text":
            return [t for v in values for t in analyze(str(v))]
        return [_kw(v) for v in values]

    def score(self, query: dict[str, Any] | None, doc: dict[str, Any], doc_id: str) -> float | None:
        """The document's score for ``query``, or None when it does not match."""
        if not query:
            return 1.0
        if not isinstance(query, dict) or len(query) != 1:
            raise Refused(400, "parsing_exception", "[_na] query malformed, must start with start_object")
        ((kind, spec),) = query.items()
        if kind == "match_all":
            return 1.0
        if kind == "bool":
            return self._bool(spec, doc, doc_id)
        if kind == "ids":
            return 1.0 if doc_id in spec["values"] else None
        if kind == "match":
            return self._match(spec, doc, doc_id)
        if kind == "multi_match":
            return self._multi_match(spec, doc, doc_id)
        if kind not in ("term", "terms", "prefix", "range"):
            raise Refused(400, "parsing_exception", f"unknown query [{kind}]")
        # term-level queries score a constant 1.0 here (the product uses them in filter context only)
        fields = {k: v for k, v in spec.items() if k != "boost"}
        ((fname, value),) = fields.items()
        if kind == "terms":
            wanted = {self._coerce(fname, v) for v in value}
            return 1.0 if wanted & set(self._doc_terms(fname, doc)) else None
        if kind == "term":
            value = value["value"] if isinstance(value, dict) and "value" in value else value
            return 1.0 if self._coerce(fname, value) in self._doc_terms(fname, doc) else None
        if kind == "prefix":
            value = value["value"] if isinstance(value, dict) else value
            ftype = field_type(self.mappings, fname)
            if ftype not in ("keyword", "text", "wildcard", None):
                raise _shard_error(
                    f"Can only use prefix queries on keyword, text and wildcard fields - not on [{fname}] "
                    f"which is of type [{ftype}]"
                )
            return 1.0 if any(str(t).startswith(str(value)) for t in self._doc_terms(fname, doc)) else None
        ops = {"gt", "gte", "lt", "lte"}
        bounds = {op: self._range_bound(fname, b) for op, b in value.items() if op in ops}
        checks = {
            "lt": lambda a, b: a < b,
            "lte": lambda a, b: a <= b,
            "gt": lambda a, b: a > b,
            "gte": lambda a, b: a >= b,
        }
        for actual in self._doc_terms(fname, doc):
            if all(checks[op](actual, b) for op, b in bounds.items()):
                return 1.0
        return None

    def _range_bound(self, fname: str, bound: Any) -> Any:
        ftype = field_type(self.mappings, fname)
        if ftype == "knn_vector":
            raise _shard_error(f"Field [{fname}] of type [{ftype}] does not support range queries")
        return self._coerce(fname, bound)

    def _bool(self, spec: dict[str, Any], doc: dict[str, Any], doc_id: str) -> float | None:
        total = 0.0
        for q in _as_list(spec.get("must")):
            s = self.score(q, doc, doc_id)
            if s is None:
                return None
            total += s
        for q in _as_list(spec.get("filter")):  # filter context: must match, adds nothing to the score
            if self.score(q, doc, doc_id) is None:
                return None
        if any(self.score(q, doc, doc_id) is not None for q in _as_list(spec.get("must_not"))):
            return None
        shoulds = _as_list(spec.get("should"))
        # minimum_should_match defaults to 1 when the bool has no must or filter clause, else 0
        # (documentation-website _query-dsl/compound/bool.md)
        default = 0 if spec.get("must") or spec.get("filter") else 1
        minimum = int(spec.get("minimum_should_match", default if shoulds else 0))
        matched = 0
        for q in shoulds:
            s = self.score(q, doc, doc_id)
            if s is not None:
                matched += 1
                total += s
        if matched < minimum:
            return None
        return total


def _kw(value: Any) -> str:
    """A value as a keyword field indexes it (``true``, ``2024``, ``1.5``)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def matches(
    query: dict[str, Any] | None, doc: dict[str, Any], doc_id: str, mappings: dict[str, Any] | None = None
) -> bool:
    """Whether ``doc`` matches ``query`` (filter context)."""
    return Evaluator(mappings, {doc_id: doc}).score(query, doc, doc_id) is not None


def _as_list(x: Any) -> list[Any]:
    if x is None:
        return []
    return x if isinstance(x, list) else [x]


@dataclass
class Index:
    name: str
    mappings: dict[str, Any]
    settings: dict[str, Any]
    live: dict[str, dict[str, Any]] = field(default_factory=dict)
    searchable: dict[str, dict[str, Any]] = field(default_factory=dict)
    seq: int = 0
    auto_created: bool = False  # by a write to a missing index, not by PUT <index>

    def add_dynamic_fields(self, doc: dict[str, Any]) -> None:
        """New fields of ``doc``, at any depth, join the mapping as dynamic mapping would add them:
        by the first matching dynamic template, else by the default rules (see :func:`dynamic_mapping`)."""
        self._add_fields(self.mappings, doc, "", "true")

    def _add_fields(self, node: dict[str, Any], obj: dict[str, Any], prefix: str, inherited: str) -> None:
        props = node.setdefault("properties", {})
        # ``dynamic`` is inherited by inner objects unless they set their own (mapping-parameters/dynamic.md)
        dynamic = str(node.get("dynamic", inherited)).lower()
        for key, value in obj.items():
            if value is None or value == []:
                continue
            spec = props.get(key)
            if spec is None:
                if dynamic == "strict":  # documentation-website _mappings/mapping-parameters/dynamic.md
                    where = prefix.rstrip(".") or "_doc"
                    raise Refused(
                        400,
                        "strict_dynamic_mapping_exception",
                        f"mapping set to strict, dynamic introduction of [{key}] within [{where}] is not allowed",
                    )
                if dynamic == "false":
                    continue
                spec = self._dynamic_field(f"{prefix}{key}", key, value)
                if spec is None:
                    continue
                props[key] = spec
            inner = [v for v in (value if isinstance(value, list) else [value]) if isinstance(v, dict)]
            if inner and (spec.get("type") in (None, "object")):
                for item in inner:
                    self._add_fields(spec, item, f"{prefix}{key}.", dynamic)

    def _dynamic_field(self, path: str, name: str, value: Any) -> dict[str, Any] | None:
        """The mapping of a new field: the first dynamic template that matches its JSON type
        (``match_mapping_type``: string, long, double, boolean, object, date for a string that date
        detection recognises, or ``*``), its name (``match``/``unmatch``) and its dotted path
        (``path_match``/``path_unmatch``), in the order listed (documentation-website
        _mappings/dynamic-templates.md); else the default dynamic mapping."""
        first = next((v for v in value if v is not None), None) if isinstance(value, list) else value
        if first is None:
            return None
        if isinstance(first, bool):
            json_type = "boolean"
        elif isinstance(first, int):
            json_type = "long"
        elif isinstance(first, float):
            json_type = "double"
        elif isinstance(first, dict):
            json_type = "object"
        elif isinstance(first, str) and self.mappings.get("date_detection", True) and _DATE.match(first):
            json_type = "date"
        else:
            json_type = "string"
        for entry in self.mappings.get("dynamic_templates") or []:
            ((_, tmpl),) = entry.items()
            conds = [
                tmpl.get("match_mapping_type", "*") in ("*", json_type),
                "match" not in tmpl or fnmatch.fnmatchcase(name, tmpl["match"]),
                "unmatch" not in tmpl or not fnmatch.fnmatchcase(name, tmpl["unmatch"]),
                "path_match" not in tmpl or fnmatch.fnmatchcase(path, tmpl["path_match"]),
                "path_unmatch" not in tmpl or not fnmatch.fnmatchcase(path, tmpl["path_unmatch"]),
            ]
            if all(conds):
                mapped = copy.deepcopy(tmpl.get("mapping") or {})
                if json_type == "object" and "type" not in mapped:
                    mapped.setdefault("properties", {})
                return mapped
        if json_type == "object":
            return {"properties": {}}
        return dynamic_mapping(first)

    def vector_fields(self) -> dict[str, dict[str, Any]]:
        return {k: v for k, v in self.mappings.get("properties", {}).items() if v.get("type") == "knn_vector"}

    def refresh(self) -> None:
        self.searchable = dict(self.live)


# OpenSearch's names for what it refuses (Elasticsearch's "es_rejected_execution_exception" is not
# one of them): thread-pool rejections are 429 rejected_execution_exception (REFERENCE.md); a
# Serverless collection at its OCU limit answers 402 service_quota_exceeded_exception (public issue
# threads, REFERENCE.md).
FAULT_TYPES = {
    429: ("rejected_execution_exception", "rejected execution of coordinating operation"),
    402: ("service_quota_exceeded_exception", "Collection has reached its OCU limit"),
    503: ("unavailable", "injected failure"),
}


def _fault(status: int) -> tuple[str, str]:
    return FAULT_TYPES.get(status, ("unavailable" if status >= 500 else "illegal_argument_exception", "injected"))


@dataclass
class ItemFault:
    status: int = 429
    etype: str = "rejected_execution_exception"
    reason: str = "rejected execution of coordinating operation"


SERVERLESS_NO_ID = "Document ID is not supported in create/index operation request"
WRITE_BLOCK = "index [{}] blocked by: [FORBIDDEN/8/index write (api)];"


@dataclass
class Template:
    name: str
    patterns: list[str]
    priority: int
    template: dict[str, Any]


class OpenSearchStandIn(StandInServer):
    """``version`` is what ``GET /`` reports and decides which k-NN methods an index may use.

    ``serverless=True`` behaves as an OpenSearch Serverless vector collection (AWS
    serverless-genref.md, serverless-vector-search.md): documents get server-assigned ids (a request
    that names one is refused), there is no ``_refresh``, ``_delete_by_query`` or ``GET /``, the lucene
    engine and IVF are refused, and every request needs the permission the collection's data access
    policy grants: ``policy`` is that set of ``aoss:*`` permissions (403 otherwise)."""

    def __init__(
        self,
        *,
        refresh_interval: float | None = 1.0,
        serverless: bool = False,
        realtime: bool = False,
        version: str = "2.19.0",
        policy: frozenset[str] | set[str] = AOSS_ALL,
    ) -> None:
        super().__init__()
        self.serverless = serverless
        self.realtime = realtime  # every write is searchable at once (tests that are not about lag)
        self.version_number = version
        self.version = SERVERLESS_VERSION if serverless else parse_version(version)
        self.policy = frozenset(policy)
        self._next_id = 0
        self.indices: dict[str, Index] = {}
        self.templates: dict[str, Template] = {}
        self.item_faults: deque[ItemFault] = deque()
        self.request_faults: deque[tuple[int, str | None]] = deque()  # (status, path substring)
        self.faults_fired: list[tuple[int, str]] = []  # (status, path) of each injected fault answered
        self.denied: list[tuple[str, str, str]] = []  # Serverless: (permission, method, path) refused
        self.requests: list[tuple[str, str]] = []
        self.bulk_items: list[int] = []  # items per _bulk request
        self.bulk_bytes: list[int] = []  # body size of each _bulk request
        # Managed domains on small instance types refuse requests over 10 MiB (http.max_content_length)
        self.max_content_length = 10 * 1024 * 1024
        self._refresher: threading.Thread | None = None
        self.refresh_interval = refresh_interval

    def start(self, port: int = 0) -> Self:
        super().start(port)
        if self.refresh_interval:
            self._refresher = threading.Thread(target=self._auto_refresh, daemon=True)
            self._refresher.start()
        return self

    def _auto_refresh(self) -> None:
        while self._server is not None:
            time.sleep(self.refresh_interval or 1.0)
            with self.lock:
                for idx in self.indices.values():
                    idx.refresh()

    # test controls

    def fail_items(self, n: int, status: int = 429) -> None:
        etype, reason = _fault(status)
        with self.lock:
            self.item_faults.extend(ItemFault(status, etype, reason) for _ in range(n))

    def fail_requests(self, n: int, status: int = 503, path: str | None = None) -> None:
        with self.lock:
            self.request_faults.extend((status, path) for _ in range(n))

    def refresh_all(self) -> None:
        """Publish every write to search now (what the 1 s interval, or Serverless later, does)."""
        with self.lock:
            for idx in self.indices.values():
                idx.refresh()

    def docs(self, index: str) -> dict[str, dict[str, Any]]:
        with self.lock:
            idx = self.indices.get(index)
            return copy.deepcopy(idx.live) if idx else {}

    # dispatch

    def handle(self, req: Request) -> None:
        if len(req.body) > self.max_content_length:
            return req.send_json(413, {"Message": f"Request size exceeded {self.max_content_length} bytes"})
        with self.lock:
            self.requests.append((req.method, req.path))
            if req.path.endswith("/_bulk"):
                self.bulk_bytes.append(len(req.body))
            for i, (status, sub) in enumerate(self.request_faults):
                if sub is None or sub in req.path:
                    del self.request_faults[i]
                    self.faults_fired.append((status, req.path))
                    etype, reason = _fault(status)
                    return req.send_json(status, _err(etype, reason) | {"status": status})
        try:
            if self.serverless:
                self._authorize(req)
            status, payload = self._route(req)
        except Refused as exc:
            return req.send_json(exc.status, exc.body)
        if payload is None:
            return req.send_empty(status)
        req.send_json(status, payload)

    # Serverless data access policy (AWS serverless-genref.md: the permission each API needs)

    @staticmethod
    def _permission(method: str, parts: list[str]) -> str:
        if parts and parts[0] == "_index_template":
            return {
                "GET": "aoss:DescribeCollectionItems",
                "HEAD": "aoss:DescribeCollectionItems",
                "DELETE": "aoss:DeleteCollectionItems",
            }.get(method, "aoss:UpdateCollectionItems")
        if len(parts) == 1:
            return {"PUT": "aoss:CreateIndex", "DELETE": "aoss:DeleteIndex"}.get(method, "aoss:DescribeIndex")
        op = parts[-1] if parts[-1].startswith("_") else parts[1] if len(parts) > 1 else ""
        if op in ("_mapping", "_settings"):
            return "aoss:DescribeIndex" if method in ("GET", "HEAD") else "aoss:UpdateIndex"
        if op in ("_search", "_count", "_mget") or (op == "_doc" and method in ("GET", "HEAD")):
            return "aoss:ReadDocument"
        return "aoss:WriteDocument"

    def _authorize(self, req: Request) -> None:
        parts = [p for p in req.path.split("/") if p]
        if not parts:
            return
        needed = self._permission(req.method, parts)
        if needed not in self.policy:
            with self.lock:
                self.denied.append((needed, req.method, req.path))
            # OpenSearch Serverless' own 403 body, not OpenSearch's security_exception
            raise Refused(403, "Forbidden", "403 Forbidden")

    def _route(self, req: Request) -> tuple[int, Any]:
        parts = [p for p in req.path.split("/") if p]
        m = req.method
        if not parts:
            if self.serverless:  # not among the operations Serverless supports (serverless-genref.md)
                raise Refused(404, "not_found", f"no handler found for uri [{req.path}] and method [{m}]")
            return 200, {
                "version": {"number": self.version_number, "distribution": "opensearch"},
                "tagline": "The OpenSearch Project: https://opensearch.org/",
            }
        if parts[0] == "_index_template" and len(parts) == 2:
            return self._template(m, parts[1], req.json() if m in ("PUT", "POST") else None)
        if parts[-1] == "_bulk":
            return self._bulk(req, parts[0] if len(parts) == 2 else None)
        name = parts[0]
        if len(parts) == 1:
            if m == "HEAD":
                return (200 if name in self.indices else 404), None
            if m == "PUT":
                return self._create(name, req.json() or {})
            if m == "DELETE":
                with self.lock:
                    if self.indices.pop(name, None) is None:
                        raise Refused(404, "index_not_found_exception", f"no such index [{name}]", name)
                return 200, {"acknowledged": True}
        names = [n for n in name.split(",") if n]
        op = parts[1]
        if op == "_refresh":
            if self.serverless:
                raise Refused(404, "not_found", f"no handler found for uri [{req.path}] and method [{m}]")
            with self.lock:
                for n in names:
                    self._index(n).refresh()
            return 200, {"_shards": {"total": 1, "successful": 1, "failed": 0}}
        if op == "_doc" and m in ("PUT", "POST"):
            if self.serverless and len(parts) == 3:
                raise Refused(400, "illegal_argument_exception", SERVERLESS_NO_ID)
            self._check_id(parts[2] if len(parts) == 3 else None)
            with self.lock:
                if name not in self.indices:
                    self._auto_create(name)
        idx = self._index(name)
        if op == "_mapping" and m == "GET":
            return 200, {name: {"mappings": idx.mappings}}
        if op == "_mapping" and m in ("PUT", "POST"):
            return self._put_mapping(idx, req.json() or {})
        if op == "_settings":
            return self._settings(req, idx)
        if op == "_doc" and len(parts) == 3:
            return self._doc(req, idx, parts[2])
        if op == "_doc" and len(parts) == 2 and m == "POST":
            with self.lock:
                self._writable(idx)
                doc_id = self._new_id()
                self._put(idx, doc_id, req.json())
            return 201, {"_index": idx.name, "_id": doc_id, "result": "created"}
        if op == "_search":
            return 200, self._search(idx, req.json() or {})
        if op == "_count":
            body = req.json() or {}
            with self.lock:
                count = sum(1 for i, d in idx.searchable.items() if matches(body.get("query"), d, i, idx.mappings))
            return 200, {"count": count}
        if op == "_delete_by_query":
            if self.serverless:  # not among Serverless' supported operations (serverless-genref.md)
                raise Refused(404, "not_found", f"no handler found for uri [{req.path}] and method [{m}]")
            return 200, self._delete_by_query(idx, req)
        if op == "_update_by_query":  # see the "Updates" section at the end of this module
            if self.serverless:  # not among Serverless' supported operations (serverless-genref.md)
                raise Refused(404, "not_found", f"no handler found for uri [{req.path}] and method [{m}]")
            return 200, update_by_query(self, idx, req)
        raise Refused(400, "illegal_argument_exception", f"stand-in does not implement {m} {req.path}")

    def _new_id(self) -> str:
        self._next_id += 1
        return f"auto-{self._next_id:012d}"

    @staticmethod
    def _check_id(doc_id: str | None) -> None:
        if doc_id is not None and len(doc_id.encode()) > MAX_ID_BYTES:
            raise Refused(
                400,
                "action_request_validation_exception",
                f"Validation Failed: 1: id [{doc_id}] is too long, must be no longer than {MAX_ID_BYTES} "
                f"bytes but was: {len(doc_id.encode())};",
            )

    def _index(self, name: str) -> Index:
        idx = self.indices.get(name)
        if idx is None:
            raise Refused(404, "index_not_found_exception", f"no such index [{name}]", name)
        return idx

    # index templates (documentation-website _im-plugin/index-templates.md; API spec indices.put_index_template)

    def _template(self, method: str, name: str, body: Any) -> tuple[int, Any]:
        with self.lock:
            if method == "HEAD":
                return (200 if name in self.templates else 404), None
            if method == "GET":
                t = self.templates.get(name)
                if t is None:
                    raise Refused(404, "resource_not_found_exception", f"index template matching [{name}] not found")
                return 200, {"index_templates": [{"name": name, "index_template": self._template_body(t)}]}
            if method == "DELETE":
                if self.templates.pop(name, None) is None:
                    raise Refused(404, "index_template_missing_exception", f"index_template [{name}] missing")
                return 200, {"acknowledged": True}
        body = body or {}
        patterns = body.get("index_patterns")
        if isinstance(patterns, str):
            patterns = [patterns]
        if not patterns:
            raise Refused(
                400, "action_request_validation_exception", "Validation Failed: 1: index patterns are missing;"
            )
        priority = int(body.get("priority", 0))
        template = body.get("template") or {}
        # A template is validated as an index would be: a k-NN mapping it cannot create is refused now.
        self._validate_index(template.get("settings") or {}, template.get("mappings") or {})
        with self.lock:
            for other in self.templates.values():
                overlap = other.name != name and other.priority == priority
                if overlap and any(
                    _pattern_matches(a, b) or _pattern_matches(b, a) for a in patterns for b in other.patterns
                ):
                    raise Refused(
                        400,
                        "illegal_argument_exception",
                        f"index template [{name}] has index patterns {patterns} matching patterns from existing "
                        f"templates [{other.name}] with patterns ({other.name} => {other.patterns}) that have the "
                        f"same priority [{priority}], multiple index templates may not match during index "
                        "creation, please use a different priority",
                    )
            self.templates[name] = Template(name, list(patterns), priority, copy.deepcopy(template))
        return 200, {"acknowledged": True}

    @staticmethod
    def _template_body(t: Template) -> dict[str, Any]:
        return {"index_patterns": t.patterns, "priority": t.priority, "template": copy.deepcopy(t.template)}

    def _matching_template(self, name: str) -> Template | None:
        """The highest-priority template whose patterns match ``name`` (only one applies)."""
        found = [t for t in self.templates.values() if any(_pattern_matches(p, name) for p in t.patterns)]
        return max(found, key=lambda t: t.priority) if found else None

    # index management

    def _validate_method(self, fname: str, spec: dict[str, Any], knn_enabled: bool) -> None:
        def refuse(reason: str) -> None:
            raise Refused(400, "mapper_parsing_exception", f"Failed to parse mapping [_doc]: {reason}")

        dim = spec.get("dimension")
        if not isinstance(dim, int) or not 1 <= dim <= MAX_DIMENSION:
            refuse(f"Dimension value must be between 1 and {MAX_DIMENSION} for [{fname}]")
        method = spec.get("method") or {}
        engine = method.get("engine", "faiss")
        name = method.get("name", "hnsw")
        space = method.get("space_type", spec.get("space_type", "l2"))
        if engine not in SPACES_SINCE:
            refuse(f"Invalid engine type: {engine}")
        if self.version < ENGINE_SINCE[engine]:
            refuse(f"Invalid engine type: {engine}")
        if engine == "nmslib" and self.version >= NMSLIB_BLOCKED_FROM:
            refuse(
                "nmslib engine is deprecated in OpenSearch and cannot be used for new index creation in "
                "OpenSearch from 3.0.0."
            )
        if self.serverless and (engine == "lucene" or name == "ivf"):
            # AWS serverless-vector-search.md, "Limitations": no Lucene engine, no Faiss IVF/IVFPQ
            refuse(f"engine [{engine}] with method [{name}] is not supported by vector search collections")
        if name != "hnsw" and not (engine == "faiss" and name == "ivf"):
            refuse(f"Invalid method name: {name}")
        since = SPACES_SINCE[engine].get(space)
        if since is None or self.version < since:
            # k-NN AbstractKNNMethod.validate(), wrapped in a ValidationException
            refuse(
                f'Validation Failed: 1: "{name}" with "{engine}" configuration does not support space type: "{space}";'
            )
        if method and not knn_enabled:
            raise Refused(
                400, "illegal_argument_exception", "Cannot set method for knn_vector field when index.knn is false"
            )

    def _validate_index(self, settings: dict[str, Any], mappings: dict[str, Any]) -> None:
        knn_enabled = flat_settings(settings).get("index.knn") == "true"
        for fname, spec in mappings.get("properties", {}).items():
            if spec.get("type") == "knn_vector":
                self._validate_method(fname, spec, knn_enabled)

    def _create(self, name: str, body: dict[str, Any], *, auto: bool = False) -> tuple[int, Any]:
        with self.lock:
            if name in self.indices:
                raise Refused(400, "resource_already_exists_exception", f"index [{name}/x] already exists", name)
            tmpl = self._matching_template(name)
        base = tmpl.template if tmpl else {}
        settings = flat_settings(base.get("settings") or {}) | flat_settings(body.get("settings") or {})
        mappings = merge_mappings(base.get("mappings") or {}, body.get("mappings") or {})
        self._validate_index(settings, mappings)
        with self.lock:
            if name in self.indices:
                raise Refused(400, "resource_already_exists_exception", f"index [{name}/x] already exists", name)
            self.indices[name] = Index(name, mappings, settings, auto_created=auto)
        return 200, {"acknowledged": True, "shards_acknowledged": True, "index": name}

    def _auto_create(self, name: str) -> Index:
        """What a write to a missing index does (the Bulk API's ``timeout`` covers "automatic index
        creation"): the matching template's settings and mappings, else dynamic mappings only."""
        self._create(name, {}, auto=True)
        return self.indices[name]

    def _put_mapping(self, idx: Index, body: dict[str, Any]) -> tuple[int, Any]:
        """Fields may be added, never retyped; a knn_vector needs the index's (static) index.knn."""
        props = idx.mappings.get("properties", {})

        def kind(spec: dict[str, Any]) -> Any:
            return spec.get("type") or ("object" if "properties" in spec or not spec else None)

        for fname, spec in body.get("properties", {}).items():
            old = props.get(fname)
            if old is not None and kind(old) != kind(spec):
                raise Refused(
                    400,
                    "illegal_argument_exception",
                    f"mapper [{fname}] cannot be changed from type [{kind(old)}] to [{kind(spec)}]",
                )
        self._validate_index({k: v for k, v in idx.settings.items()}, {"properties": body.get("properties", {})})
        with self.lock:
            idx.mappings = merge_mappings(idx.mappings, body)
        return 200, {"acknowledged": True}

    def _settings(self, req: Request, idx: Index) -> tuple[int, Any]:
        if req.method == "GET":
            if req.query.get("flat_settings") == "true":
                return 200, {idx.name: {"settings": dict(idx.settings)}}
            nested: dict[str, Any] = {}
            for key, value in idx.settings.items():
                node = nested
                *path, last = key.split(".")
                for p in path:
                    node = node.setdefault(p, {})
                node[last] = value
            return 200, {idx.name: {"settings": nested}}
        with self.lock:
            idx.settings.update(flat_settings(req.json() or {}))
        return 200, {"acknowledged": True}

    @staticmethod
    def _writable(idx: Index) -> None:
        if idx.settings.get("index.blocks.write") == "true":
            raise Refused(403, "cluster_block_exception", WRITE_BLOCK.format(idx.name), idx.name)

    # documents

    def _validate_doc(self, idx: Index, doc: dict[str, Any]) -> None:
        for fname, spec in idx.vector_fields().items():
            if fname not in doc:
                continue
            vec = doc[fname]
            if not isinstance(vec, list) or len(vec) != spec["dimension"]:
                got = len(vec) if isinstance(vec, list) else type(vec).__name__
                raise Refused(
                    400,
                    "mapper_parsing_exception",
                    f"Vector dimension mismatch. Expected: {spec['dimension']}, Given: {got}",
                )
            space = (spec.get("method") or {}).get("space_type", spec.get("space_type", "l2"))
            if space == "cosinesimil" and not any(vec):
                raise Refused(400, "mapper_parsing_exception", "zero vector is not supported for cosinesimil")

    def _put(self, idx: Index, doc_id: str, doc: dict[str, Any]) -> str:
        self._writable(idx)
        self._validate_doc(idx, doc)
        idx.add_dynamic_fields(doc)
        created = doc_id not in idx.live
        idx.live[doc_id] = doc
        idx.seq += 1
        if self.realtime:
            idx.searchable[doc_id] = doc
        return "created" if created else "updated"

    def _drop(self, idx: Index, doc_id: str) -> bool:
        found = idx.live.pop(doc_id, None) is not None
        if self.realtime:
            idx.searchable.pop(doc_id, None)
        return found

    def _doc(self, req: Request, idx: Index, doc_id: str) -> tuple[int, Any]:
        with self.lock:
            if req.method == "GET":
                doc = idx.live.get(doc_id)
                if doc is None:
                    return 404, {"_index": idx.name, "_id": doc_id, "found": False}
                return 200, {"_index": idx.name, "_id": doc_id, "found": True, "_source": copy.deepcopy(doc)}
            if req.method in ("PUT", "POST"):
                if self.serverless:
                    raise Refused(400, "illegal_argument_exception", SERVERLESS_NO_ID)
                result = self._put(idx, doc_id, req.json())
                if req.query.get("refresh") in ("true", "wait_for", ""):
                    idx.refresh()
                return (201 if result == "created" else 200), {
                    "_index": idx.name,
                    "_id": doc_id,
                    "result": result,
                }
            if req.method == "DELETE":
                found = self._drop(idx, doc_id)
                return (200 if found else 404), {"_id": doc_id, "result": "deleted" if found else "not_found"}
        raise Refused(405, "method_not_allowed", req.method)

    def _bulk(self, req: Request, default_index: str | None) -> tuple[int, Any]:
        lines = [orjson.loads(line) for line in req.body.splitlines() if line.strip()]
        actions: list[tuple[str, dict[str, Any], dict[str, Any] | None]] = []
        i = 0
        while i < len(lines):
            ((op, meta),) = lines[i].items()
            i += 1
            source = None
            if op in ("index", "create", "update"):
                source = lines[i]
                i += 1
            if meta.get("_id") is not None:
                self._check_id(str(meta["_id"]))  # validated before any item runs: fails the request
            actions.append((op, meta, source))
        items: list[dict[str, Any]] = []
        touched: set[str] = set()
        with self.lock:
            for op, meta, source in actions:
                name = str(meta.get("_index", default_index))
                named = meta.get("_id") is not None
                doc_id = str(meta["_id"]) if named else self._new_id()
                result: dict[str, Any] = {"_index": name, "_id": doc_id}
                fault = self.item_faults.popleft() if self.item_faults else None
                try:
                    if fault:
                        self.faults_fired.append((fault.status, req.path))
                        raise Refused(fault.status, fault.etype, fault.reason, name)
                    if self.serverless and named and op in ("index", "create"):
                        raise Refused(400, "illegal_argument_exception", SERVERLESS_NO_ID, name)
                    if op == "delete":
                        idx = self._index(name)
                        found = self._drop(idx, doc_id)
                        result.update(status=200 if found else 404, result="deleted" if found else "not_found")
                    elif op == "update":  # see the "Updates" section at the end of this module
                        idx = self._index(name)
                        assert source is not None
                        status, outcome = bulk_update(self, idx, doc_id, source)
                        result.update(status=status, result=outcome)
                    else:
                        assert source is not None
                        idx = self.indices.get(name) or self._auto_create(name)
                        outcome = self._put(idx, doc_id, source)
                        result.update(status=201 if outcome == "created" else 200, result=outcome)
                    touched.add(name)
                except Refused as exc:
                    result.update(status=exc.status, error=exc.body["error"])
                items.append({op: result})
            if req.query.get("refresh") in ("true", "wait_for", ""):
                for n in touched:
                    self.indices[n].refresh()
            self.bulk_items.append(len(items))
        errors = any("error" in next(iter(it.values())) for it in items)
        return 200, {"took": 1, "errors": errors, "items": items}

    # search

    def _search(self, idx: Index, body: dict[str, Any]) -> dict[str, Any]:
        query = body.get("query") or {"match_all": {}}
        size = int(body.get("size", 10))
        with self.lock:
            docs = dict(idx.searchable)
            mappings = copy.deepcopy(idx.mappings)
        evaluator = Evaluator(mappings, docs)
        scored: list[tuple[float, str, dict[str, Any]]] = []
        if "knn" in query:
            ((fname, spec),) = query["knn"].items()
            field_spec = idx.vector_fields().get(fname)
            if field_spec is None:
                raise Refused(400, "query_shard_exception", f"Field '{fname}' is not knn_vector type.")
            vec = spec["vector"]
            if len(vec) != field_spec["dimension"]:
                raise Refused(
                    400,
                    "query_shard_exception",
                    f"Query vector has invalid dimension: {len(vec)}. Dimension should be: {field_spec['dimension']}",
                )
            space = (field_spec.get("method") or {}).get("space_type", "l2")
            if space == "cosinesimil" and not any(vec):
                raise Refused(400, "illegal_argument_exception", "zero vector is not supported for cosinesimil")
            flt = spec.get("filter")
            engine = (field_spec.get("method") or {}).get("engine", "faiss")
            if flt is not None and self.version < FILTER_SINCE.get(engine, (99, 0, 0)):
                raise Refused(400, "illegal_argument_exception", f"Engine [{engine.upper()}] does not support filters")
            for doc_id, doc in docs.items():
                if fname in doc and evaluator.score(flt, doc, doc_id) is not None:
                    scored.append((score(space, vec, doc[fname]), doc_id, doc))
            scored.sort(key=lambda t: -t[0])
            scored = scored[: int(spec["k"])]
        else:
            for doc_id, doc in docs.items():
                found = evaluator.score(query, doc, doc_id)
                if found is not None:
                    scored.append((found, doc_id, doc))
            scored.sort(key=lambda t: -t[0])  # stable: equal scores keep index order
        if body.get("min_score") is not None:  # search body min_score: drop hits scoring below it
            scored = [t for t in scored if t[0] >= float(body["min_score"])]
        sort_fields: list[str] = []
        if "sort" in body:  # keyword fields, each ascending (all the product asks for)
            for clause in body["sort"]:
                ((sort_field, order),) = clause.items()
                if (order if isinstance(order, str) else order.get("order", "asc")) != "asc":
                    raise Refused(400, "illegal_argument_exception", "stand-in sorts ascending only")
                sort_fields.append(sort_field)

            def sort_key(t: tuple[float, str, dict[str, Any]]) -> list[str]:
                return [str(t[2].get(f) or "") for f in sort_fields]

            scored.sort(key=sort_key)
            if "search_after" in body:
                after = [str(v) for v in body["search_after"]]
                scored = [t for t in scored if sort_key(t) > after]
        if "collapse" in body:
            seen: set[Any] = set()
            collapsed = []
            for s in scored:
                value = s[2].get(body["collapse"]["field"])
                if value not in seen:
                    seen.add(value)
                    collapsed.append(s)
            scored = collapsed
        hits = [
            {"_index": idx.name, "_id": i, "_score": s, "_source": self._project(d, body.get("_source"))}
            | ({"sort": [d.get(f) for f in sort_fields]} if sort_fields else {})
            for s, i, d in scored[:size]
        ]
        return {
            "took": 1,
            "timed_out": False,
            "hits": {
                "total": {"value": len(scored), "relation": "eq"},
                "max_score": hits[0]["_score"] if hits else None,
                "hits": hits,
            },
        }

    @staticmethod
    def _project(doc: dict[str, Any], source: Any) -> dict[str, Any]:
        if source is None or source is True:
            return copy.deepcopy(doc)
        if source is False:
            return {}
        if isinstance(source, list):
            return {k: copy.deepcopy(v) for k, v in doc.items() if k in source}
        excludes = set(source.get("excludes", []))
        includes = source.get("includes")
        return {k: copy.deepcopy(v) for k, v in doc.items() if k not in excludes and (not includes or k in includes)}

    def _delete_by_query(self, idx: Index, req: Request) -> dict[str, Any]:
        def delete(doc_id: str, seen: dict[str, Any]) -> None:
            del idx.live[doc_id]

        total, deleted, conflicts = by_query(self, idx, req, delete)
        return {
            "took": 1,
            "timed_out": False,
            "total": total,
            "deleted": deleted,
            "version_conflicts": conflicts,
            "failures": [],
        }


def by_query(
    server: OpenSearchStandIn, idx: Index, req: Request, act: Callable[[str, dict[str, Any]], None]
) -> tuple[int, int, int]:
    """The walk ``_delete_by_query`` and ``_update_by_query`` share: (matched, acted on, conflicts).

    Like OpenSearch, both match in the searchable snapshot, and a document changed since that
    snapshot is a version conflict, which aborts with 409 unless ``conflicts=proceed``
    (documentation-website api-reference/document-apis/delete-by-query.md, update-by-query.md)."""
    query = (req.json() or {}).get("query")
    with server.lock:
        targets = [(i, d) for i, d in idx.searchable.items() if matches(query, d, i, idx.mappings)]
        done = conflicts = 0
        for doc_id, seen in targets:
            if idx.live.get(doc_id) is seen:
                act(doc_id, seen)
                done += 1
            elif doc_id in idx.live:
                conflicts += 1
        if conflicts and req.query.get("conflicts") != "proceed":
            raise Refused(409, "version_conflict_engine_exception", f"{conflicts} version conflicts")
        if req.query.get("refresh") in ("true", ""):
            idx.refresh()
    return len(targets), done, conflicts


# Updates: a bulk ``update`` item and ``_update_by_query``, with a partial ``doc`` or a script.
# Documented behaviour (documentation-website api-reference/document-apis/update-document.md, bulk.md,
# update-by-query.md): an update of a missing document is a 404 ``document_missing_exception``; a
# partial ``doc`` is merged into the source (objects merged recursively); a script runs on
# ``ctx._source`` with ``params``. The stand-in runs only scripts made of assignments
# ``ctx._source.<field> = params.<name>`` (all the product sends) and refuses any other with 400,
# so a product change to its script fails a test here instead of passing unexecuted.

_ASSIGN = re.compile(r"\s*ctx\._source\.([A-Za-z_][A-Za-z0-9_]*)\s*=\s*params\.([A-Za-z_][A-Za-z0-9_]*)\s*")


def _deep_merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for k, v in over.items():
        out[k] = _deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else copy.deepcopy(v)
    return out


def apply_update(doc: dict[str, Any], body: dict[str, Any]) -> dict[str, Any]:
    """The new source of ``doc`` after an update ``body`` (a partial ``doc`` or a ``script``)."""
    if "script" in body:
        script = body["script"]
        source = script if isinstance(script, str) else script.get("source", "")
        params = {} if isinstance(script, str) else script.get("params") or {}
        if not isinstance(script, str) and script.get("lang", "painless") != "painless":
            raise Refused(400, "illegal_argument_exception", f"script_lang not supported [{script.get('lang')}]")
        out = copy.deepcopy(doc)
        for statement in (s for s in source.split(";") if s.strip()):
            m = _ASSIGN.fullmatch(statement)
            if m is None:
                raise Refused(400, "illegal_argument_exception", f"stand-in cannot run script [{source}]")
            if m.group(2) not in params:
                raise Refused(400, "script_exception", f"runtime error: params.{m.group(2)} is not defined")
            out[m.group(1)] = copy.deepcopy(params[m.group(2)])
        return out
    if "doc" in body:
        return _deep_merge(doc, body["doc"])
    raise Refused(400, "action_request_validation_exception", "Validation Failed: 1: script or doc is missing;")


def bulk_update(server: OpenSearchStandIn, idx: Index, doc_id: str, body: dict[str, Any]) -> tuple[int, str]:
    """One bulk ``update`` item (the caller holds the lock and records a Refused as the item's error)."""
    current = idx.live.get(doc_id)
    if current is None:
        raise Refused(404, "document_missing_exception", f"[{doc_id}]: document missing", idx.name)
    updated = apply_update(current, body)
    server._put(idx, doc_id, updated)
    return 200, "updated"


def update_by_query(server: OpenSearchStandIn, idx: Index, req: Request) -> dict[str, Any]:
    """Each match's source updated by the request's partial ``doc`` or script (see ``by_query``)."""
    body = req.json() or {}

    def update(doc_id: str, seen: dict[str, Any]) -> None:
        server._put(idx, doc_id, apply_update(seen, body))

    total, updated, conflicts = by_query(server, idx, req, update)
    return {
        "took": 1,
        "timed_out": False,
        "total": total,
        "updated": updated,
        "version_conflicts": conflicts,
        "noops": 0,
        "failures": [],
    }


def main() -> None:  # pragma: no cover - used by the local demo
    import argparse

    parser = argparse.ArgumentParser(description="OpenSearch k-NN stand-in on loopback")
    parser.add_argument("--port", type=int, default=8802)
    parser.add_argument("--version", default="2.19.0", help="the OpenSearch version to behave as")
    parser.add_argument("--serverless", action="store_true", help="behave as a Serverless vector collection")
    args = parser.parse_args()
    server = OpenSearchStandIn(version=args.version, serverless=args.serverless).start(args.port)
    print(f"OpenSearch stand-in on {server.url}", flush=True)
    threading.Event().wait()


if __name__ == "__main__":  # pragma: no cover
    main()
