"""Batch embedding under DashScope's per-call limits.

The embedder never sends more texts in one call than the model accepts (25 for
text-embedding-v1/v2, 10 for v3/v4: shared/REFERENCE.md), keeps input order, never sends an
empty text, embeds a repeated text once, asks the cache before calling, and runs several calls at
once (bounded) so a 1,000-chunk file is not 40 round trips in a row.

With a :class:`rag_shared.pacing.Pacer` every call waits for its slot under the account's
requests/s and tokens/s, and a 429 is retried here, through the pacer, which learns from it; build
the client with ``max_retries=0`` then, so the SDK does not retry 429s blindly out of its sight.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import random
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Protocol

from rag_shared.config import EmbeddingModel, Settings
from rag_shared.dashscope import EmbeddingBatch
from rag_shared.errors import (
    BadRequestError,
    ContentModerationError,
    ContextLengthExceededError,
    EmbeddingDimensionError,
    RagError,
    ThrottledError,
)
from rag_shared.pacing import Pacer, Permit, TokensPerChar, parse_retry_after, throttle_kind
from rag_shared.tokens import estimate_tokens
from rag_shared.usage import Usage

log = logging.getLogger(__name__)

Vector = list[float]


class EmbeddingBackend(Protocol):
    """What the embedder needs from a client; :class:`rag_shared.dashscope.DashScopeClient` is one."""

    def embed_batch(self, texts: Sequence[str], model: EmbeddingModel, dimensions: int) -> EmbeddingBatch: ...

    async def aembed_batch(self, texts: Sequence[str], model: EmbeddingModel, dimensions: int) -> EmbeddingBatch: ...


class EmbeddingCache(Protocol):
    """Vectors already computed, by :func:`content_hash`. The indexer backs it with the index."""

    def get_many(self, hashes: Sequence[str]) -> dict[str, Vector]: ...


def content_hash(text: str, model: str, dimensions: int) -> str:
    """Identifies a vector: same text, model and size give the same vector."""
    return hashlib.sha256(f"{model}\x00{dimensions}\x00{text}".encode()).hexdigest()


@dataclass
class EmbedResult:
    """Vectors aligned with the input; ``None`` where the text was empty (its index is in ``skipped``)."""

    vectors: list[Vector | None]
    skipped: list[int] = field(default_factory=list)
    usage: Usage = field(default_factory=Usage)
    cached: int = 0
    # content_hash of each non-empty text by index, when a cache was asked: the indexer stores
    # them, and need not hash every chunk a second time
    hashes: dict[int, str] = field(default_factory=dict)

    @property
    def calls(self) -> int:
        return self.usage.calls


def plan_batches(texts: Sequence[str], cap: int, known: set[int] | None = None) -> tuple[list[list[int]], list[int]]:
    """Indices to send, grouped in batches of at most ``cap`` distinct texts, and the empty ones.

    A text repeated in the input is sent once (its first index); ``known`` indices (cache hits)
    are not sent.
    """
    skipped: list[int] = []
    first_seen: dict[str, int] = {}
    to_send: list[int] = []
    for i, text in enumerate(texts):
        if not text or not text.strip():
            skipped.append(i)
        elif known and i in known:
            continue
        elif text not in first_seen:
            first_seen[text] = i
            to_send.append(i)
    return [to_send[i : i + cap] for i in range(0, len(to_send), cap)], skipped


def pacer_from_settings(settings: Settings) -> Pacer:
    """The indexer's pacer: the configured quota (DASHSCOPE_RPM/TPM) over DASHSCOPE_QUOTA_SHARE."""
    return Pacer(
        requests_per_minute=settings.dashscope_rpm,
        tokens_per_minute=settings.dashscope_tpm,
        share=settings.dashscope_quota_share,
    )


def retry_after_of(exc: BaseException) -> float | None:
    """``Retry-After`` of the HTTP answer behind ``exc``: an attribute, or the SDK error it was mapped from."""
    seen: BaseException | None = exc
    for _ in range(5):
        if seen is None:
            return None
        direct = getattr(seen, "retry_after", None)
        if isinstance(direct, int | float):
            return float(direct)
        response = getattr(seen, "response", None)
        headers = getattr(response, "headers", None)
        if headers is not None:
            return parse_retry_after(headers.get("retry-after"))
        seen = seen.__cause__ or seen.__context__
    return None


def _backoff(attempt: int) -> float:
    """Full-jitter exponential backoff for transient failures (not throttles: the pacer spaces those)."""
    return random.uniform(0, min(8.0, 0.25 * 2**attempt))  # noqa: S311 - jitter, not security


# A 400 that names one text (moderation, too long, an invalid input), not the call: a shared call
# refused with one of these is split to find the text, so the other files' texts still get vectors.
TEXT_FAULTS: tuple[type[RagError], ...] = (ContentModerationError, ContextLengthExceededError, BadRequestError)


@dataclass
class _Waiter:
    """One :meth:`Embedder.embed` call's texts waiting in the packer."""

    missing: set[str]
    vectors: dict[str, Vector] = field(default_factory=dict)
    usage: Usage = field(default_factory=Usage)
    error: BaseException | None = None
    done: threading.Event = field(default_factory=threading.Event)

    def fail(self, exc: BaseException) -> None:
        if self.error is None:
            self.error = exc
        self.done.set()

    def give(self, text: str, vector: Vector) -> None:
        if text in self.missing:
            self.vectors[text] = vector
            self.missing.discard(text)
        if not self.missing:
            self.done.set()


class Packer:
    """Packs the texts of concurrent :meth:`Embedder.embed` calls (the small files of one SQS batch)
    into shared calls of up to ``cap`` texts: a call goes out as soon as it is full, or ``linger``
    seconds after its first text arrived. Vectors are routed back to each caller by text (a text
    two callers share is sent once); usage is split by estimated tokens, the call counted once.

    Failures: a call that still fails after the embedder's retries fails every caller whose texts
    were in it (each SQS record then fails and is retried on its own); a 400 naming a text
    (:data:`TEXT_FAULTS`) is split in halves and retried until the offending text is alone, so only
    the callers that sent it fail."""

    def __init__(
        self, cap: int, linger: float, send: Callable[[list[str]], EmbeddingBatch], run: Callable[..., object]
    ) -> None:
        """``send`` makes one (paced, retried) call; ``run(fn, arg)`` runs it on a worker thread."""
        self.cap, self.linger, self._send, self._run = cap, linger, send, run
        self._lock = threading.Lock()
        self._pending: dict[str, list[_Waiter]] = {}
        self._timer: threading.Timer | None = None
        self._generation = 0

    def embed(self, texts: Sequence[str]) -> tuple[dict[str, Vector], Usage]:
        """Vectors of ``texts`` (distinct, non-empty) by text, and this caller's share of the usage."""
        waiter = _Waiter(set(texts))
        if not waiter.missing:
            return {}, Usage()
        full: list[dict[str, list[_Waiter]]] = []
        with self._lock:
            for text in waiter.missing:
                self._pending.setdefault(text, []).append(waiter)
                if len(self._pending) >= self.cap:
                    full.append(self._take())
            if self._pending and self._timer is None:
                self._timer = threading.Timer(self.linger, self._flush, args=(self._generation,))
                self._timer.daemon = True
                self._timer.start()
        for batch in full:
            self._run(self._call, batch)
        waiter.done.wait()
        if waiter.error is not None:
            raise waiter.error
        return waiter.vectors, waiter.usage

    def _take(self) -> dict[str, list[_Waiter]]:
        """The pending texts as one call (under the lock); the linger timer of those is void."""
        batch, self._pending = self._pending, {}
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._generation += 1
        return batch

    def _flush(self, generation: int) -> None:
        with self._lock:
            if generation != self._generation or not self._pending:
                return  # already sent full
            batch = self._take()
        self._run(self._call, batch)  # on the embedder's threads, bounded like every other call

    def _call(self, batch: dict[str, list[_Waiter]]) -> None:
        texts = list(batch)
        try:
            result = self._send(texts)
        except TEXT_FAULTS as exc:
            if len(texts) == 1:
                for w in batch[texts[0]]:
                    w.fail(exc)
                return
            half = len(texts) // 2
            log.warning("a shared embedding call was refused (%s); splitting it to find the text", exc.code)
            self._call({t: batch[t] for t in texts[:half]})
            self._call({t: batch[t] for t in texts[half:]})
            return
        except BaseException as exc:  # every caller in the call fails (and is retried on its own)
            for waiters in batch.values():
                for w in waiters:
                    w.fail(exc)
            return
        self._route(batch, texts, result)

    @staticmethod
    def _route(batch: dict[str, list[_Waiter]], texts: list[str], result: EmbeddingBatch) -> None:
        # split by estimated tokens, not characters: a Chinese text costs ~4x the tokens of an
        # English one of the same length, and each file's log line and metrics report its share
        weight: dict[int, int] = {}
        owners: dict[int, _Waiter] = {}
        for text in texts:
            tokens = estimate_tokens(text)
            for w in batch[text]:
                owners[id(w)] = w
                weight[id(w)] = weight.get(id(w), 0) + tokens
        total = sum(weight.values()) or 1
        u = result.usage
        for n, (key, w) in enumerate(owners.items()):
            share = weight[key] / total
            w.usage += Usage(
                prompt_tokens=round(u.prompt_tokens * share),
                cost_usd=u.cost_usd * share,
                calls=u.calls if n == 0 else 0,
            )
        for text, vector in zip(texts, result.vectors, strict=True):
            for w in batch[text]:
                w.give(text, vector)


class Embedder:
    def __init__(
        self,
        backend: EmbeddingBackend,
        model: EmbeddingModel,
        dimensions: int | None = None,
        *,
        batch_size: int | None = None,
        concurrency: int = 4,
        cache: EmbeddingCache | None = None,
        pacer: Pacer | None = None,
        max_attempts: int = 8,
        pack_linger: float = 0.0,
    ) -> None:
        """``pack_linger`` (seconds, > 0): the last, partly filled call of each :meth:`embed` waits
        this long in a shared :class:`Packer` for other concurrent callers' texts (the indexer's
        small files); 0 sends each caller's calls on their own."""
        self.backend = backend
        self.pacer = pacer
        self.max_attempts = max(1, max_attempts)
        self._tokens_per_char = TokensPerChar()
        self._warmed = False
        self._warm_lock = threading.Lock()
        self.model = model
        self.dimensions = dimensions or model.default_dimensions
        if batch_size and batch_size > model.max_batch:
            log.warning(
                "embedding batch size %d exceeds %s's cap of %d texts per call; using %d",
                batch_size,
                model.name,
                model.max_batch,
                model.max_batch,
            )
        self.batch_size = min(batch_size or model.max_batch, model.max_batch)
        self.concurrency = max(1, concurrency)
        self.cache = cache
        self._pool: ThreadPoolExecutor | None = None
        self._pool_lock = threading.Lock()
        self.packer = (
            Packer(self.batch_size, pack_linger, self._send, lambda fn, arg: self._executor().submit(fn, arg))
            if pack_linger > 0
            else None
        )

    def _executor(self) -> ThreadPoolExecutor:
        """One pool per embedder: concurrent :meth:`embed` calls share its ``concurrency`` slots, so
        the indexer can embed the next window while the last calls of this one finish."""
        with self._pool_lock:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(max_workers=self.concurrency, thread_name_prefix="embed")
            return self._pool

    def hash(self, text: str) -> str:
        return content_hash(text, self.model.name, self.dimensions)

    def _check(self, texts: Sequence[str]) -> None:
        # The estimate counts at most one token per character, so only a text longer than the limit
        # in characters can exceed it: chunks never are, and are not tokenised a second time here.
        limit = self.model.max_tokens_per_text
        too_long = [i for i, t in enumerate(texts) if len(t) > limit and estimate_tokens(t) > limit]
        if too_long:
            raise ValueError(f"texts {too_long[:10]} exceed {self.model.name}'s {limit} tokens per text")

    def _validated(self, batch: EmbeddingBatch) -> EmbeddingBatch:
        for vector in batch.vectors:
            if len(vector) != self.dimensions:
                raise EmbeddingDimensionError(
                    f"{self.model.name} returned a {len(vector)}-dimensional vector; "
                    f"the index expects {self.dimensions} (EMBEDDING_DIMENSIONS)"
                )
        return batch

    def _from_cache(self, texts: Sequence[str]) -> tuple[dict[int, Vector], dict[int, str]]:
        """Cached vectors by input index, and the content hashes computed to find them."""
        if self.cache is None:
            return {}, {}
        hashes = {i: self.hash(t) for i, t in enumerate(texts) if t and t.strip()}
        found = self.cache.get_many(sorted(set(hashes.values())))
        cached = {i: found[h] for i, h in hashes.items() if h in found and len(found[h]) == self.dimensions}
        return cached, hashes

    def _assemble(
        self,
        texts: Sequence[str],
        cached: dict[int, Vector],
        batches: list[list[int]],
        results: list[EmbeddingBatch],
        skipped: list[int],
        hashes: dict[int, str],
        packed: tuple[dict[str, Vector], Usage] = ({}, Usage()),
    ) -> EmbedResult:
        by_text: dict[str, Vector] = dict(packed[0])
        usage = packed[1]
        for indices, result in zip(batches, results, strict=True):
            usage += result.usage
            for i, vector in zip(indices, result.vectors, strict=True):
                by_text[texts[i]] = vector
        for i, vector in cached.items():
            by_text.setdefault(texts[i], vector)
        skip = set(skipped)
        vectors = [None if i in skip else by_text[t] for i, t in enumerate(texts)]
        return EmbedResult(vectors, skipped, usage, cached=len(cached), hashes=hashes)

    def embed(self, texts: Sequence[str]) -> EmbedResult:
        """Embed with up to ``concurrency`` calls in flight on threads (the indexer's path)."""
        self._check(texts)
        cached, hashes = self._from_cache(texts)
        batches, skipped = plan_batches(texts, self.batch_size, set(cached))
        if skipped:
            log.info("skipped %d empty texts at %s", len(skipped), skipped[:20])

        def call(indices: list[int]) -> EmbeddingBatch:
            return self._send([texts[i] for i in indices])

        tail: list[int] = []
        if self.packer is not None and batches and len(batches[-1]) < self.batch_size:
            tail = batches.pop()  # a partly filled call: shared with other callers' texts
        if not tail and (len(batches) <= 1 or self.concurrency == 1):
            results = [call(b) for b in batches]
            packed: tuple[dict[str, Vector], Usage] = ({}, Usage())
        else:
            pending = [self._executor().submit(call, b) for b in batches]
            try:
                packed = self.packer.embed([texts[i] for i in tail]) if self.packer and tail else ({}, Usage())
            finally:
                results = [f.result() for f in pending]
        return self._assemble(texts, cached, batches, results, skipped, hashes, packed)

    def _send(self, batch: list[str]) -> EmbeddingBatch:
        """One call (paced and retried when there is a pacer), its vectors checked."""
        if self.pacer is None:
            return self._validated(self.backend.embed_batch(batch, self.model, self.dimensions))
        return self._validated(self._paced(batch, self.pacer))

    async def aembed(self, texts: Sequence[str]) -> EmbedResult:
        """The same on the event loop (the chat app's path)."""
        self._check(texts)
        cached, hashes = self._from_cache(texts)
        batches, skipped = plan_batches(texts, self.batch_size, set(cached))
        gate = asyncio.Semaphore(self.concurrency)

        async def call(indices: list[int]) -> EmbeddingBatch:
            async with gate:
                batch = [texts[i] for i in indices]
                if self.pacer is None:
                    return self._validated(await self.backend.aembed_batch(batch, self.model, self.dimensions))
                return self._validated(await self._apaced(batch, self.pacer))

        results = list(await asyncio.gather(*(call(b) for b in batches)))
        return self._assemble(texts, cached, batches, results, skipped, hashes)

    # --- paced calls ---------------------------------------------------------------------------

    def _warm(self, name: str) -> None:
        """Build a lazily created HTTP client before the first slot is taken: built inside the
        first calls, it would send them late, in a bunch, which the per-second quota refuses."""
        if self._warmed:
            return
        with self._warm_lock:  # every caller waits until it is built
            if not self._warmed:
                build = getattr(self.backend, name, None)
                if callable(build):
                    build()
                self._warmed = True

    def _reserve(self, batch: list[str], pacer: Pacer) -> tuple[Permit, int]:
        chars = sum(len(t) for t in batch)
        cost = self._tokens_per_char.cost(chars, lambda: sum(estimate_tokens(t) for t in batch))
        return pacer.reserve(cost), chars

    def _settle(self, pacer: Pacer, permit: Permit, chars: int, result: EmbeddingBatch) -> None:
        tokens = result.usage.prompt_tokens
        pacer.settle(permit, tokens or None)
        self._tokens_per_char.learn(chars, tokens)

    def _failed(self, pacer: Pacer, permit: Permit, exc: RagError, attempt: int) -> float:
        """Seconds to wait before the next attempt, or re-raise: a throttle goes back to the pacer
        (which cuts the rate and holds for Retry-After); another transient failure backs off."""
        if attempt >= self.max_attempts or not exc.retryable:
            raise exc
        if isinstance(exc, ThrottledError):
            pacer.on_throttle(permit, throttle_kind(exc.message), retry_after_of(exc))
            log.info("embedding call throttled (attempt %d); rates now %s", attempt, pacer.rates)
            return 0.0
        return _backoff(attempt)

    def _paced(self, batch: list[str], pacer: Pacer) -> EmbeddingBatch:
        self._warm("sync_client")
        for attempt in range(1, self.max_attempts + 1):
            permit, chars = self._reserve(batch, pacer)
            while permit.delay > 0:  # a 429 while it slept may move its slot (Pacer.confirm)
                time.sleep(permit.delay)
                permit = pacer.confirm(permit)
            try:
                result = self.backend.embed_batch(batch, self.model, self.dimensions)
            except RagError as exc:
                time.sleep(self._failed(pacer, permit, exc, attempt))
                continue
            self._settle(pacer, permit, chars, result)
            return result
        raise AssertionError("unreachable")

    async def _apaced(self, batch: list[str], pacer: Pacer) -> EmbeddingBatch:
        self._warm("async_client")
        for attempt in range(1, self.max_attempts + 1):
            permit, chars = self._reserve(batch, pacer)
            while permit.delay > 0:
                await asyncio.sleep(permit.delay)
                permit = pacer.confirm(permit)
            try:
                result = await self.backend.aembed_batch(batch, self.model, self.dimensions)
            except RagError as exc:
                await asyncio.sleep(self._failed(pacer, permit, exc, attempt))
                continue
            self._settle(pacer, permit, chars, result)
            return result
        raise AssertionError("unreachable")
