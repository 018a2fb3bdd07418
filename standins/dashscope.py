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

# Independent of the product's catalog on purpose: a product bug must not be mirrored here.
EMBED_LIMITS: dict[str, dict[str, Any]] = {
    "text-embedding-v1": {"batch": 25, "tokens": 2048, "dims": [1536], "default": 1536},
    "text-embedding-v2": {"batch": 25, "tokens": 2048, "dims": [1536], "default": 1536},
    "text-embedding-v3": {
        "batch": 10,
        "tokens": 8192,
        "dims": [1024, 768, 512, 256, 128, 64],
        "default": 1024,
    },
    "text-embedding-v4": {
        "batch": 10,
        "tokens": 8192,
        "dims": [2048, 1536, 1024, 768, 512, 256, 128, 64],
        "default": 1024,
    },
}
CHAT_LIMITS = {  # max input tokens, max output tokens, thinking mode
    "qwen-plus": (129024, 16384, "never"),
    "qwen-turbo": (1000000, 16384, "never"),
    "qwen-max": (30720, 8192, "never"),
    "qwen-long": (10000000, 8192, "never"),
    "qwen3-max": (258048, 65536, "never"),
    "qwen3-235b-a22b": (129024, 16384, "optional"),
    "qwen3-32b": (129024, 16384, "optional"),
    "deepseek-r1": (57344, 8192, "always"),
}
MODERATION_TRIGGER = "FORBIDDEN-TOPIC"
_WORD = re.compile(r"[\u3400-\u9fff]|[^\W_]+|[^\w\s]")


def count_tokens(text: str) -> int:
    return len(_WORD.findall(text))


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


def error_body(code: str, message: str, etype: str = "invalid_request_error") -> dict[str, Any]:
    return {
        "error": {"message": message, "type": etype, "param": None, "code": code},
        "request_id": str(uuid.uuid4()),
    }


@dataclass
class Fault:
    """One injected failure. ``path`` limits it to URLs ending with that suffix."""

    kind: str = "status"  # status | drop | slow | drop_stream
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


@dataclass
class StandInState:
    faults: deque[Fault] = field(default_factory=deque)
    calls: list[Call] = field(default_factory=list)
    last_usage: dict[str, int] | None = None
    stream_times: list[float] = field(default_factory=list)  # when each stream chunk was written
    streams_abandoned: list[int] = field(default_factory=list)  # frames written before the caller hung up


class DashScopeStandIn(StandInServer):
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
    ) -> None:
        super().__init__()
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
        if req.method != "POST" or not (req.path.endswith("/embeddings") or req.path.endswith("/chat/completions")):
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
        return self._chat(req, body, fault if fault and fault.kind == "drop_stream" else None)

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

        if limits is None:
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
        if "dimensions" in body and len(limits["dims"]) == 1:
            return bad(400, "InvalidParameter", f"{model} does not support the dimensions parameter")
        if dims not in limits["dims"]:
            return bad(400, "InvalidParameter", f"dimensions must be one of {limits['dims']}")
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

    def _answer(self, messages: list[dict[str, Any]]) -> str:
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

        def bad(status: int, code: str, message: str) -> None:
            self._record(req, model, len(messages), status, stream)
            req.send_json(status, error_body(code, message))

        if limits is None:
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

        answer = self._answer(messages)
        pieces = re.findall(r"\s*\S+", answer)
        if max_tokens:
            pieces = pieces[: int(max_tokens)]
        reasoning = re.findall(r"\s*\S+", "Let me check the passages I was given.") if thinking else []
        usage = {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": len(pieces) + len(reasoning),
            "total_tokens": prompt_tokens + len(pieces) + len(reasoning),
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
                    "choices": [{"index": 0, "message": message, "finish_reason": "stop"}],
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
        frames.append(chunk({"content": ""}, "stop"))
        if (body.get("stream_options") or {}).get("include_usage"):
            tail: dict[str, Any] = {
                "id": cid,
                "object": "chat.completion.chunk",
                "created": created,
                "model": model,
                "choices": [],
                "usage": usage,
            }
            frames.append(f"data: {json.dumps(tail)}\n\n".encode())
        frames.append(b"data: [DONE]\n\n")
        for n, frame in enumerate(frames):
            if drop is not None and n == drop.after_chunks:
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
    ).start(args.port)
    print(f"DashScope stand-in on {server.url}/compatible-mode/v1", flush=True)
    threading.Event().wait()


if __name__ == "__main__":  # pragma: no cover
    main()
