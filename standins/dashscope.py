"""A loopback stand-in for DashScope's OpenAI-compatible API (``/compatible-mode/v1``).

It enforces what the real service enforces and the product must respect: the bearer key, the
per-model embedding batch cap (25 for v1/v2, 10 for v3/v4) and tokens per text, chat context
limits, ``max_tokens`` ranges, moderation, thinking only when streaming. Its error bodies use
DashScope's shapes. Faults can be injected per path: status codes with Retry-After, slow replies,
dropped connections before or during a stream, and a requests-per-second limit.

Embeddings are deterministic bag-of-words hashes, so texts that share words are near each
other and retrieval over the stand-in finds the right chunks.
"""

from __future__ import annotations

import hashlib
import json
import math
import random
import re
import threading
import time
import uuid
from collections import deque
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

from standins.base import Request, StandInServer

# --- facts from Model Studio's documentation, per region (never from the product's catalog) -------
# Independent of the product's catalog on purpose: a product bug must not be mirrored here.

# Base-URL hosts of the OpenAI-compatible mode (compatibility-of-openai-with-dashscope, doc-detail/2833609)
# and the workspace-specific domains {WorkspaceId}.{region}.maas.aliyuncs.com (deepseek-api page, Oct 2026).
REGION_HOSTS: dict[str, str] = {
    "dashscope.aliyuncs.com": "cn-beijing",
    "dashscope-intl.aliyuncs.com": "ap-southeast-1",
    "dashscope-us.aliyuncs.com": "us-east-1",
    "cn-hongkong.dashscope.aliyuncs.com": "cn-hongkong",
}
_WORKSPACE_HOST = re.compile(r"^[a-z0-9-]+\.(cn-beijing|ap-southeast-1|us-east-1|cn-hongkong)\.maas\.aliyuncs\.com$")
REGIONS = ("ap-southeast-1", "cn-beijing", "cn-hongkong", "us-east-1")


def region_of_host(host: str | None) -> str | None:
    """The region a documented DashScope host belongs to (port ignored), or None for any other host."""
    name = (host or "").rsplit(":", 1)[0].lower() if host and not host.startswith("[") else ""
    if name in REGION_HOSTS:
        return REGION_HOSTS[name]
    m = _WORKSPACE_HOST.match(name)
    return m.group(1) if m else None


_V4_DIMS = [2048, 1536, 1024, 768, 512, 256, 128, 64]
# Batch rows and tokens per row: "Synchronous API details" (text-embedding-synchronous-api), Singapore,
# Beijing and Hong Kong tables (alibabacloud.com, Mar 2026; help.aliyun.com for v1/v2 and v3's small sizes;
# the Spanish page of Oct 2026 for qwen3.7-text-embedding).
EMBED_LIMITS: dict[str, dict[str, Any]] = {
    "text-embedding-v1": {"batch": 25, "tokens": 2048, "default": 1536},
    "text-embedding-v2": {"batch": 25, "tokens": 2048, "default": 1536},
    "text-embedding-v3": {"batch": 10, "tokens": 8192, "default": 1024},
    "text-embedding-v4": {"batch": 10, "tokens": 8192, "default": 1024},
    "qwen3.7-text-embedding": {"batch": 20, "tokens": 128000, "default": 1024},
}
# Which region serves which embedding model, with which output dimensions (same pages).
EMBED_REGIONS: dict[str, dict[str, list[int]]] = {
    "text-embedding-v1": {"cn-beijing": [1536]},  # v1/v2 are listed only for Beijing
    "text-embedding-v2": {"cn-beijing": [1536]},
    "text-embedding-v3": {"ap-southeast-1": [1024, 768, 512], "cn-beijing": [1024, 768, 512, 256, 128, 64]},
    "text-embedding-v4": {"ap-southeast-1": _V4_DIMS, "cn-beijing": _V4_DIMS, "cn-hongkong": _V4_DIMS},
    "qwen3.7-text-embedding": {"ap-southeast-1": [2560, 2048, 1536, 1024, 768, 512, 256]},
}
CHAT_LIMITS = {  # max input tokens, max output tokens, thinking mode
    "qwen-plus": (129024, 16384, "optional"),  # hybrid thinking: the deep-thinking page's enable_thinking example
    "qwen-turbo": (98304, 16384, "optional"),  # qwen-turbo page: input 98,304, output 16,384, context 131,072
    "qwen-flash": (997000, 32768, "optional"),  # Qwen3 Flash: 1M context, "997K" input, 32K output
    "qwen-max": (30720, 8192, "never"),  # context 32,768, output 8,192
    "qwen-long": (10000000, 8192, "never"),
    "qwen3-max": (258048, 65536, "never"),  # models page: 256K context, 252K input, 64K output
    "qwen3-235b-a22b": (129024, 16384, "optional"),
    "qwen3-32b": (129024, 16384, "optional"),
    "deepseek-v3": (98304, 16384, "never"),  # deepseek-api (doc-detail/2868565): 131,072 context
    "deepseek-r1": (98304, 16384, "always"),
}
_GLOBAL = {"ap-southeast-1", "cn-beijing"}
# A model's page lists the regions that serve it (shared/REFERENCE.md): qwen-turbo's page has Beijing and
# Singapore tabs; qwen-long and the DeepSeek models are Beijing-only (long-context-qwen-long page; deepseek-api:
# "applies only to the China (Beijing) region"); qwen-plus, qwen-flash and qwen3-max are in the Global list
# (US) of the compatible-mode page; Hong Kong serves qwen-plus and qwen3-max through its own endpoint.
CHAT_REGIONS: dict[str, set[str]] = {
    "qwen-plus": _GLOBAL | {"us-east-1", "cn-hongkong"},
    "qwen-turbo": set(_GLOBAL),
    "qwen-flash": _GLOBAL | {"us-east-1"},
    "qwen-max": set(_GLOBAL),
    "qwen-long": {"cn-beijing"},
    "qwen3-max": _GLOBAL | {"us-east-1", "cn-hongkong"},
    "qwen3-235b-a22b": set(_GLOBAL),
    "qwen3-32b": set(_GLOBAL),
    # Beijing-only, then discontinued on 2026-10-10 (help.aliyun.com/document_detail/2868565): served nowhere
    "deepseek-v3": set(),
    "deepseek-r1": set(),
}
# Text rerank (Model Studio "Text rerank" API page, alibabacloud.com/help/en/model-studio/text-rerank-api,
# Mar 15, 2026): native endpoint POST /api/v1/services/rerank/text-rerank/text-rerank on the region's host.
# Singapore lists only qwen3-rerank (500 documents, 4,000 tokens per item, 120,000 per request); Beijing
# lists gte-rerank-v2 (500, 4,000, 30,000) and, on the mainland page (help.aliyun.com/zh/model-studio/
# text-rerank-api), qwen3-rerank with 30,000 per request. Tokens per request = query tokens x documents
# + all document tokens (the page's formula); an item over 4,000 tokens is truncated, not refused.
RERANK_PATH = "/api/v1/services/rerank/text-rerank/text-rerank"
RERANK_LIMITS: dict[str, dict[str, int]] = {
    "qwen3-rerank": {"documents": 500, "item_tokens": 4000},
    "gte-rerank-v2": {"documents": 500, "item_tokens": 4000},
}
RERANK_REGIONS: dict[str, dict[str, int]] = {  # model -> region -> max tokens per request
    "qwen3-rerank": {"ap-southeast-1": 120000, "cn-beijing": 30000},
    "gte-rerank-v2": {"cn-beijing": 30000},
}
# A stand-in behaviour, not DashScope's: a chat call whose system message asks for a "standalone"
# query (a follow-up rewrite) gets the last user question plus the salient words of the earlier user
# turns, deterministically, instead of an answer; see rewrite_followup.
REWRITE_MARKER = "standalone"
MODERATION_TRIGGER = "FORBIDDEN-TOPIC"
_WORD = re.compile(r"[\u3400-\u9fff]|[^\W_]+|[^\w\s]")


def _qwen_encoding() -> Any:
    """Qwen's own BPE (the qwen.tiktoken vocabulary the dashscope SDK ships), loaded with tiktoken
    without importing the SDK (5 s). None when the dev extra is not installed."""
    try:
        import base64
        import importlib.util
        from pathlib import Path

        import tiktoken

        spec = importlib.util.find_spec("dashscope")
        if spec is None or not spec.submodule_search_locations:
            return None
        vocab = Path(next(iter(spec.submodule_search_locations)), "resources", "qwen.tiktoken")
        ranks = {
            base64.b64decode(tok): int(rank)
            for tok, rank in (line.split() for line in vocab.read_bytes().splitlines() if line)
        }
        # the pre-tokenizer pattern of dashscope/tokenizers/qwen_tokenizer.py (PAT_STR)
        pattern = (
            r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|"""
            r"""\s*[\r\n]+|\s+(?!\S)|\s+"""
        )
        return tiktoken.Encoding("qwen-standin", pat_str=pattern, mergeable_ranks=ranks, special_tokens={})
    except Exception:  # any failure falls back to the estimate below
        return None


_ENCODING_LOCK = threading.Lock()
_ENCODING: list[Any] = []


def count_tokens(text: str) -> int:
    """Qwen tokens in ``text``: the real BPE when available, else about one per 4 letters of a word,
    one per CJK character, digit or symbol (Qwen's tokenizer splits digits one by one)."""
    if not _ENCODING:  # loaded once; the lock only on the first calls, not on every count
        with _ENCODING_LOCK:
            if not _ENCODING:
                _ENCODING.append(_qwen_encoding())
    enc = _ENCODING[0]
    if enc is not None:
        return len(enc.encode_ordinary(text))
    return sum(-(-len(w) // 4) if w.isalpha() else 1 for w in _WORD.findall(text))


def fake_embedding(text: str, dims: int) -> list[float]:
    """Hashing-trick vector: each word (or CJK character pair) adds ±1 to one dimension."""
    vec = [0.0] * dims
    words = [w.lower() for w in re.findall(r"[^\W_]+", text) if not re.match(r"[\u3400-\u9fff]", w)]
    cjk = re.findall(r"[\u3400-\u9fff]", text)
    words += [a + b for a, b in zip(cjk, cjk[1:], strict=False)] or cjk
    for w in words:
        h = hashlib.blake2b(w.encode(), digest_size=8).digest()
        vec[int.from_bytes(h[:4], "big") % dims] += 1.0 if h[4] & 1 else -1.0
    vec[0] += 0.01  # never the zero vector, which OpenSearch rejects for cosine
    # Real embeddings are dense full-precision floats (~20 bytes each in JSON); a faint per-text
    # noise makes these as large on the wire without moving any similarity by more than ~1e-9.
    noise = random.Random(hashlib.blake2b(text.encode(), digest_size=8).digest())
    vec = [v + noise.uniform(-1e-6, 1e-6) for v in vec]
    norm = math.sqrt(sum(v * v for v in vec))
    return [v / norm for v in vec]


def native_error(code: str, message: str) -> dict[str, Any]:
    """The native API's error body (``{"request_id", "code", "message"}``, text-rerank-api page)."""
    return {"request_id": str(uuid.uuid4()), "code": code, "message": message}


def _terms(text: str) -> list[str]:
    """Lower-case words, and CJK characters as overlapping pairs (as the fake embedding does)."""
    words = [w.lower() for w in re.findall(r"[^\W_]+", text) if not re.match(r"[\u3400-\u9fff]", w)]
    cjk = re.findall(r"[\u3400-\u9fff]", text)
    return words + ([a + b for a, b in zip(cjk, cjk[1:], strict=False)] or cjk)


def bm25_scores(query: str, docs: list[str], k1: float = 1.2, b: float = 0.75) -> list[float]:
    """BM25 of each document for the query, IDF over the documents sent: a lexical proxy for a rerank
    model, so that ordering changes are testable (a real model scores meaning, not shared words)."""
    terms = [_terms(d) for d in docs]
    avg = sum(len(t) for t in terms) / len(terms) or 1.0
    n = len(docs)
    df: dict[str, int] = {}
    for t in terms:
        for w in set(t):
            df[w] = df.get(w, 0) + 1
    out = []
    for t in terms:
        tf: dict[str, int] = {}
        for w in t:
            tf[w] = tf.get(w, 0) + 1
        score = 0.0
        for q in set(_terms(query)):
            if q in tf:
                idf = math.log(1 + (n - df[q] + 0.5) / (df[q] + 0.5))
                score += idf * tf[q] * (k1 + 1) / (tf[q] + k1 * (1 - b + b * len(t) / avg))
        out.append(score)
    return out


_STOP = frozenset(
    [
        "what",
        "which",
        "when",
        "where",
        "who",
        "whom",
        "whose",
        "why",
        "how",
        "does",
        "did",
        "do",
        "is",
        "are",
        "was",
        "were",
        "the",
        "a",
        "an",
        "and",
        "or",
        "of",
        "to",
        "in",
        "on",
        "for",
        "with",
        "about",
        "from",
        "that",
        "this",
        "these",
        "those",
        "there",
        "their",
        "our",
        "your",
        "my",
        "me",
        "we",
        "you",
        "it",
        "its",
        "can",
        "could",
        "should",
        "would",
        "will",
        "shall",
        "may",
        "might",
        "be",
        "been",
        "have",
        "has",
        "had",
        "not",
        "any",
        "some",
        "more",
        "most",
        "also",
        "then",
        "than",
        "into",
        "over",
        "under",
    ]
)


def rewrite_followup(messages: list[dict[str, Any]]) -> str:
    """The stand-in's deterministic "rewrite": the last user question followed by the salient words
    (not stop words, 3+ letters, not already asked; CJK runs whole) of the earlier user turns."""
    users = [str(m.get("content") or "") for m in messages if m.get("role") == "user"]
    if not users:
        return ""
    question, earlier = users[-1].strip(), users[:-1]
    asked = {w.lower() for w in re.findall(r"[^\W_]+", question)}
    extra: list[str] = []
    for turn in earlier:
        for w in re.findall(r"[\u3400-\u9fff]+|[^\W_]+", turn):
            key = w.lower()
            cjk = bool(re.match(r"[\u3400-\u9fff]", w))
            if (cjk or (len(w) >= 3 and key not in _STOP)) and key not in asked:
                asked.add(key)
                extra.append(w)
    return f"{question} {' '.join(extra[:12])}".strip()


def error_body(code: str, message: str, etype: str = "invalid_request_error") -> dict[str, Any]:
    return {
        "error": {"message": message, "type": etype, "param": None, "code": code},
        "request_id": str(uuid.uuid4()),
    }


@dataclass
class Fault:
    """One injected failure. ``path`` limits it to URLs ending with that suffix."""

    kind: str = "status"  # status | drop | slow | drop_stream | stream_error (an error event after after_chunks)
    status: int = 500
    code: str = "InternalError"
    message: str = "An internal error has occured, please try again later."
    retry_after: float | None = None
    delay: float = 0.0
    after_chunks: int = 2
    path: str | None = None


@dataclass
class Call:
    path: str
    model: str | None
    size: int  # texts in an embedding call, messages in a chat call
    status: int
    workspace: str | None
    stream: bool = False
    started: float = 0.0
    region: str | None = None


@dataclass
class StandInState:
    faults: deque[Fault] = field(default_factory=deque)
    calls: list[Call] = field(default_factory=list)
    last_usage: dict[str, int] | None = None
    stream_times: list[float] = field(default_factory=list)  # when each stream chunk was written
    streams_abandoned: list[int] = field(default_factory=list)  # frames written before the caller hung up
    chat_bodies: list[dict[str, Any]] = field(default_factory=list)  # every chat request body, as sent
    rerank_tokens: list[int] = field(default_factory=list)  # usage.total_tokens of each rerank answered


# --- region, length and in-stream errors (fidelity) ---------------------------------------------------


def cut_at_max_tokens(pieces: list[str], max_tokens: Any) -> tuple[list[str], int, str]:
    """The pieces that fit in ``max_tokens`` (counted as Qwen tokens), their token count, and the
    finish reason: "length" when the answer was cut, as the real service reports it (the compatible
    mode returns OpenAI's finish_reason values), else "stop"."""
    limit = int(max_tokens) if max_tokens else None
    kept: list[str] = []
    used = 0
    for piece in pieces:
        n = max(1, count_tokens(piece))
        if limit is not None and used + n > limit:
            return kept, used, "length"
        kept.append(piece)
        used += n
    return kept, used, "stop"


class RegionFacts:
    """What the region a request was sent to offers. The region comes from the Host header when it is
    a documented DashScope host (tests may send one to loopback), else from ``self.region``.

    A model the region does not serve gets what an unknown model gets: 404 ``model_not_found``, "The model
    `X` does not exist or you do not have access to it." (DashScope's compatible mode, quoted in
    github.com/AIDotNet/OpenDeepWiki/issues/308); a dimension it lacks, 400 ``InvalidParameter``
    (Model Studio error-code page: request parameters invalid)."""

    region: str

    def region_for(self, req: Request) -> str:
        return region_of_host(req.headers.get("Host")) or self.region

    def embedding_dimensions(self, req: Request, model: Any) -> list[int] | None:
        """The output sizes ``model`` offers in the request's region; None where it is not served."""
        return EMBED_REGIONS.get(str(model), {}).get(self.region_for(req))

    def serves_chat(self, req: Request, model: str) -> bool:
        return self.region_for(req) in CHAT_REGIONS.get(model, set())

    def _stream_error(self, req: Request, fault: Fault) -> None:
        """An error event inside a stream that already started, then the end of the stream: what DashScope
        sends when, e.g., output moderation stops an answer mid-way ("Output data may contain inappropriate
        content", raised while iterating the stream: github.com/666ghj/BettaFish/issues/572). The openai SDK
        raises APIError with this body for an SSE data line that holds an "error"."""
        payload = error_body(fault.code, fault.message, fault.code)
        req.write_chunk(f"data: {json.dumps(payload, ensure_ascii=False)}\n\n".encode())
        req.end_chunked()


class DashScopeStandIn(RegionFacts, StandInServer):
    def __init__(
        self,
        api_keys: set[str] | None = None,
        *,
        latency: float = 0.0,
        chunk_delay: float = 0.0,
        rate_limit_per_second: float | None = None,
        tokens_per_second: float | None = None,
        send_retry_after: bool = False,
        context_limit: int | None = None,
        reply: str | None = None,
        region: str = "ap-southeast-1",
    ) -> None:
        super().__init__()
        # the region it serves when called on a host that is not a documented DashScope host (loopback)
        self.region = region
        count_tokens("")  # load Qwen's vocabulary now (~1 s), not inside the first timed request
        self.api_keys = api_keys or {"sk-standin-test-key"}
        self.latency = latency
        self.chunk_delay = chunk_delay
        self.quota = Quota(rate_limit_per_second, tokens_per_second, send_retry_after)
        self.context_limit = context_limit
        self.reply = reply
        self.state = StandInState()
        self._in_flight = 0
        self.max_in_flight = 0

    # test controls

    @property
    def rate_limit_per_second(self) -> float | None:
        return self.quota.requests_per_second

    @rate_limit_per_second.setter
    def rate_limit_per_second(self, value: float | None) -> None:
        self.quota.requests_per_second = value

    @property
    def base_url(self) -> str:
        return f"{self.url}/compatible-mode/v1"

    def inject(self, fault: Fault, times: int = 1) -> None:
        with self.lock:
            self.state.faults.extend([fault] * times)

    def reset(self) -> None:
        with self.lock:
            self.state = StandInState()
            self.max_in_flight = 0
        self.quota.reset()

    def rerank_tokens_total(self) -> int:
        with self.lock:
            return sum(self.state.rerank_tokens)

    def calls(self, suffix: str = "", status: int | None = None) -> list[Call]:
        with self.lock:
            return [c for c in self.state.calls if c.path.endswith(suffix) and (status is None or c.status == status)]

    # plumbing

    def _take_fault(self, path: str) -> Fault | None:
        with self.lock:
            for i, f in enumerate(self.state.faults):
                if f.path is None or path.endswith(f.path):
                    del self.state.faults[i]
                    return f
        return None

    def _record(self, req: Request, model: str | None, size: int, status: int, stream: bool = False) -> None:
        with self.lock:
            self.state.calls.append(
                Call(
                    req.path,
                    model,
                    size,
                    status,
                    req.headers.get("X-DashScope-WorkSpace"),
                    stream,
                    time.monotonic(),
                    self.region_for(req),
                )
            )

    def handle(self, req: Request) -> None:
        with self.lock:
            self._in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self._in_flight)
        try:
            self._handle(req)
        finally:
            with self.lock:
                self._in_flight -= 1

    def _handle(self, req: Request) -> None:
        if req.path.startswith("/_standin/"):
            return self._control(req)
        body = req.json() if req.body else {}
        model = body.get("model") if isinstance(body, dict) else None
        auth = req.headers.get("Authorization", "")
        if not auth.startswith("Bearer ") or auth.removeprefix("Bearer ") not in self.api_keys:
            self._record(req, model, 0, 401)
            return req.send_json(401, error_body("invalid_api_key", "Incorrect API key provided. "))
        endpoints = ("/embeddings", "/chat/completions", RERANK_PATH)
        if req.method != "POST" or not req.path.endswith(endpoints):
            return req.send_json(404, error_body("NotFound", f"{req.method} {req.path} not found"))
        refused = self.quota.admit(model or "", request_tokens(body))  # before the latency: a 429 is quick
        if refused is not None:
            self._record(req, model, 0, 429)
            return req.send_json(429, error_body(refused.code, refused.message), refused.headers)
        if self.latency:
            time.sleep(self.latency)
        fault = self._take_fault(req.path)
        if fault and fault.kind == "slow":
            time.sleep(fault.delay)
            fault = None
        if fault and fault.kind == "drop":
            self._record(req, model, 0, 0)
            req.drop()
        if fault and fault.kind == "status":
            self._record(req, model, 0, fault.status)
            headers = {"Retry-After": str(fault.retry_after)} if fault.retry_after is not None else {}
            return req.send_json(fault.status, error_body(fault.code, fault.message), headers)
        if req.path.endswith("/embeddings"):
            return self._embeddings(req, body)
        if req.path.endswith(RERANK_PATH):
            return self._rerank(req, body)
        return self._chat(req, body, fault if fault and fault.kind in ("drop_stream", "stream_error") else None)

    def _control(self, req: Request) -> None:
        """Counters for benchmarks that run the stand-in in another process."""
        if req.path == "/_standin/reset":
            self.reset()
            return req.send_json(200, {"reset": True})
        with self.lock:
            stats: dict[str, dict[str, int]] = {}
            for c in self.state.calls:
                path = c.path.rsplit("/", 1)[-1]
                stats.setdefault(path, {}).setdefault(str(c.status), 0)
                stats[path][str(c.status)] += 1
            ok = [c for c in self.state.calls if c.path.endswith("/embeddings") and c.status == 200]
            sizes = [c.size for c in ok]
            span = ok[-1].started - ok[0].started if len(ok) > 1 else 0.0  # first to last admitted call
        return req.send_json(
            200,
            {
                "calls": stats,
                "max_in_flight": self.max_in_flight,
                "max_batch": max(sizes, default=0),
                "embeddings_span": span,
            },
        )

    # endpoints

    def _embeddings(self, req: Request, body: dict[str, Any]) -> None:
        model = body.get("model")
        limits = EMBED_LIMITS.get(model or "")
        texts = body.get("input")
        if isinstance(texts, str):
            texts = [texts]
        size = len(texts) if isinstance(texts, list) else 0

        def bad(status: int, code: str, message: str) -> None:
            self._record(req, model, size, status)
            req.send_json(status, error_body(code, message))

        offered = self.embedding_dimensions(req, model)
        if limits is None and model in CHAT_LIMITS:
            return bad(404, "model_not_supported", f"The model `{model}` does not support the embeddings endpoint.")
        if limits is None or offered is None:  # unknown, or not served in the region this host belongs to
            return bad(404, "model_not_found", f"The model `{model}` does not exist or you do not have access to it.")
        if not isinstance(texts, list) or not texts or not all(isinstance(t, str) for t in texts):
            return bad(400, "InvalidParameter", "input must be a string or a non-empty list of strings")
        if len(texts) > limits["batch"]:
            return bad(
                400,
                "InvalidParameter",
                f"batch size is invalid, it should not be larger than {limits['batch']}.: input.contents",
            )
        for t in texts:
            n = count_tokens(t)
            if n < 1 or n > limits["tokens"]:
                return bad(400, "InvalidParameter", f"Range of input length should be [1, {limits['tokens']}]")
        if body.get("encoding_format", "float") != "float":
            return bad(400, "InvalidParameter", "encoding_format only supports float")
        dims = body.get("dimensions", limits["default"])
        if "dimensions" in body and len(offered) == 1:
            return bad(400, "InvalidParameter", f"{model} does not support the dimensions parameter")
        if dims not in offered:
            return bad(400, "InvalidParameter", f"dimensions must be one of {offered}")
        tokens = sum(count_tokens(t) for t in texts)
        self._record(req, model, size, 200)
        req.send_json(
            200,
            {
                "object": "list",
                "data": [
                    {"object": "embedding", "index": i, "embedding": cached_embedding(t, dims)}
                    for i, t in enumerate(texts)
                ],
                "model": model,
                "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
                "id": str(uuid.uuid4()),
            },
        )

    def _rerank(self, req: Request, body: dict[str, Any]) -> None:
        """The native rerank API: results best first, scored by BM25 over the documents sent."""
        model = str(body.get("model") or "")
        inp: dict[str, Any] = body["input"] if isinstance(body.get("input"), dict) else {}
        query, docs = inp.get("query"), inp.get("documents")
        size = len(docs) if isinstance(docs, list) else 0

        def bad(status: int, code: str, message: str) -> None:
            self._record(req, model, size, status)
            req.send_json(status, native_error(code, message))

        limits = RERANK_LIMITS.get(model)
        max_request = RERANK_REGIONS.get(model, {}).get(self.region_for(req))
        if limits is None or max_request is None:
            return bad(404, "ModelNotFound", f"Model not found ({model})!")
        if not isinstance(query, str) or not query:
            return bad(400, "InvalidParameter", "input.query must be a non-empty string")
        if not isinstance(docs, list) or not docs or not all(isinstance(d, str) for d in docs):
            return bad(400, "InvalidParameter", "input.documents must be a non-empty list of strings")
        if len(docs) > limits["documents"]:
            return bad(400, "InvalidParameter", f"The number of documents should be [1, {limits['documents']}]")
        cap = limits["item_tokens"]
        q_tokens = min(count_tokens(query), cap)
        d_tokens = [min(count_tokens(d), cap) for d in docs]
        total = q_tokens * len(docs) + sum(d_tokens)
        if total > max_request:
            # message wording not documented on the page: the stand-in's own, with the documented limit
            return bad(400, "InvalidParameter", f"Range of input length should be [1, {max_request}]")
        params: dict[str, Any] = body["parameters"] if isinstance(body.get("parameters"), dict) else {}
        top_n = params.get("top_n", len(docs))
        if not isinstance(top_n, int) or top_n < 1:
            return bad(400, "InvalidParameter", "parameters.top_n must be a positive integer")
        scores = bm25_scores(query, docs)
        ranked = sorted(range(len(docs)), key=lambda i: (-scores[i], i))[:top_n]
        results: list[dict[str, Any]] = []
        for i in ranked:
            item: dict[str, Any] = {"index": i, "relevance_score": round(scores[i] / (scores[i] + 4.0), 6)}
            if params.get("return_documents"):
                item["document"] = {"text": docs[i]}
            results.append(item)
        self._record(req, model, size, 200)
        with self.lock:
            self.state.rerank_tokens.append(total)
        req.send_json(
            200, {"output": {"results": results}, "usage": {"total_tokens": total}, "request_id": str(uuid.uuid4())}
        )

    def _answer(self, messages: list[dict[str, Any]]) -> str:
        system = "\n".join(str(m.get("content")) for m in messages if m.get("role") == "system")
        if REWRITE_MARKER in system.lower():
            return rewrite_followup(messages)
        if self.reply is not None:
            return self.reply
        question = next((str(m.get("content")) for m in reversed(messages) if m.get("role") == "user"), "")
        system = "\n".join(str(m.get("content")) for m in messages if m.get("role") == "system")
        sources = re.findall(r"^\[(\d+)\] source: (\S+)", system, re.MULTILINE)
        if sources:
            # quote the passage sentence sharing most words with the question, and cite its passage
            asked = {w.lower() for w in re.findall(r"[^\W_]+", question)}
            best, best_n, best_overlap = "", "1", -1
            parts = re.split(r"^\[(\d+)\] source: [^\n]*\n", system, flags=re.MULTILINE)
            for n, body in zip(parts[1::2], parts[2::2], strict=True):
                for sentence in re.split(r"(?<=[.!?。！？])\s+", body):
                    overlap = len(asked & {w.lower() for w in re.findall(r"[^\W_]+", sentence)})
                    if overlap > best_overlap and not sentence.lstrip().startswith("#"):
                        best, best_n, best_overlap = sentence.strip(), n, overlap
            cited = ", ".join(f"[{n}] {key}" for n, key in sources[:3])
            return f"(stand-in model) From {len(sources)} passages ({cited}): “{best[:200]}” [{best_n}]"
        return f"(stand-in model) I have no documents on this, so here is a general answer to: {question[:120]}"

    def _chat(self, req: Request, body: dict[str, Any], drop: Any) -> None:
        model = body.get("model") or ""
        messages = body.get("messages") or []
        stream = bool(body.get("stream"))
        limits = CHAT_LIMITS.get(model)
        with self.lock:
            self.state.chat_bodies.append(body)

        def bad(status: int, code: str, message: str) -> None:
            self._record(req, model, len(messages), status, stream)
            req.send_json(status, error_body(code, message))

        if limits is None or not self.serves_chat(req, model):
            return bad(404, "model_not_found", f"The model `{model}` does not exist or you do not have access to it.")
        max_input, max_output, thinking_mode = limits
        if self.context_limit is not None:
            max_input = self.context_limit
        if not isinstance(messages, list) or not messages:
            return bad(400, "invalid_parameter_error", '"messages" must not be empty')
        prompt_tokens = sum(count_tokens(str(m.get("content") or "")) + 4 for m in messages)
        if prompt_tokens > max_input:
            return bad(400, "invalid_parameter_error", f"Range of input length should be [1, {max_input}]")
        max_tokens = body.get("max_tokens")
        if max_tokens is not None and not 1 <= int(max_tokens) <= max_output:
            return bad(400, "invalid_parameter_error", f"Range of max_tokens should be [1, {max_output}]")
        if any(MODERATION_TRIGGER in str(m.get("content")) for m in messages):
            return bad(400, "data_inspection_failed", "Input data may contain inappropriate content.")
        thinking = thinking_mode == "always" or (thinking_mode == "optional" and bool(body.get("enable_thinking")))
        if thinking and not stream and thinking_mode == "optional":
            return bad(
                400,
                "invalid_parameter_error",
                "parameter.enable_thinking must be set to false for non-streaming calls",
            )

        problem = chat_options_problem(body)
        if problem:
            return bad(400, "InvalidParameter", problem)
        calls = plan_tool_calls(body)
        if calls:
            self._record(req, model, len(messages), 200, stream)
            return send_tool_calls(req, model, calls, prompt_tokens, stream)
        answer = shape_answer(self._answer(messages), body)
        reasoning = re.findall(r"\s*\S+", "Let me check the passages I was given.") if thinking else []
        pieces, answer_tokens, finish_reason = cut_at_max_tokens(re.findall(r"\s*\S+", answer), max_tokens)
        reasoning_tokens = sum(count_tokens(r) for r in reasoning)
        usage = {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": answer_tokens + reasoning_tokens,
            "total_tokens": prompt_tokens + answer_tokens + reasoning_tokens,
        }
        with self.lock:
            self.state.last_usage = usage
        cid = f"chatcmpl-{uuid.uuid4().hex[:12]}"
        created = int(time.time())
        self._record(req, model, len(messages), 200, stream)
        if not stream:
            message: dict[str, Any] = {"role": "assistant", "content": "".join(pieces)}
            if reasoning:
                message["reasoning_content"] = "".join(reasoning)
            return req.send_json(
                200,
                {
                    "id": cid,
                    "object": "chat.completion",
                    "created": created,
                    "model": model,
                    "choices": [{"index": 0, "message": message, "finish_reason": finish_reason}],
                    "usage": usage,
                },
            )

        def chunk(delta: dict[str, Any], finish: str | None = None) -> bytes:
            payload = {
                "id": cid,
                "object": "chat.completion.chunk",
                "created": created,
                "model": model,
                "choices": [{"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}],
            }
            return f"data: {json.dumps(payload, ensure_ascii=False)}\n\n".encode()

        req.start_chunked(200, "text/event-stream")
        frames = [chunk({"role": "assistant", "content": ""})]
        frames += [chunk({"content": None, "reasoning_content": r}) for r in reasoning]
        frames += [chunk({"content": p}) for p in pieces]
        frames.append(chunk({"content": ""}, finish_reason))
        if (body.get("stream_options") or {}).get("include_usage"):
            frames.append(usage_frame(cid, created, model, usage))
        frames.append(b"data: [DONE]\n\n")
        for n, frame in enumerate(frames):
            if drop is not None and n == drop.after_chunks:
                if drop.kind == "stream_error":
                    return self._stream_error(req, drop)
                req.drop()
            try:
                req.write_chunk(frame)
            except (BrokenPipeError, ConnectionResetError):
                with self.lock:  # the caller closed the stream: generation stops, as DashScope's does
                    self.state.streams_abandoned.append(n)
                raise
            with self.lock:
                self.state.stream_times.append(time.monotonic())
            if self.chunk_delay and n < len(frames) - 2:
                time.sleep(self.chunk_delay)
        req.end_chunked()


# --- chat options and tool calls ----------------------------------------------------------------
# From Model Studio's "OpenAI Chat" API reference and its function-calling guide
# (alibabacloud.com/help/en/model-studio/qwen-api-via-openai-chat-completions and
# .../model-studio/qwen-function-calling, checked 2026-11): temperature [0, 2), top_p (0, 1],
# presence_penalty [-2, 2], seed [0, 2^31 - 1]; stop is a string or a list of strings and the
# output ends before it; response_format type text / json_object / json_schema; tools are
# {"type": "function", "function": {"name", "description", "parameters"}}; tool_choice "auto",
# "none" or {"type": "function", "function": {"name"}}; a "tool" message answers one tool call by
# its tool_call_id. Streamed tool calls arrive as delta.tool_calls pieces: the first piece of a
# call has index, id, type and function.name; later ones carry the same index and more of
# function.arguments; the last chunk has finish_reason "tool_calls".


def chat_options_problem(body: dict[str, Any]) -> str | None:
    """DashScope's 400 message for an out-of-range option, or None."""

    def num(name: str) -> float | None:
        v = body.get(name)
        return None if v is None else float(v)

    t, p, pp, seed = num("temperature"), num("top_p"), num("presence_penalty"), body.get("seed")
    if t is not None and not 0 <= t < 2:
        return "Range of temperature should be [0.0, 2.0)"
    if p is not None and not 0 < p <= 1:
        return "Range of top_p should be (0.0, 1.0]"
    if pp is not None and not -2 <= pp <= 2:
        return "Range of presence_penalty should be [-2.0, 2.0]"
    if seed is not None and (not isinstance(seed, int) or not 0 <= seed <= 2**31 - 1):
        return "Range of seed should be [0, 2147483647]"
    stop = body.get("stop")
    if stop is not None and not (
        isinstance(stop, str) or (isinstance(stop, list) and all(isinstance(x, str) for x in stop))
    ):
        return "stop should be a string or a list of strings"
    fmt = body.get("response_format")
    if fmt is not None and (not isinstance(fmt, dict) or fmt.get("type") not in ("text", "json_object", "json_schema")):
        return "response_format.type should be one of text, json_object, json_schema"
    if isinstance(fmt, dict) and fmt.get("type") == "json_object":
        text = " ".join(str(m.get("content") or "") for m in body.get("messages") or []).lower()
        if "json" not in text:
            return (
                "'messages' must contain the word 'json' in some form, to use 'response_format' of type 'json_object'."
            )
    tools = body.get("tools")
    names: set[str] = set()
    for tool in tools or []:
        fn = tool.get("function") if isinstance(tool, dict) else None
        if (
            not isinstance(tool, dict)
            or tool.get("type") != "function"
            or not isinstance(fn, dict)
            or not fn.get("name")
        ):
            return "tools must be [{'type': 'function', 'function': {'name': ..., 'parameters': ...}}]"
        names.add(str(fn["name"]))
    choice = body.get("tool_choice")
    if isinstance(choice, dict) and (choice.get("function") or {}).get("name") not in names:
        return "tool_choice names a function that is not in tools"
    if isinstance(choice, str) and choice not in ("auto", "none", "required"):
        return "tool_choice should be auto, none or a function"
    asked: set[str] = set()
    for m in body.get("messages") or []:
        if m.get("role") == "assistant":
            for call in m.get("tool_calls") or []:
                asked.add(str(call.get("id")))
        elif m.get("role") == "tool" and str(m.get("tool_call_id")) not in asked:
            return "messages with role 'tool' must be a response to a preceding message with 'tool_calls'"
    return None


def plan_tool_calls(body: dict[str, Any]) -> list[dict[str, Any]]:
    """The stand-in model's tool calls: while no tool result is in, it calls the chosen tool (or the
    first, or every tool with parallel_tool_calls) with the last user question as each string
    parameter it requires."""
    tools = body.get("tools") or []
    choice = body.get("tool_choice", "auto")
    messages = body.get("messages") or []
    if not tools or choice == "none" or (messages and messages[-1].get("role") == "tool"):
        return []
    if isinstance(choice, dict):
        tools = [t for t in tools if t["function"]["name"] == choice["function"]["name"]]
    elif not body.get("parallel_tool_calls"):
        tools = tools[:1]
    question = next((str(m.get("content")) for m in reversed(messages) if m.get("role") == "user"), "")
    calls = []
    for tool in tools:
        params = tool["function"].get("parameters") or {}
        props = params.get("properties") or {}
        required = params.get("required") or list(props)
        args = {name: question[:80] for name in required if (props.get(name) or {}).get("type", "string") == "string"}
        calls.append(
            {
                "id": f"call_{uuid.uuid4().hex[:22]}",
                "name": tool["function"]["name"],
                "arguments": json.dumps(args, ensure_ascii=False),
            }
        )
    return calls


def shape_answer(answer: str, body: dict[str, Any]) -> str:
    """Apply response_format (JSON modes answer a JSON object) and stop (the text ends before it)."""
    messages = body.get("messages") or []
    tool_results = [str(m.get("content")) for m in messages[-1:] if m.get("role") == "tool"]
    if tool_results:
        answer = f"(stand-in model) The tool says: {tool_results[0][:200]}"
    fmt = (body.get("response_format") or {}).get("type")
    if fmt in ("json_object", "json_schema"):
        answer = json.dumps({"answer": answer}, ensure_ascii=False)
    stop = body.get("stop")
    for s in [stop] if isinstance(stop, str) else stop or []:
        if s and s in answer:
            answer = answer[: answer.index(s)]
    return answer


def usage_frame(cid: str, created: int, model: str, usage: dict[str, int]) -> bytes:
    """The last chunk of a stream with ``stream_options.include_usage``: usage, and ``choices`` empty
    (shared/REFERENCE.md, DashScope compatible mode: streaming)."""
    payload = {"id": cid, "object": "chat.completion.chunk", "created": created, "model": model, "choices": []}
    return f"data: {json.dumps({**payload, 'usage': usage})}\n\n".encode()


def send_tool_calls(req: Request, model: str, calls: list[dict[str, Any]], prompt_tokens: int, stream: bool) -> None:
    """Answer with tool calls, in DashScope's non-streaming or streaming wire format."""
    completion = sum(count_tokens(c["name"] + c["arguments"]) for c in calls)
    usage = {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion,
        "total_tokens": prompt_tokens + completion,
    }
    cid, created = f"chatcmpl-{uuid.uuid4().hex[:12]}", int(time.time())
    whole = [
        {"index": i, "id": c["id"], "type": "function", "function": {"name": c["name"], "arguments": c["arguments"]}}
        for i, c in enumerate(calls)
    ]
    if not stream:
        message = {"role": "assistant", "content": "", "tool_calls": whole}
        req.send_json(
            200,
            {
                "id": cid,
                "object": "chat.completion",
                "created": created,
                "model": model,
                "choices": [{"index": 0, "message": message, "finish_reason": "tool_calls"}],
                "usage": usage,
            },
        )
        return

    def frame(delta: dict[str, Any], finish: str | None = None, **extra: Any) -> bytes:
        choices = [{"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}] if delta is not None else []
        payload = {
            "id": cid,
            "object": "chat.completion.chunk",
            "created": created,
            "model": model,
            "choices": choices,
            **extra,
        }
        return f"data: {json.dumps(payload, ensure_ascii=False)}\n\n".encode()

    frames = []
    for i, c in enumerate(calls):
        args = c["arguments"]
        cut = [args[j : j + 12] for j in range(0, len(args), 12)] or [""]
        first = {"index": i, "id": c["id"], "type": "function", "function": {"name": c["name"], "arguments": cut[0]}}
        frames.append(frame({"content": None, "role": "assistant", "tool_calls": [first]}))
        frames += [
            frame({"tool_calls": [{"index": i, "id": "", "type": "function", "function": {"arguments": piece}}]})
            for piece in cut[1:]
        ]
    frames.append(frame({"content": None}, "tool_calls"))
    if (req.json().get("stream_options") or {}).get("include_usage"):
        frames.append(usage_frame(cid, created, model, usage))
    frames.append(b"data: [DONE]\n\n")
    req.start_chunked(200, "text/event-stream")
    for f in frames:
        req.write_chunk(f)
    req.end_chunked()


# --- rate limits (per account and model) -----------------------------------------------------------
# Model Studio "Rate limits" page (docs.qwencloud.com/developer-guides/administration/rate-limits;
# shared/REFERENCE.md): requests per minute AND tokens per minute per account and model, both also
# enforced per second as RPM/60 and TPM/60, so a burst inside one second is refused under the minute
# quota. Refusals are 429 `Throttling.RateQuota` (requests) and `Throttling.AllocationQuota` (tokens,
# worded like OpenAI's quota error, as quoted in public reports: can1357/oh-my-pi#8476,
# openclaw/openclaw#148275). Those reports quote the body only, and none shows a `Retry-After`
# header; the docs ask for a retry with backoff. So by default none is sent, as the service does;
# `send_retry_after=True` adds one (seconds until the window admits the call) to test clients that
# honour it. Modelled: a sliding one-second window; refused calls do not count; chat is charged its
# input tokens at admission. Not modelled: burst protection ("Request rate increased too quickly"),
# whose threshold is not documented.


# A vector costs the stand-in ~2 ms of CPU (55 ms a call of 25): at 30 calls/s that is more than a
# core, and a benchmark would measure the stand-in, not the client. Texts repeat across runs, so
# their vectors are kept (1,024 of 1,536 floats is ~50 MB).
cached_embedding = lru_cache(maxsize=1024)(fake_embedding)


@dataclass
class Refusal:
    code: str
    message: str
    headers: dict[str, str]


def request_tokens(body: Any) -> int:
    """Input tokens of an embeddings or chat body, as the quota counts them (0 for malformed input)."""
    if not isinstance(body, dict):
        return 0
    texts = body.get("input")
    if isinstance(texts, str):
        return count_tokens(texts)
    if isinstance(texts, list):
        return sum(count_tokens(t) for t in texts if isinstance(t, str))
    messages = body.get("messages")
    if isinstance(messages, list):
        return sum(count_tokens(str(m.get("content") or "")) for m in messages if isinstance(m, dict))
    return 0


class Quota:
    """Requests/s and tokens/s per model over a sliding one-second window, checked on arrival."""

    def __init__(
        self, requests_per_second: float | None, tokens_per_second: float | None, send_retry_after: bool = False
    ) -> None:
        self.requests_per_second = requests_per_second
        self.tokens_per_second = tokens_per_second
        self.send_retry_after = send_retry_after
        self._lock = threading.Lock()
        self._admitted: dict[str, deque[tuple[float, int]]] = {}

    def reset(self) -> None:
        with self._lock:
            self._admitted.clear()

    def admit(self, model: str, tokens: int, now: float | None = None) -> Refusal | None:
        if not self.requests_per_second and not self.tokens_per_second:
            return None
        now = time.monotonic() if now is None else now
        with self._lock:
            log = self._admitted.setdefault(model, deque())
            while log and now - log[0][0] >= 1.0:
                log.popleft()
            if self.requests_per_second and len(log) + 1 > self.requests_per_second:
                return self._refuse(
                    log, now, "Throttling.RateQuota", "Requests rate limit exceeded, please try again later."
                )
            used = sum(n for _, n in log)
            if self.tokens_per_second and log and used + tokens > self.tokens_per_second:
                return self._refuse(
                    log,
                    now,
                    "Throttling.AllocationQuota",
                    "You exceeded your current quota, please check your plan and billing details.",
                )
            log.append((now, tokens))
        return None

    def _refuse(self, log: deque[tuple[float, int]], now: float, code: str, message: str) -> Refusal:
        headers = {}
        if self.send_retry_after:  # when the oldest admitted call leaves the window
            headers["Retry-After"] = f"{max(0.001, 1.0 - (now - log[0][0])):.3f}"
        return Refusal(code, message, headers)


def main() -> None:  # pragma: no cover - used by the local demo
    import argparse
    import os

    parser = argparse.ArgumentParser(description="DashScope compatible-mode stand-in on loopback")
    parser.add_argument("--port", type=int, default=8801)
    parser.add_argument("--chunk-delay", type=float, default=0.03, help="seconds between streamed chunks")
    parser.add_argument("--latency", type=float, default=0.0, help="seconds before each response")
    parser.add_argument("--rate-limit", type=float, default=None, help="requests per second before 429")
    parser.add_argument("--tokens-limit", type=float, default=None, help="tokens per second before 429")
    parser.add_argument("--retry-after", action="store_true", help="send Retry-After with 429s (DashScope does not)")
    parser.add_argument("--reply", default=None, help="a fixed answer (benchmarks compare equal streams)")
    parser.add_argument("--region", default="ap-southeast-1", choices=REGIONS, help="the region it serves")
    args = parser.parse_args()
    key = os.environ.get("STANDIN_API_KEY", "sk-standin-local-demo")
    server = DashScopeStandIn(
        {key},
        chunk_delay=args.chunk_delay,
        latency=args.latency,
        rate_limit_per_second=args.rate_limit,
        tokens_per_second=args.tokens_limit,
        send_retry_after=args.retry_after,
        reply=args.reply,
        region=args.region,
    ).start(args.port)
    print(f"DashScope stand-in on {server.url}/compatible-mode/v1", flush=True)
    threading.Event().wait()


if __name__ == "__main__":  # pragma: no cover
    main()
