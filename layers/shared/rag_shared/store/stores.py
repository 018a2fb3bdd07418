"""The store kinds: :class:`VectorStore` for a managed domain, :class:`ServerlessStore` for an
OpenSearch Serverless collection. Chunk writes, cleanup, search of committed versions, index setup."""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, ClassVar, Literal, TypeVar

from opensearchpy import OpenSearch, helpers
from opensearchpy.exceptions import ConnectionError as OSConnectionError
from opensearchpy.exceptions import ConnectionTimeout, NotFoundError, TransportError

from rag_shared.commits import CommitStore, visible
from rag_shared.config import Settings
from rag_shared.errors import BulkWriteError, IndexMappingError, StoreError
from rag_shared.store.client import make_client
from rag_shared.store.documents import SPACE, VECTOR_FIELD, ChunkDoc, SearchFilter, SearchHit, SearchType
from rag_shared.store.fusion import rrf
from rag_shared.store.group import GroupRunner
from rag_shared.store.mapping import (
    GUARD,
    TEMPLATE_PRIORITY,
    choose_engine,
    has_metadata_mapping,
    index_body,
    index_lost,
    index_template,
    metadata_mapping,
    parse_version,
)
from rag_shared.store.queries import SearchResult, check_search, cosine_score, keyword_query, to_hit

log = logging.getLogger(__name__)
T = TypeVar("T")

# 429 is OpenSearch's rejected_execution_exception (a full thread pool); 402 is OpenSearch Serverless'
# service_quota_exceeded_exception, a collection at its OCU limit until it scales (REFERENCE.md).
_RETRY_STATUS = {402, 429, 502, 503, 504}
BULK_DOCS = 500
# A 1536-float vector is ~35 KB of JSON, so 500 of them would be ~17 MB: over the 10 MiB request
# limit (http.max_content_length) of small managed-domain instance types. Keep each request under it.
BULK_BYTES = 8 * 1024 * 1024
# Content hashes one shared cache lookup asks for (its result size; under the index's default
# max_result_window of 10,000: OpenSearch docs, "Paginate results").
LOOKUP_HASHES = 1000
# Replaces a chunk's whole ``metadata`` object (a partial ``doc`` update would merge objects and keep
# attributes the sidecar no longer has). Painless, the default script language (OpenSearch docs,
# api-reference/document-apis/update-by-query and update-document: ``ctx._source``, ``params``).
SET_METADATA = "ctx._source.metadata = params.metadata"


class BulkItemsRejected(BulkWriteError):
    """OpenSearch refused some bulk items for good (a mapping error, an id too long): ``ids``."""

    def __init__(self, ids: list[str], message: str) -> None:
        super().__init__(message)
        self.ids = ids


class VectorStore:
    """A managed OpenSearch domain: our own document ids, refresh, delete-by-query."""

    serverless: ClassVar[bool] = False
    # Whether a delete can miss a write made just before (so a delayed sweep should follow)
    needs_sweep: ClassVar[bool] = False
    # Reads fetch this many times ``k`` hits, so that enough remain after dropping uncommitted ones
    OVERFETCH: ClassVar[int] = 3

    def __init__(
        self,
        client: OpenSearch,
        index: str,
        dimensions: int,
        *,
        engine: Literal["faiss", "lucene"] = "lucene",
        commits: CommitStore | None = None,
        max_attempts: int = 5,
        backoff_seconds: float = 0.5,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.client = client
        self.index = index
        self.dimensions = dimensions
        self.engine = engine
        self.commits = commits
        self.max_attempts = max_attempts
        self.backoff_seconds = backoff_seconds
        self._sleep = sleep
        self._ready = False
        self.resets = 0  # times this store found its index gone mid-write and created it again
        # Concurrent records (the indexer's threads) share requests: a refresh, bulk writes of
        # several small files, cache lookups (group commit, see rag_shared.store.group).
        self._refresher: GroupRunner[None, None] = GroupRunner(self._refresh_group)
        self._writer: GroupRunner[list[dict[str, Any]], list[str]] = GroupRunner(
            self._write_group, max_weight=BULK_DOCS, weight=len
        )
        self._lookup: GroupRunner[list[str], dict[str, list[float]]] = GroupRunner(
            self._lookup_group, max_weight=LOOKUP_HASHES, weight=len
        )

    @classmethod
    def from_settings(
        cls, settings: Settings, client: OpenSearch | None = None, commits: CommitStore | None = None
    ) -> VectorStore:
        """The store kind ``OPENSEARCH_SERVICE`` names, reading commits from ``COMMIT_TABLE``."""
        kind = ServerlessStore if settings.opensearch_service == "aoss" else VectorStore
        return kind(
            client or make_client(settings),
            settings.opensearch_index,
            settings.dimensions,
            engine=settings.opensearch_engine,
            commits=commits or CommitStore.from_settings(settings),
        )

    # retries

    def _delay(self, attempt: int) -> float:
        base: float = min(self.backoff_seconds * 2 ** (attempt - 1), 20.0)
        return base * (0.75 + random.random() / 4)  # noqa: S311 - jitter, not crypto

    def _retry(self, what: str, fn: Callable[[], T]) -> T:
        """Run ``fn``, retrying throttling, 5xx and connection failures with backoff and jitter."""
        for attempt in range(1, self.max_attempts + 1):
            try:
                return fn()
            except NotFoundError:
                raise  # a missing index or document is an answer, not a failure
            except (OSConnectionError, ConnectionTimeout) as exc:
                if attempt == self.max_attempts:
                    raise StoreError(f"OpenSearch {what} failed: cannot connect ({type(exc).__name__})") from None
            except TransportError as exc:
                status = exc.status_code if isinstance(exc.status_code, int) else 0
                if status not in _RETRY_STATUS or attempt == self.max_attempts:
                    raise StoreError(f"OpenSearch {what} failed: {status} {exc.error}") from None
            log.warning("OpenSearch %s failed, retrying", what, extra={"attempt": attempt})
            self._sleep(self._delay(attempt))
        raise AssertionError("unreachable")

    # index management

    def ensure_index(self) -> None:
        """Make the chunk index usable before the first write, and refuse one built for another vector
        size or similarity. In order: read the version (a domain; Serverless has no ``GET /``) to choose
        the engine, install the index template (so a write to a missing index cannot create it with
        dynamic mappings), adopt a chunk index that a write re-created under the template's guard,
        create it if missing, and check the mapping. Never deletes an index: the Serverless data
        access policy grants no aoss:DeleteIndex. A lost index needs no reset here: commit records
        live in DynamoDB and the backfill re-indexes a file whose committed chunks are not all there."""
        if self._ready:
            return
        engine = self.engine_for_cluster()
        chunk_body = index_body(self.dimensions, engine, serverless=self.serverless)
        self._put_template(self.index, index_template(self.index, chunk_body, guard=True))
        exists = self._retry("index exists", lambda: self.client.indices.exists(index=self.index))
        if exists and self._guarded():  # adopt it: the template gave it every setting and field but the vector
            log.warning("chunk index %s was re-created by a write; adding its k-NN field", self.index)
            mapping = chunk_body["mappings"]
            body = {"dynamic": mapping["dynamic"], "properties": {VECTOR_FIELD: mapping["properties"][VECTOR_FIELD]}}
            self._retry("adopt index", lambda: self.client.indices.put_mapping(index=self.index, body=body))
        if not exists:
            try:
                self._create(self.index, chunk_body)
                log.info("created index %s", self.index)
            except StoreError as exc:
                if "resource_already_exists" not in str(exc):  # another instance won the race
                    raise
        self._check_mapping()
        self._ready = True

    def _ensure_metadata_mapping(self, mappings: dict[str, Any]) -> None:
        """An index created before metadata filters gets their dynamic templates in place."""
        if has_metadata_mapping(mappings):
            return
        log.info("adding metadata dynamic templates to index %s", self.index)
        body = metadata_mapping()
        try:
            self._retry("add metadata mapping", lambda: self.client.indices.put_mapping(index=self.index, body=body))
        except StoreError as exc:  # indexing still works; metadata strings then map as text + keyword
            log.warning("could not add the metadata dynamic templates to %s: %s", self.index, exc)

    def engine_for_cluster(self) -> str:
        """The engine a new chunk index gets on this cluster (see :func:`choose_engine`)."""
        if self.serverless:
            return choose_engine(None, self.engine, serverless=True)
        info = self._retry("read version", lambda: self.client.info())
        version = info.get("version", {}) if isinstance(info, dict) else {}
        if version.get("distribution") != "opensearch":
            raise StoreError(
                f"OPENSEARCH_URL answers as {version.get('distribution') or 'Elasticsearch'} "
                f"{version.get('number')}, not OpenSearch; point it at an OpenSearch 2.x/3.x domain"
            )
        number = parse_version(str(version.get("number", "0.0")))
        if number[0] == 7:
            # A domain in compatibility mode reports 7.10.2 whatever it runs: lucene, valid on all 2.4+.
            log.info("OpenSearch reports version %s (compatibility mode); using lucene", version.get("number"))
            return "lucene"
        return choose_engine(number, self.engine, serverless=False)

    def _put_template(self, name: str, body: dict[str, Any]) -> None:
        try:
            self._retry("put index template", lambda: self.client.indices.put_index_template(name=name, body=body))
        except StoreError as exc:
            raise StoreError(
                f"{exc}; the store installs index template {name!r} so that a write to a missing index "
                "cannot create it without its k-NN mapping. Grant the role that (OpenSearch Serverless: "
                "aoss:CreateCollectionItems and aoss:UpdateCollectionItems; a domain with fine-grained "
                "access control: indices:admin/index_template/put), or remove a template of the same "
                f"priority {TEMPLATE_PRIORITY} matching this name"
            ) from None

    def _guarded(self) -> bool:
        """Was the chunk index created by a write, from the template's guard, not by this store?"""
        mapping = self._retry("get mapping", lambda: self.client.indices.get_mapping(index=self.index))
        for entry in mapping.values():
            mappings = entry.get("mappings", {})
            return bool(mappings.get("dynamic") == GUARD and VECTOR_FIELD not in mappings.get("properties", {}))
        return False

    def _create(self, name: str, body: dict[str, Any]) -> None:
        try:
            self._retry("create index", lambda: self.client.indices.create(index=name, body=body))
            log.info("created index %s", name)
        except StoreError as exc:
            if "resource_already_exists" not in str(exc):  # another instance won the race
                raise

    def _check_mapping(self) -> None:
        mapping = self._retry("get mapping", lambda: self.client.indices.get_mapping(index=self.index))
        mappings = next(iter(mapping.values()))["mappings"]
        props = mappings.get("properties", {})
        field = props.get(VECTOR_FIELD)
        where = "in the collection's console or with an admin role" if self.serverless else f"(DELETE /{self.index})"
        fix = f"set OPENSEARCH_INDEX to a new name, or delete the index {where}; then run the backfill"
        if not field or field.get("type") != "knn_vector":
            found = f"a {field.get('type')!r} field" if field else "no field"
            raise IndexMappingError(
                f"index {self.index} has {found} {VECTOR_FIELD!r} where a knn_vector is needed (was it created "
                f"by a write, with dynamic mappings, before this service created it?); {fix}"
            )
        if int(field.get("dimension", 0)) != self.dimensions:
            raise IndexMappingError(
                f"index {self.index} holds {field.get('dimension')}-dimensional vectors but the embedding model "
                f"produces {self.dimensions}; {fix}"
            )
        space = (field.get("method") or {}).get("space_type") or field.get("space_type")
        if space and space != SPACE:
            raise IndexMappingError(f"index {self.index} uses space {space!r}; this service needs {SPACE!r}; {fix}")
        self._ensure_metadata_mapping(mappings)

    def refresh(self) -> None:
        """Make every write completed before this call searchable. Threads calling at once share one
        refresh that starts after all their calls (Refresh index API: it makes the operations
        performed since the last refresh available for search; OpenSearch docs, api-reference/index-apis/refresh)."""
        self._refresher(None)

    def _refresh_group(self, items: Sequence[None]) -> list[None]:
        self._retry("refresh", lambda: self.client.indices.refresh(index=self.index))
        return [None] * len(items)

    # writes

    def _action(self, doc: ChunkDoc) -> dict[str, Any]:
        return {"_op_type": "index", "_index": self.index, "_id": doc.id, "_source": doc.body()}

    def write_chunks(self, docs: Sequence[ChunkDoc]) -> list[str]:
        """Bulk-index; items that fail transiently are retried alone, with backoff. Returns the ids
        written. Concurrent callers share bulk requests (:meth:`_write_group`)."""
        return self._writer([self._action(d) for d in docs])

    def _write_group(self, groups: Sequence[list[dict[str, Any]]]) -> list[list[str] | BaseException]:
        """One bulk for the actions of several callers. Items rejected for good fail only the callers
        that sent them; the others' actions are sent again on their own (indexing by our own id is
        idempotent). Any other failure (after the bulk's retries) reaches every caller in it."""
        if len(groups) == 1:
            return [self._bulk(groups[0])]
        try:
            self._bulk([a for g in groups for a in g])
            return [[str(a["_id"]) for a in g] for g in groups]
        except BulkItemsRejected as exc:
            rejected = set(exc.ids)
            answers: list[list[str] | BaseException] = []
            for g in groups:
                if any(str(a.get("_id")) in rejected for a in g):
                    answers.append(BulkItemsRejected(exc.ids, str(exc)))
                    continue
                try:
                    answers.append(self._bulk(g))
                except Exception as alone:  # this caller's own failure, raised to it
                    answers.append(alone)
            return answers

    def _bulk(self, actions: list[dict[str, Any]]) -> list[str]:
        """Send ``actions`` in requests of at most BULK_DOCS / BULK_BYTES; returns the ids done.
        Results are matched to actions by position (server-assigned ids cannot be matched by id);
        an item that failed transiently, or was never answered because the connection failed, is
        sent again alone."""
        done: list[str] = []
        pending = list(actions)
        for attempt in range(1, self.max_attempts + 1):
            if not pending:
                break
            answered: list[tuple[bool, dict[str, Any]]] = []
            try:
                for ok, item in helpers.streaming_bulk(
                    self.client,
                    pending,
                    chunk_size=BULK_DOCS,
                    max_chunk_bytes=BULK_BYTES,
                    raise_on_error=False,
                    raise_on_exception=True,
                    max_retries=0,
                ):
                    answered.append((ok, item))
            except (OSConnectionError, ConnectionTimeout) as exc:
                log.warning("bulk request failed (%s)", type(exc).__name__, extra={"attempt": attempt})
            except TransportError as exc:
                status = exc.status_code if isinstance(exc.status_code, int) else 0
                if status not in _RETRY_STATUS:
                    raise BulkWriteError(f"OpenSearch rejected a bulk request: {status} {exc.error}") from None
                log.warning("bulk request throttled (%s)", status, extra={"attempt": attempt})
            failed: list[dict[str, Any]] = pending[len(answered) :]  # never answered: send again
            fatal: list[str] = []
            index_missing = False
            for action, (ok, item) in zip(pending, answered, strict=False):
                ((op, result),) = item.items()
                status = int(result.get("status", 0))
                # a delete of what is gone is done; so is an update of it (a metadata update racing
                # the cleanup of a superseded version: there is nothing left to update)
                if ok or (op in ("delete", "update") and status == 404):
                    done.append(str(result.get("_id", action.get("_id", ""))))
                    continue
                error = result.get("error")
                if isinstance(error, dict) and index_lost(error):
                    index_missing = True  # deleted under a warm container: recreate it, retry the items
                    failed.append(action)
                elif status in _RETRY_STATUS or status >= 500:
                    failed.append(action)
                else:
                    reason = error.get("reason", "") if isinstance(error, dict) else ""
                    fatal.append(f"{result.get('_id', '?')}: {status} {reason}")
            if fatal:
                ids = [f.split(":", 1)[0] for f in fatal]
                raise BulkItemsRejected(ids, f"{len(fatal)} bulk items rejected: {fatal[:3]}")
            if index_missing:
                log.warning("index %s disappeared; creating it again", self.index)
                self.resets += 1  # what was written before is gone: the writer must not commit
                self._ready = False
                self.ensure_index()
            pending = failed
            if pending and attempt < self.max_attempts:
                log.warning("retrying %d failed bulk items", len(pending), extra={"attempt": attempt})
                self._sleep(self._delay(attempt))
        if pending:
            raise BulkWriteError(f"{len(pending)} bulk items still failing after {self.max_attempts} attempts")
        return done

    def _delete_query(self, query: dict[str, Any]) -> int:
        self.refresh()  # delete-by-query sees only refreshed documents
        result = self._retry(
            "delete by query",
            lambda: self.client.delete_by_query(
                index=self.index,
                body={"query": query},
                params={"conflicts": "proceed", "refresh": "true"},
            ),
        )
        if result.get("failures"):
            raise StoreError(f"delete of chunks had failures: {result['failures'][:2]}")
        return int(result.get("deleted", 0))

    def delete_chunks(
        self, key: str, *, upto_seq: str | None = None, except_version: str | None = None, version: str | None = None
    ) -> int:
        """Delete chunks of ``key``: those of events up to ``upto_seq`` (normalized sequencer) except
        the version ``except_version`` (cleanup after a commit: never the committed version, never a
        later event's write in progress), or those of one ``version`` (an attempt that lost)."""
        clauses: list[dict[str, Any]] = [{"term": {"source_key": key}}]
        if upto_seq is not None:
            clauses.append({"range": {"source_seq": {"lte": upto_seq}}})
        if version is not None:
            clauses.append({"term": {"version": version}})
        query: dict[str, Any] = {"bool": {"filter": clauses}}
        if except_version is not None:
            query["bool"]["must_not"] = [{"term": {"version": except_version}}]
        return self._delete_query(query)

    def update_metadata(self, key: str, version: str, metadata: Mapping[str, Any]) -> int:
        """Set the ``metadata`` of every chunk of ``key``'s ``version`` (a sidecar changed: no
        re-embedding). Idempotent: it assigns, so repeating it, or two runs with the same value,
        converge. ``_update_by_query`` with ``conflicts=proceed`` skips a chunk another update
        changed meanwhile, which might leave the *other* value: so it runs again until a run meets
        no conflict. Returns the chunks updated by the last run."""
        query = {"bool": {"filter": [{"term": {"source_key": key}}, {"term": {"version": version}}]}}
        body = {
            "query": query,
            "script": {"lang": "painless", "source": SET_METADATA, "params": {"metadata": dict(metadata)}},
        }
        for attempt in range(1, self.max_attempts + 1):
            self.refresh()  # update-by-query sees only refreshed documents
            result = self._retry(
                "update metadata",
                lambda: self.client.update_by_query(
                    index=self.index, body=body, params={"conflicts": "proceed", "refresh": "true"}
                ),
            )
            if result.get("failures"):
                raise StoreError(f"metadata update of chunks had failures: {result['failures'][:2]}")
            if not result.get("version_conflicts"):
                return int(result.get("updated", 0))
            log.warning("metadata update met version conflicts; running it again", extra={"attempt": attempt})
            self._sleep(self._delay(attempt))
        raise StoreError(f"metadata update of {key!r} still met version conflicts after {self.max_attempts} runs")

    # reads

    def get_many(self, hashes: Sequence[str]) -> dict[str, list[float]]:
        """Vectors already stored for these content hashes: the embedder's cache. Concurrent
        callers share one lookup (:meth:`_lookup_group`)."""
        if not hashes:
            return {}
        return self._lookup(list(hashes))

    def _lookup_group(self, groups: Sequence[list[str]]) -> list[dict[str, list[float]]]:
        found = self._cache_lookup(list(dict.fromkeys(h for g in groups for h in g)))
        return [{h: found[h] for h in g if h in found} for g in groups]

    def _cache_lookup(self, hashes: list[str]) -> dict[str, list[float]]:
        body = {
            "size": len(hashes),
            "_source": ["content_hash", VECTOR_FIELD],
            "query": {"terms": {"content_hash": list(hashes)}},
            "collapse": {"field": "content_hash"},
        }
        try:
            result = self._retry("cache lookup", lambda: self.client.search(index=self.index, body=body))
        except (StoreError, NotFoundError) as exc:
            log.warning("embedding cache lookup failed; embedding everything: %s", exc)
            return {}
        found: dict[str, list[float]] = {}
        for hit in result["hits"]["hits"]:
            src = hit.get("_source", {})
            if src.get(VECTOR_FIELD):
                found[src["content_hash"]] = src[VECTOR_FIELD]
        return found

    def search(
        self,
        vector: Sequence[float] | None,
        k: int,
        flt: SearchFilter | None = None,
        *,
        text: str | None = None,
        search_type: SearchType = "semantic",
        min_score: float | None = None,
    ) -> list[SearchHit]:
        """The ``k`` best chunks readers may see (see :meth:`search_result`)."""
        return self.search_result(vector, k, flt, text=text, search_type=search_type, min_score=min_score).hits

    def search_result(
        self,
        vector: Sequence[float] | None,
        k: int,
        flt: SearchFilter | None = None,
        *,
        text: str | None = None,
        search_type: SearchType = "semantic",
        min_score: float | None = None,
    ) -> SearchResult:
        """The ``k`` best chunks readers may see, and how many candidates the score floor dropped.

        ``semantic``: k-NN on ``vector``. ``keyword``: BM25 on ``text`` over the chunk text and
        heading (no vector needed). ``hybrid``: both, fused by reciprocal rank (:mod:`.fusion`).
        With a commit table every leg over-fetches ``OVERFETCH`` times ``k`` and keeps only chunks of
        each key's committed version (:func:`visible`) before ranks are fused. ``min_score`` is a
        floor on the k-NN cosine score, OpenSearch's ``(2 - d) / 2`` in [0, 1], applied before
        fusion to every hit: a hit that only BM25 found gets that score computed here from its
        stored vector, so the floor means the same whichever leg found it. BM25 scores are
        unbounded and depend on the corpus, so ``keyword`` takes no floor (ValueError)."""
        check_search(vector, text, search_type, min_score)
        fetch = k * self.OVERFETCH if self.commits is not None else k
        want_vectors = search_type == "hybrid" and min_score is not None
        knn = self.search_all(vector, fetch, flt) if search_type != "keyword" and vector is not None else []
        bm25 = (
            self._bm25(text or "", fetch, flt, query_vector=vector if want_vectors else None)
            if search_type != "semantic"
            else []
        )
        if self.commits is not None:
            union = list({h.id: h for h in [*knn, *bm25]}.values())
            shown = {h.id for h in visible(union, self.commits, len(union))}
            knn = [h for h in knn if h.id in shown]
            bm25 = [h for h in bm25 if h.id in shown]
        candidates = len({h.id for h in [*knn, *bm25]})
        if min_score is not None:
            assert vector is not None
            knn = [h for h in knn if h.score >= min_score]
            cosine = {h.id: h.score for h in knn}
            unknown = -1.0  # a hit without a stored vector cannot show it is relevant enough
            bm25 = [
                h
                for h in bm25
                if cosine.get(h.id, h.semantic_score if h.semantic_score is not None else unknown) >= min_score
            ]
        passed = len({h.id for h in [*knn, *bm25]})
        if search_type == "semantic":
            hits = knn[:k]
        elif search_type == "keyword":
            hits = bm25[:k]
        else:
            hits = [
                h.model_copy(
                    update={
                        "score": fused,
                        "semantic_score": knn[ranks[0] - 1].score if ranks[0] else h.semantic_score,
                        "keyword_score": bm25[ranks[1] - 1].score if ranks[1] else None,
                    }
                )
                for h, fused, ranks in rrf([knn, bm25], key=lambda h: h.id)[:k]
            ]
        return SearchResult(hits, candidates=candidates, below_floor=candidates - passed)

    def _query(self, body: dict[str, Any]) -> list[SearchHit]:
        # ignore=404: an index not created yet means nothing indexed yet, not a warning in the log
        result = self._retry("search", lambda: self.client.search(index=self.index, body=body, params={"ignore": 404}))
        if "hits" not in result:
            return []
        return [to_hit(hit) for hit in result["hits"]["hits"]]

    def search_all(self, vector: Sequence[float] | None, k: int, flt: SearchFilter | None = None) -> list[SearchHit]:
        """The ``k`` nearest chunks, committed or not (the k-NN leg; efficient filtering inside ``knn``)."""
        if vector is None:
            raise ValueError("k-NN search needs a query vector")
        knn: dict[str, Any] = {"vector": list(vector), "k": k}
        clauses = flt.clauses() if flt else []
        if clauses:
            knn["filter"] = {"bool": {"filter": clauses}}
        body = {
            "size": k,
            "_source": {"excludes": [VECTOR_FIELD]},
            "query": {"knn": {VECTOR_FIELD: knn}},
        }
        return [h.model_copy(update={"semantic_score": h.score}) for h in self._query(body)]

    def _bm25(
        self, text: str, k: int, flt: SearchFilter | None, *, query_vector: Sequence[float] | None = None
    ) -> list[SearchHit]:
        """The ``k`` best BM25 matches of ``text`` in the chunk text and heading, committed or not.
        With ``query_vector``, each hit's ``semantic_score`` is its cosine score to it (for the floor)."""
        body = keyword_query(text, k, flt.clauses() if flt else [], with_vectors=query_vector is not None)
        if body is None:
            return []
        result = self._retry("search", lambda: self.client.search(index=self.index, body=body, params={"ignore": 404}))
        hits = []
        for raw in result.get("hits", {}).get("hits", []):
            hit = to_hit(raw)
            update: dict[str, Any] = {"keyword_score": hit.score}
            stored = raw.get("_source", {}).get(VECTOR_FIELD)
            if query_vector is not None and stored:
                update["semantic_score"] = cosine_score(query_vector, stored)
            hits.append(hit.model_copy(update=update))
        return hits

    def chunk_versions(self, key: str, size: int) -> list[str]:
        """The version tokens of up to ``size`` searchable chunks of ``key``, one per chunk (only the
        ``version`` field is fetched: source filtering, OpenSearch docs, "Retrieve specific fields")."""
        body = {"size": size, "_source": ["version"], "query": {"bool": {"filter": [{"term": {"source_key": key}}]}}}
        result = self._retry("list versions", lambda: self.client.search(index=self.index, body=body))
        return [str((h.get("_source") or {}).get("version")) for h in result.get("hits", {}).get("hits", [])]

    def count(self, key: str | None = None, version: str | None = None) -> int:
        """Chunks of ``key`` (of one ``version`` if given), or of all keys."""
        clauses: list[dict[str, Any]] = [{"term": {"source_key": key}}] if key else []
        if version is not None:
            clauses.append({"term": {"version": version}})
        query: dict[str, Any] = {"bool": {"filter": clauses}} if clauses else {"match_all": {}}
        result = self._retry(
            "count", lambda: self.client.count(index=self.index, body={"query": query}, params={"ignore": 404})
        )
        return int(result.get("count", 0))


class ServerlessStore(VectorStore):
    """An OpenSearch Serverless vector collection: it assigns document ids itself and refuses ours
    ("Document ID is not supported in create/index operation request"), has no refresh API and no
    ``_delete_by_query``, and makes a write searchable only some seconds later. So deletes search
    for ids and bulk-delete them, and can miss what was written just before: a delayed sweep follows."""

    serverless: ClassVar[bool] = True
    needs_sweep: ClassVar[bool] = True

    def refresh(self) -> None:
        """Serverless has no refresh API and refreshes itself."""

    def write_chunks(self, docs: Sequence[ChunkDoc]) -> list[str]:
        """Bulk-index one caller's chunks at a time: the collection assigns the ids, so an action
        cannot be sent again after a partly failed shared request without a duplicate."""
        return self._bulk([self._action(d) for d in docs])

    def _action(self, doc: ChunkDoc) -> dict[str, Any]:
        return {"_op_type": "index", "_index": self.index, "_source": doc.body()}

    def update_metadata(self, key: str, version: str, metadata: Mapping[str, Any]) -> int:
        """Serverless has no ``_update_by_query`` (AWS developer guide, serverless-genref.html: it is
        not among the supported operations): page through the version's chunks (``search_after`` on
        ``chunk_number``) and bulk-``update`` by the ids the collection assigned (ids are refused
        only in index/create requests), with the same script. Chunks already holding ``metadata``
        are left alone. A chunk written too recently to be searchable is missed here: the delayed
        sweep runs this again once it is (as for deletes)."""
        wanted = dict(metadata)
        query = {"bool": {"filter": [{"term": {"source_key": key}}, {"term": {"version": version}}]}}
        body: dict[str, Any] = {
            "size": 1000,
            "_source": ["metadata"],
            "query": query,
            "sort": [{"chunk_number": "asc"}],
        }
        updated = 0
        while True:
            result = self._retry(
                "find chunks to update",
                lambda: self.client.search(index=self.index, body=body, params={"ignore": 404}),
            )
            hits = result.get("hits", {}).get("hits", [])
            if not hits:
                return updated
            stale = [h["_id"] for h in hits if (h.get("_source") or {}).get("metadata", {}) != wanted]
            script = {"lang": "painless", "source": SET_METADATA, "params": {"metadata": wanted}}
            actions = [
                {"_op_type": "update", "_index": self.index, "_id": i, "retry_on_conflict": 3, "script": script}
                for i in stale
            ]
            updated += len(self._bulk(actions)) if actions else 0
            body["search_after"] = hits[-1]["sort"]

    def _delete_query(self, query: dict[str, Any]) -> int:
        """Search the ids, bulk-delete them, repeat until a search finds nothing new."""
        seen: set[str] = set()
        deleted = 0
        body = {"size": 1000, "_source": False, "query": query}
        while True:
            result = self._retry(
                "find documents to delete",
                lambda: self.client.search(index=self.index, body=body, params={"ignore": 404}),
            )
            ids = [h["_id"] for h in result.get("hits", {}).get("hits", []) if h["_id"] not in seen]
            if not ids:
                return deleted
            seen.update(ids)
            deleted += len(self._bulk([{"_op_type": "delete", "_index": self.index, "_id": i} for i in ids]))


__all__ = [
    "ChunkDoc",
    "SearchFilter",
    "SearchHit",
    "ServerlessStore",
    "VectorStore",
    "index_body",
    "make_client",
]
