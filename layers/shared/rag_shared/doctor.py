"""``python -m rag_shared.doctor``: check the configured DashScope and OpenSearch before trusting a deployment.

Each check does the smallest real thing that proves it (one embedding, one one-token chat answer, GET /,
GET the index mapping, one probe write deleted at once, one k-NN search) and prints a checklist with the
fix for each failure. It exits 1 on any failure. OpenSearch is only read, except the probe document, which
is written only into an index that already exists (a write to a missing index would auto-create it with
dynamic mappings) and deleted right after. It runs with the identity of whoever runs it: the functions'
roles can differ, so a pass here shows the settings are right, not that the roles are.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, TextIO

from rag_shared.config import Settings, load_catalog, load_catalog_spec, load_settings
from rag_shared.dashscope import ChatParams, DashScopeClient
from rag_shared.errors import (
    AccessDeniedError,
    BadRequestError,
    ConfigError,
    InvalidApiKeyError,
    ModelNotFoundError,
    RagError,
    SecretUnavailableError,
)
from rag_shared.secrets import ApiKeyProvider
from rag_shared.store import VECTOR_FIELD, VectorStore, index_body

PROBE_TEXT = "doctor: a probe to check that embeddings and search work"
PROBE_KEY = "__doctor__/probe"

# Lowest OpenSearch version that supports each engine with cosinesimil and filtering inside the knn clause:
# faiss + cosinesimil needs 2.19 (documentation-website, _mappings/supported-field-types/knn-methods-engines.md);
# lucene supports cosinesimil earlier, and efficient filtering in the knn clause needs lucene 2.4 / faiss 2.9
# (shared/REFERENCE.md, OpenSearch section).
MIN_VERSION: dict[str, tuple[int, int]] = {"faiss": (2, 19), "lucene": (2, 4)}


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    detail: str
    fix: str = ""


@dataclass
class Report:
    checks: list[Check] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return all(c.ok for c in self.checks)

    def add(self, check: Check) -> Check:
        self.checks.append(check)
        return check

    def render(self) -> str:
        lines = []
        for c in self.checks:
            lines.append(f"[{'ok' if c.ok else 'FAIL'}] {c.name}: {c.detail}")
            if not c.ok and c.fix:
                lines.append(f"       fix: {c.fix}")
        failed = sum(not c.ok for c in self.checks)
        lines.append("all checks passed" if not failed else f"{failed} check(s) failed")
        return "\n".join(lines)


# --- pure helpers ---------------------------------------------------------------------------------


def parse_version(number: str) -> tuple[int, int]:
    m = re.match(r"(\d+)\.(\d+)", number)
    return (int(m.group(1)), int(m.group(2))) if m else (0, 0)


def mapping_problems(actual: dict[str, Any], expected: dict[str, Any]) -> list[str]:
    """How the index's field mappings differ from what the product creates (type, vector size and method)."""
    problems = []
    for name, want in expected.items():
        got = actual.get(name)
        if got is None:
            problems.append(f"{name} is not mapped")
            continue
        if got.get("type", "object") != want["type"]:
            problems.append(f"{name} is {got.get('type', 'object')}, not {want['type']}")
        if name == VECTOR_FIELD and got.get("type") == "knn_vector":
            if got.get("dimension") != want["dimension"]:
                problems.append(f"{name} has {got.get('dimension')} dimensions, the embedder makes {want['dimension']}")
            method, want_method = got.get("method") or {}, want["method"]
            for key in ("engine", "space_type"):
                if method.get(key) != want_method[key]:
                    problems.append(f"{name} uses {key} {method.get(key)}, the product expects {want_method[key]}")
    return problems


def _offered_fix(variable: str, settings: Settings, kind: str) -> str:
    catalog = load_catalog(settings.region.value)
    names = sorted(catalog.generators if kind == "chat" else catalog.embedders)
    return f"set {variable} to one the region serves ({', '.join(names)}), or DASHSCOPE_REGION to the model's region"


# --- the checks -----------------------------------------------------------------------------------


@dataclass
class Doctor:
    """The checks, with their I/O passed in (tests give it clients pointed at the stand-ins)."""

    settings: Settings
    dashscope: DashScopeClient
    store: VectorStore
    vector: list[float] | None = None

    def run(self) -> Report:
        report = Report()
        self.check_dashscope(report)
        self.check_chat(report)
        version_ok = self.check_opensearch(report)
        exists = self.check_mapping(report) if version_ok else None
        if exists:
            self.check_read_write(report)
        self.check_end_to_end(report, exists)
        return report

    def check_dashscope(self, report: Report) -> None:
        s = self.settings
        region = s.region.value
        key_check = f"DashScope key works in {region}"
        model_check = f"embedding model {s.embedder.name} is offered in {region}"
        dims_check = f"dimension {s.dimensions} is valid for {s.embedder.name}"
        try:
            batch = self.dashscope.embed_batch([PROBE_TEXT], s.embedder, s.dimensions)
        except InvalidApiKeyError as exc:
            report.add(
                Check(
                    key_check,
                    False,
                    f"401 at {s.base_url}: {exc.message}",
                    f"a key works only in its own region: use a key created in {region}, or set "
                    "DASHSCOPE_REGION to the region the key was created in",
                )
            )
            return
        except ConfigError as exc:  # no key configured
            report.add(Check(key_check, False, exc.message, "set DASHSCOPE_API_KEY, or DASHSCOPE_SECRET_ARN"))
            return
        except SecretUnavailableError as exc:
            fix = "check DASHSCOPE_SECRET_ARN and that this identity may call secretsmanager:GetSecretValue"
            report.add(Check(key_check, False, exc.message, fix))
            return
        except AccessDeniedError as exc:
            report.add(
                Check(key_check, False, exc.message, "activate Model Studio and the model; settle any overdue bill")
            )
            return
        except ModelNotFoundError as exc:
            report.add(Check(key_check, True, f"accepted at {s.base_url}"))
            report.add(Check(model_check, False, exc.message, _offered_fix("EMBEDDING_MODEL", s, "embedding")))
            return
        except BadRequestError as exc:
            report.add(Check(key_check, True, f"accepted at {s.base_url}"))
            report.add(Check(model_check, True, "served"))
            offered = s.embedder.dimensions
            report.add(Check(dims_check, False, exc.message, f"set EMBEDDING_DIMENSIONS to one of {offered}"))
            return
        except RagError as exc:
            report.add(
                Check(key_check, False, f"could not call DashScope: {exc}", "check network access to " + s.base_url)
            )
            return
        report.add(Check(key_check, True, f"accepted at {s.base_url}"))
        report.add(Check(model_check, True, "served"))
        got = len(batch.vectors[0] or [])
        if got != s.dimensions:
            fix = f"set EMBEDDING_DIMENSIONS={got}, or check the model sends the size asked for"
            report.add(Check(dims_check, False, f"asked for {s.dimensions}, got {got}", fix))
            return
        report.add(Check(dims_check, True, f"{got}-dimensional vectors"))
        self.vector = batch.vectors[0]

    def check_chat(self, report: Report) -> None:
        s = self.settings
        name = f"chat model {s.generator.name} is offered in {s.region.value}"
        if not any(c.ok and c.name.startswith("DashScope key") for c in report.checks):
            report.add(Check(name, False, "not checked: the key does not work", "fix the key first"))
            return
        try:
            self.dashscope.complete(
                [{"role": "user", "content": "Reply with: ok"}], s.generator, ChatParams(max_tokens=1)
            )
        except ModelNotFoundError as exc:
            report.add(Check(name, False, exc.message, _offered_fix("CHAT_MODEL", s, "chat")))
            return
        except RagError as exc:
            report.add(Check(name, False, str(exc), "see the message; the key and region passed"))
            return
        report.add(Check(name, True, "answered a one-token request"))

    def check_opensearch(self, report: Report) -> bool:
        s = self.settings
        reach = f"OpenSearch is reachable at {s.opensearch_url}"
        if self.store.serverless:
            # Serverless manages the engine version; vector collections serve faiss and lucene HNSW
            report.add(Check(reach, True, "OpenSearch Serverless collection (version managed by AWS)"))
            return True
        try:
            info = self.store.client.info()
        except Exception as exc:
            report.add(
                Check(
                    reach,
                    False,
                    f"GET / failed: {type(exc).__name__}: {str(exc)[:200]}",
                    "check OPENSEARCH_URL, network access from here, and that the identity may call es:ESHttpGet",
                )
            )
            return False
        number = str((info.get("version") or {}).get("number", "?"))
        report.add(Check(reach, True, f"{(info.get('version') or {}).get('distribution', 'opensearch')} {number}"))
        engine = self.store.engine
        need = MIN_VERSION.get(engine, (0, 0))
        name = f"OpenSearch {number} supports the index method ({engine}, cosinesimil, filtered k-NN)"
        if parse_version(number) < need:
            fix = f"upgrade the domain to {need[0]}.{need[1]}+, or set OPENSEARCH_ENGINE=lucene"
            report.add(Check(name, False, f"{engine} needs {need[0]}.{need[1]} or later", fix))
            return False
        report.add(Check(name, True, f"{engine} needs {need[0]}.{need[1]}+"))
        return True

    def check_mapping(self, report: Report) -> bool:
        """True when the index exists and matches; the probe write needs an existing index."""
        s, store = self.settings, self.store
        name = f"index {store.index} mapping matches"
        try:
            exists = bool(store.client.indices.exists(index=store.index))
            if not exists:
                report.add(Check(name, True, "not created yet: the indexer creates it on the first file"))
                return False
            raw = store.client.indices.get_mapping(index=store.index)
        except Exception as exc:
            report.add(
                Check(name, False, f"could not read it: {str(exc)[:200]}", "allow the identity to read the index")
            )
            return False
        first: dict[str, Any] = next(iter(raw.values()), {})
        mapping: dict[str, Any] = first.get("mappings", {}).get("properties", {})
        expected = index_body(s.dimensions, store.engine, serverless=store.serverless)["mappings"]["properties"]
        problems = mapping_problems(mapping, expected)
        if problems:
            fix = (
                "the index was not built for this configuration (or was auto-created by a write with dynamic "
                "mappings): reindex into a new OPENSEARCH_INDEX, or restore EMBEDDING_MODEL/EMBEDDING_DIMENSIONS"
            )
            report.add(Check(name, False, "; ".join(problems), fix))
            return False
        report.add(Check(name, True, f"knn_vector of {s.dimensions} dimensions, {store.engine}, cosinesimil"))
        return True

    def check_read_write(self, report: Report) -> None:
        store = self.store
        name = "this identity can write and delete in the index"
        probe = {
            "text": PROBE_TEXT,
            "source_key": PROBE_KEY,
            "chunk_number": 0,
            VECTOR_FIELD: self.vector or [1.0] + [0.0] * (self.settings.dimensions - 1),
        }
        try:
            created = store.client.index(index=store.index, body=probe)
            store.client.delete(index=store.index, id=created["_id"])
        except Exception as exc:
            fix = "grant the indexer's permissions (aoss:WriteDocument / es:ESHttpPost, es:ESHttpDelete) to this role"
            report.add(Check(name, False, f"{type(exc).__name__}: {str(exc)[:200]}", fix))
            return
        report.add(Check(name, True, "probe document written and deleted"))

    def check_end_to_end(self, report: Report, index_exists: bool | None) -> None:
        name = "end to end: embed a question and search the index"
        if self.vector is None:
            report.add(Check(name, False, "not run: embedding failed", "fix the DashScope checks above"))
            return
        if not index_exists:
            fix = "upload one file to the documents bucket (the indexer creates the index), then run doctor again"
            report.add(Check(name, False, "not run: the index does not exist or does not match", fix))
            return
        try:
            hits = self.store.search(self.vector, 3)
        except RagError as exc:
            fix = "allow the chat role to search the index (aoss:ReadDocument / es:ESHttpPost)"
            report.add(Check(name, False, str(exc), fix))
            return
        report.add(Check(name, True, f"{len(hits)} passage(s) found"))


def build(settings: Settings) -> Doctor:
    client = DashScopeClient(settings, ApiKeyProvider.from_settings(settings), max_retries=1, timeout=30)
    store = VectorStore.from_settings(settings)
    store.max_attempts = 2
    return Doctor(settings, client, store)


def main(
    argv: Sequence[str] | None = None,
    *,
    out: TextIO = sys.stdout,
    settings_loader: Callable[[], Settings] = load_settings,
) -> int:
    del argv  # no options: the environment is the configuration, as in the functions
    try:
        settings = settings_loader()
    except ConfigError as exc:
        report = Report([Check("configuration loads", False, str(exc), "change the variable the message names")])
        print(report.render(), file=out)
        return 1
    spec = load_catalog_spec()
    print(
        f"doctor: DashScope {settings.region.value} at {settings.base_url} "
        f"(regions with an embedder: {', '.join(sorted(spec.default_embedders))}); "
        f"OpenSearch {settings.opensearch_url} index {settings.opensearch_index}",
        file=out,
    )
    report = build(settings).run()
    print(report.render(), file=out)
    return 0 if report.ok else 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
