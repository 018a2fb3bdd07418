"""Retrieval evaluation (issue 16): recall@k and MRR of ``POST /v1/retrieve`` on a labelled set.

The set (``questions.jsonl``) labels each question with the keys that answer it and a quote
identifying the chunk; follow-ups carry the conversation (``messages``); questions the corpus does
not answer have no labels and count how often nothing came back. Each *mode* is a set of request
fields (``search_type``, ``rerank``, ``rewrite_query``); a mode the server refuses (422, e.g. a
field this build does not know yet) is reported as refused, not as zeros. Pure functions over
whatever ``post`` returns, so the same code scores the stand-ins and the real models.
"""

from __future__ import annotations

import json
import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
QUESTIONS = HERE / "questions.jsonl"
CORPUS = HERE / "corpus"
SAMPLES = HERE.parents[1] / "samples"
K = 5

# (name, request fields). search_type is the hybrid branch's field: before it is merged the server
# refuses it (422) and the harness says so.
MODES: list[tuple[str, dict[str, Any]]] = [
    ("semantic", {"search_type": "semantic", "rerank": False}),
    ("keyword", {"search_type": "keyword", "rerank": False}),
    ("hybrid", {"search_type": "hybrid", "rerank": False}),
    ("semantic+rerank", {"search_type": "semantic", "rerank": True}),
    ("hybrid+rerank", {"search_type": "hybrid", "rerank": True}),
    ("hybrid, min_score 0.6", {"search_type": "hybrid", "rerank": False, "min_score": 0.6}),
    ("hybrid, min_score 0.7", {"search_type": "hybrid", "rerank": False, "min_score": 0.7}),
]
FOLLOWUP_MODES: list[tuple[str, dict[str, Any]]] = [
    ("follow-ups, raw question", {"rewrite_query": False, "rerank": False}),
    ("follow-ups, rewritten", {"rewrite_query": True, "rerank": False}),
]

Post = Callable[[dict[str, Any]], tuple[int, dict[str, Any]]]  # body -> (status, JSON)


@dataclass(frozen=True)
class Label:
    key: str
    quote: str


@dataclass(frozen=True)
class Question:
    id: str
    kind: str  # single | followup | none
    lang: str
    relevant: tuple[Label, ...]
    question: str | None = None
    messages: tuple[dict[str, str], ...] = ()

    def body(self, k: int, fields: dict[str, Any]) -> dict[str, Any]:
        base: dict[str, Any] = {"messages": list(self.messages)} if self.messages else {"query": self.question}
        return {**base, "top_k": k, **fields}


def load_questions(path: Path = QUESTIONS) -> list[Question]:
    out = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if not line.strip():
            continue
        d = json.loads(line)
        out.append(
            Question(
                id=d["id"],
                kind=d["kind"],
                lang=d["lang"],
                relevant=tuple(Label(r["key"], r["quote"]) for r in d["relevant"]),
                question=d.get("question"),
                messages=tuple(d.get("messages") or ()),
            )
        )
    return out


def corpus_texts(prefixes: dict[str, Path] | None = None) -> dict[str, str]:
    """key -> file text, to tell which chunk (start/end offsets) holds a label's quote."""
    prefixes = prefixes or {"corpus/": CORPUS, "samples/": SAMPLES}
    return {
        prefix + p.name: p.read_text(encoding="utf-8")
        for prefix, folder in prefixes.items()
        for p in sorted(folder.iterdir())
        if p.is_file()
    }


def first_relevant_rank(
    sources: Sequence[dict[str, Any]], labels: Sequence[Label], texts: dict[str, str]
) -> int | None:
    """1-based rank of the first source that answers (its key is labelled and, when the quote can be
    placed in the file, its span holds the quote), or None."""
    for rank, s in enumerate(sources, start=1):
        if any(chunk_matches(s, label, texts) for label in labels):
            return rank
    return None


def chunk_matches(source: dict[str, Any], label: Label, texts: dict[str, str]) -> bool:
    if source.get("source_key") != label.key:
        return False
    text = texts.get(label.key)
    start, end = int(source.get("start") or 0), int(source.get("end") or 0)
    if text is None or label.quote not in text or end <= start:
        return True  # the quote cannot be placed in the raw file (e.g. HTML): the key decides
    return label.quote in text[start:end]


def recall_at(ranks: Sequence[int | None], k: int) -> float:
    return sum(1 for r in ranks if r is not None and r <= k) / len(ranks) if ranks else 0.0


def mrr(ranks: Sequence[int | None]) -> float:
    return sum(1.0 / r for r in ranks if r is not None) / len(ranks) if ranks else 0.0


@dataclass
class ModeResult:
    name: str
    questions: int = 0
    refused: str | None = None
    ranks: list[int | None] = field(default_factory=list)
    empty_on_unanswerable: int = 0
    unanswerable: int = 0
    rerank_tokens: int = 0
    rewrite_tokens: int = 0
    queries: dict[str, str] = field(default_factory=dict)  # question id -> what was searched
    retrieval_ms: list[float] = field(default_factory=list)  # server-side, per question (rewrite included)

    @property
    def recall(self) -> float:
        return recall_at(self.ranks, K)

    @property
    def mrr(self) -> float:
        return mrr(self.ranks)

    def line(self) -> str:
        if self.refused:
            return f"{self.name:<26} refused by the server: {self.refused}"
        extra = f", unanswerable with no sources {self.empty_on_unanswerable}/{self.unanswerable}"
        tokens = f", rerank tokens {self.rerank_tokens}, rewrite tokens {self.rewrite_tokens}"
        if self.retrieval_ms:
            tokens += f", median retrieval {statistics.median(self.retrieval_ms):.0f} ms"
        return (
            f"{self.name:<26} recall@{K} {self.recall:.3f}  MRR {self.mrr:.3f}  "
            f"({len(self.ranks)} questions{extra if self.unanswerable else ''}{tokens})"
        )


def evaluate(
    post: Post, questions: Sequence[Question], name: str, fields: dict[str, Any], texts: dict[str, str], k: int = K
) -> ModeResult:
    """Ask every question in one mode. A 422 on the first request marks the mode refused."""
    result = ModeResult(name)
    for q in questions:
        status, body = post(q.body(k, fields))
        if status == 422:
            message = str((body.get("error") or {}).get("message", body))
            result.refused = f"422 {message[:160]}"
            return result
        if status != 200:
            raise RuntimeError(f"{q.id}: /v1/retrieve answered {status}: {body}")
        sources = body.get("sources") or []
        usage = body.get("usage") or {}
        result.rerank_tokens += int(usage.get("rerank_tokens") or 0)
        result.rewrite_tokens += int(usage.get("rewrite_tokens") or 0)
        result.queries[q.id] = str(body.get("query"))
        result.retrieval_ms.append(float((usage.get("latency_ms") or {}).get("retrieval") or 0.0))
        result.questions += 1
        if q.kind == "none":
            result.unanswerable += 1
            result.empty_on_unanswerable += not sources
            continue
        result.ranks.append(first_relevant_rank(sources, q.relevant, texts))
    return result


def report(post: Post, questions: Sequence[Question], texts: dict[str, str], real: bool) -> list[str]:
    """Every mode's line, with what the figures measure."""
    lines = []
    if real:
        lines.append("DashScope: the real embedding, rerank and rewrite models (DASHSCOPE_API_KEY is set).")
    else:
        lines.append(
            "DashScope: the local stand-in. Its embeddings are word hashes and its rerank is BM25, so these "
            "figures measure the plumbing on a lexical proxy, not model quality; set DASHSCOPE_API_KEY to "
            "measure the real models with the same command."
        )
    single = [q for q in questions if q.kind in ("single", "none")]
    follow = [q for q in questions if q.kind == "followup"]
    lines.append(
        f"{len(single)} questions ({sum(q.kind == 'none' for q in single)} unanswerable), {len(follow)} follow-ups"
    )
    for name, fields in MODES:
        lines.append(evaluate(post, single, name, fields, texts).line())
    for name, fields in FOLLOWUP_MODES:
        lines.append(evaluate(post, follow, name, fields, texts).line())
    return lines
