"""A loopback stand-in for the OpenSearch REST calls this product makes.

No OpenSearch server installs from the reachable registries, so this implements exactly:
index exists/create/delete/get-mapping (validating a k-NN mapping as the k-NN plugin does),
``_bulk`` with per-item results, ``_doc`` get/index, ``_search`` (``knn`` with efficient
``filter``, ``term``/``terms``/``prefix``/``bool``/``match_all``, ``collapse``), ``_count``,
``_delete_by_query`` and ``_refresh``. Like OpenSearch it is near-real-time: searches see only
what a refresh (explicit, ``?refresh=true``, or the 1 s interval) has published, while ``GET
_doc`` is real-time. Scores follow the k-NN documentation's table for each space:
cosinesimil ``(2 - d) / 2`` with ``d = 1 - cos``; l2 ``1 / (1 + d)``; innerproduct as documented.
"""

from __future__ import annotations

import copy
import math
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Self

import orjson

from standins.base import Request, StandInServer

ENGINE_SPACES = {
    "faiss": {"l2", "innerproduct", "cosinesimil"},
    "lucene": {"l2", "innerproduct", "cosinesimil"},
}
MAX_DIMENSION = 16000


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


def matches(query: dict[str, Any] | None, doc: dict[str, Any], doc_id: str) -> bool:
    """The query-DSL subset the product sends."""
    if not query:
        return True
    ((kind, spec),) = query.items()
    if kind == "match_all":
        return True
    if kind == "bool":
        musts = _as_list(spec.get("must")) + _as_list(spec.get("filter"))
        if not all(matches(q, doc, doc_id) for q in musts):
            return False
        if any(matches(q, doc, doc_id) for q in _as_list(spec.get("must_not"))):
            return False
        shoulds = _as_list(spec.get("should"))
        return not shoulds or any(matches(q, doc, doc_id) for q in shoulds)
    if kind == "ids":
        return doc_id in spec["values"]
    ((fname, value),) = spec.items()
    actual = doc.get(fname)
    if isinstance(value, dict) and "value" in value:
        value = value["value"]
    if kind == "term":
        return bool(actual == value)
    if kind == "terms":
        return actual in value
    if kind == "prefix":
        return isinstance(actual, str) and actual.startswith(value)
    if kind == "range":
        if actual is None:
            return False
        checks = {
            "lt": lambda b: actual < b,
            "lte": lambda b: actual <= b,
            "gt": lambda b: actual > b,
            "gte": lambda b: actual >= b,
        }
        return all(checks[op](bound) for op, bound in value.items() if op in checks)
    raise Refused(400, "parsing_exception", f"unknown query [{kind}]")


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

    def vector_fields(self) -> dict[str, dict[str, Any]]:
        return {k: v for k, v in self.mappings.get("properties", {}).items() if v.get("type") == "knn_vector"}

    def refresh(self) -> None:
        self.searchable = dict(self.live)


@dataclass
class ItemFault:
    status: int = 429
    etype: str = "es_rejected_execution_exception"
    reason: str = "rejected execution of coordinating operation"


SERVERLESS_NO_ID = "Document ID is not supported in create/index operation request"


class OpenSearchStandIn(StandInServer):
    """``serverless=True`` behaves as an OpenSearch Serverless vector collection: documents get
    server-assigned ids (a request that names one is refused, as AOSS refuses it), and ``_refresh``
    is not exposed (404). ``_delete_by_query`` is refused too: the product must not depend on it."""

    def __init__(
        self, *, refresh_interval: float | None = 1.0, serverless: bool = False, realtime: bool = False
    ) -> None:
        super().__init__()
        self.serverless = serverless
        self.realtime = realtime  # every write is searchable at once (tests that are not about lag)
        self._next_id = 0
        self.indices: dict[str, Index] = {}
        self.item_faults: deque[ItemFault] = deque()
        self.request_faults: deque[tuple[int, str | None]] = deque()  # (status, path substring)
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
        with self.lock:
            self.item_faults.extend(ItemFault(status=status) for _ in range(n))

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
                    etype = "too_many_requests" if status == 429 else "unavailable"
                    return req.send_json(status, _err(etype, "injected failure") | {"status": status})
        try:
            status, payload = self._route(req)
        except Refused as exc:
            return req.send_json(exc.status, exc.body)
        if payload is None:
            return req.send_empty(status)
        req.send_json(status, payload)

    def _route(self, req: Request) -> tuple[int, Any]:
        parts = [p for p in req.path.split("/") if p]
        m = req.method
        if not parts:
            return 200, {"version": {"number": "2.19.0", "distribution": "opensearch"}, "tagline": "stand-in"}
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
        idx = self._index(name)
        if op == "_mapping" and m == "GET":
            return 200, {name: {"mappings": idx.mappings}}
        if op == "_doc" and len(parts) == 3:
            return self._doc(req, idx, parts[2])
        if op == "_doc" and len(parts) == 2 and m == "POST":
            with self.lock:
                doc_id = self._new_id()
                self._put(idx, doc_id, req.json())
            return 201, {"_index": idx.name, "_id": doc_id, "result": "created"}
        if op == "_search":
            return 200, self._search(idx, req.json() or {})
        if op == "_count":
            body = req.json() or {}
            with self.lock:
                count = sum(1 for i, d in idx.searchable.items() if matches(body.get("query"), d, i))
            return 200, {"count": count}
        if op == "_delete_by_query":
            if self.serverless:
                raise Refused(400, "illegal_argument_exception", "stand-in Serverless mode: _delete_by_query refused")
            return 200, self._delete_by_query(idx, req)
        raise Refused(400, "illegal_argument_exception", f"stand-in does not implement {m} {req.path}")

    def _new_id(self) -> str:
        self._next_id += 1
        return f"auto-{self._next_id:012d}"

    def _index(self, name: str) -> Index:
        idx = self.indices.get(name)
        if idx is None:
            raise Refused(404, "index_not_found_exception", f"no such index [{name}]", name)
        return idx

    # index management

    def _create(self, name: str, body: dict[str, Any]) -> tuple[int, Any]:
        if name in self.indices:
            raise Refused(400, "resource_already_exists_exception", f"index [{name}/x] already exists", name)
        settings = body.get("settings", {})
        flat = settings.get("index", settings)
        knn_enabled = str(flat.get("knn", settings.get("index.knn", False))).lower() == "true"
        mappings = body.get("mappings", {})
        for fname, spec in mappings.get("properties", {}).items():
            if spec.get("type") != "knn_vector":
                continue
            dim = spec.get("dimension")
            if not isinstance(dim, int) or not 1 <= dim <= MAX_DIMENSION:
                raise Refused(
                    400,
                    "mapper_parsing_exception",
                    f"Dimension value must be between 1 and {MAX_DIMENSION} for [{fname}]",
                )
            method = spec.get("method") or {}
            engine = method.get("engine", "faiss")
            space = method.get("space_type", spec.get("space_type", "l2"))
            if engine == "nmslib":
                raise Refused(
                    400,
                    "mapper_parsing_exception",
                    "nmslib engine is deprecated; creating new indices with it is blocked. Use faiss or lucene",
                )
            if engine not in ENGINE_SPACES:
                raise Refused(400, "mapper_parsing_exception", f"Invalid engine type: {engine}")
            if space not in ENGINE_SPACES[engine]:
                raise Refused(400, "mapper_parsing_exception", f"Unsupported space type {space} for engine {engine}")
            if method and method.get("name") != "hnsw" and not (engine == "faiss" and method.get("name") == "ivf"):
                raise Refused(400, "mapper_parsing_exception", f"Invalid method name: {method.get('name')}")
            if method and not knn_enabled:
                raise Refused(
                    400,
                    "illegal_argument_exception",
                    "Cannot set method for knn_vector field when index.knn is false",
                )
        with self.lock:
            self.indices[name] = Index(name, mappings, settings)
        return 200, {"acknowledged": True, "shards_acknowledged": True, "index": name}

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
        self._validate_doc(idx, doc)
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
        items: list[dict[str, Any]] = []
        i = 0
        touched: set[str] = set()
        with self.lock:
            while i < len(lines):
                ((op, meta),) = lines[i].items()
                i += 1
                source = None
                if op in ("index", "create", "update"):
                    source = lines[i]
                    i += 1
                name = meta.get("_index", default_index)
                named = meta.get("_id") is not None
                doc_id = str(meta["_id"]) if named else self._new_id()
                result: dict[str, Any] = {"_index": name, "_id": doc_id}
                fault = self.item_faults.popleft() if self.item_faults else None
                try:
                    if fault:
                        raise Refused(fault.status, fault.etype, fault.reason, name)
                    if self.serverless and named and op in ("index", "create"):
                        raise Refused(400, "illegal_argument_exception", SERVERLESS_NO_ID, name)
                    idx = self._index(name)
                    touched.add(name)
                    if op == "delete":
                        found = self._drop(idx, doc_id)
                        result.update(status=200 if found else 404, result="deleted" if found else "not_found")
                    else:
                        assert source is not None
                        outcome = self._put(idx, doc_id, source)
                        result.update(status=201 if outcome == "created" else 200, result=outcome)
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
            for doc_id, doc in docs.items():
                if fname in doc and matches(flt, doc, doc_id):
                    scored.append((score(space, vec, doc[fname]), doc_id, doc))
            scored.sort(key=lambda t: -t[0])
            scored = scored[: int(spec["k"])]
        else:
            scored = [(1.0, i, d) for i, d in docs.items() if matches(query, d, i)]
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
        query = (req.json() or {}).get("query")
        with self.lock:
            targets = [(i, d) for i, d in idx.searchable.items() if matches(query, d, i)]
            deleted = conflicts = 0
            for doc_id, seen in targets:
                # Like OpenSearch: a document changed since the searched snapshot is a version conflict.
                if idx.live.get(doc_id) is seen:
                    del idx.live[doc_id]
                    deleted += 1
                elif doc_id in idx.live:
                    conflicts += 1
            if conflicts and req.query.get("conflicts") != "proceed":
                raise Refused(409, "version_conflict_engine_exception", f"{conflicts} version conflicts")
            if req.query.get("refresh") in ("true", ""):
                idx.refresh()
        return {
            "took": 1,
            "timed_out": False,
            "total": len(targets),
            "deleted": deleted,
            "version_conflicts": conflicts,
            "failures": [],
        }


def main() -> None:  # pragma: no cover - used by the local demo
    import argparse

    parser = argparse.ArgumentParser(description="OpenSearch k-NN stand-in on loopback")
    parser.add_argument("--port", type=int, default=8802)
    args = parser.parse_args()
    server = OpenSearchStandIn().start(args.port)
    print(f"OpenSearch stand-in on {server.url}", flush=True)
    threading.Event().wait()


if __name__ == "__main__":  # pragma: no cover
    main()
