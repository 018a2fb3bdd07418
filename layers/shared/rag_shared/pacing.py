"""Pacing DashScope calls at the account's ceiling, on requests/s and tokens/s at once.

DashScope limits each account and model to requests per minute (RPM) and tokens per minute (TPM),
both also enforced per second as RPM/60 and TPM/60, so a burst inside one second is refused even
under the minute quota (Model Studio "Rate limits" page, docs.qwencloud.com/developer-guides/
administration/rate-limits; shared/REFERENCE.md). A refusal is HTTP 429 ``Throttling.RateQuota``
(requests) or ``Throttling.AllocationQuota`` (tokens).

:class:`Pacer` schedules each call at the earliest time that keeps both the requests and the
tokens sent in any window of one second under the allowed rate. The allowed rate of each dimension
is adaptive (AIMD): it starts at the configured quota divided by the number of instances that share
it, grows additively while calls succeed (up to the whole quota, when the others are idle), and is
cut multiplicatively, once per window, on a 429 of that dimension; a ``Retry-After`` holds every
call until it has passed. Without a configured quota the first 429 teaches it: the rate then
becomes a fraction of what was actually sent in the last second. Instances sharing one quota thus
converge to fair shares, as TCP flows do, instead of fighting.

Everything here is pure and takes the time from an injected clock; callers sleep the delay they
are given (``time.sleep`` on threads, ``asyncio.sleep`` on the event loop).
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Literal

Kind = Literal["requests", "tokens", "both"]

WINDOW_SECONDS = 1.0  # DashScope enforces RPM/60 and TPM/60 per second (rate-limits page)


@dataclass
class _Sent:
    at: float
    tokens: float
    outcome: int = 0  # 0 reserved or in flight, 1 admitted, 2 refused
    done: float = float("inf")  # when the answer came back


# Lower bounds for a quota learned from 429s (none configured): 1 request/s and 1,000 tokens/s per
# instance, far below any embedding model's quota (thousands of requests per minute), and the step
# a learned rate grows by is at least ``increase`` x 10 x that minimum per second (from 1 call/s to
# 30 in about 2.5 minutes). A configured quota (DASHSCOPE_RPM/TPM) has no such bounds: it is known.
MIN_LEARNED_REQUESTS = 1.0
MIN_LEARNED_TOKENS = 1000.0
LEARN_STEP_BASE = 10.0


@dataclass(frozen=True)
class Probe:
    """How an allowed rate grows while calls wait for it (per second, as fractions of the rate).

    ``fast`` below the fair share (quota / instances sharing it) and below the rate the last 429
    came at: an instance cut deep, or refused for a peer's overshoot, gets back within seconds.
    Above it: the additive step, plus ``convex`` x seconds of quiet x the rate, the quiet counted
    from the start until the first 429 and, after one, from ``patience`` seconds past the hold.
    Just after a cut it creeps towards the ceiling it met (few 429s); the longer nothing is refused,
    the likelier peers have finished or are fewer than the share assumed, and the faster it probes
    for their part (the shape of CUBIC's window, RFC 9438, without its arithmetic). After a cut
    nothing grows for ``hold`` seconds: the window that refused must empty first.

    The defaults were chosen on simulated fleets (tests/shared/test_pacing.py): 2 to 5 instances on
    one per-second limit reach about 95% of it after a warm-up with 2-7% of calls refused (all
    retried); a larger ``convex`` or a fast search before the first 429 helps an instance alone
    with a share of 1/5 but makes 3 instances at their exact shares overshoot and finish apart."""

    fast: float = 0.5
    convex: float = 0.1
    patience: float = 2 * WINDOW_SECONDS
    hold: float = 2 * WINDOW_SECONDS


@dataclass
class Dimension:
    """One limited quantity (requests or tokens) per second: its quota and the rate allowed now."""

    quota: float | None  # the account's whole quota per second; None: unknown, learned from 429s
    rate: float | None  # allowed now; None: not limited until a 429 teaches a rate
    increase_per_second: float  # additive increase while nothing is refused
    floor: float
    fair: float = 0.0  # the configured quota / share: where an instance climbs back to fast
    # never learned below this, and never grown more slowly than ``increase`` times it per second: a
    # rate learned from a few isolated 429s (burst protection, a neighbour's spike) underestimates
    # the quota, and cut after cut it would otherwise shrink to a call a minute and stay there
    minimum: float = 0.0
    last_cut: float = float("-inf")
    last_grow: float = 0.0
    calm_from: float = 0.0  # growth runs from here: the start, or a cut plus the hold
    met: float = float("inf")  # the rate a 429 last came at (CUBIC's W_max)

    @classmethod
    def make(cls, quota: float | None, share: float, now: float, increase: float, minimum: float) -> Dimension:
        start = quota / share if quota else None
        step = increase * start if start else 0.0
        floor = start * 0.05 if start else 0.0
        return cls(
            quota,
            start,
            step,
            floor,
            fair=start or 0.0,
            minimum=0.0 if start else minimum,
            last_grow=now,
            calm_from=now,
        )

    def grow(self, now: float, limited: bool, probe: Probe) -> None:
        """Increase for the time since the last change (see :class:`Probe`), capped at the whole
        quota; only while the rate held calls back (a rate nobody uses proves nothing, as RFC 7661
        says of TCP)."""
        quiet = now - self.calm_from
        if limited and self.rate is not None and self.increase_per_second and quiet > 0:
            dt = min(max(0.0, now - self.last_grow), quiet)
            back_to = min(self.fair, self.met)  # the fair share, unless a 429 came below it
            if self.rate < back_to:
                self.rate = min(back_to, self.rate + probe.fast * self.rate * dt)
            else:
                # before any 429, from the start; after one, ``patience`` after the hold
                probing = quiet if self.met == float("inf") else max(0.0, quiet - probe.patience)
                self.rate += (self.increase_per_second + probe.convex * probing * self.rate) * dt
            if self.quota is not None:
                self.rate = min(self.rate, self.quota)
        self.last_grow = now

    def cut(self, now: float, sent: float, admitted: float, beta: float, increase: float, hold: float) -> bool:
        """Multiplicative decrease, at most once per window (the 429s of one overshoot arrive
        together), to ``beta`` x what the service admitted of this instance's calls in the last
        window. When the quota's window is full, the instances' admitted rates add up to the quota,
        so each lands on its part of it at once, whatever it had grown to (a cut of the rate it was
        allowed, x the share admitted, overshot, and the 429s went on until the next window's)."""
        if now - self.last_cut < WINDOW_SECONDS:
            return False
        base = max(sent, 1.0) if self.rate is None else self.rate  # unknown: what was sent teaches it
        current = min(base, max(admitted, base * 0.5))  # at most halved per window
        self.met = base  # the rate allowed when it came
        self.rate = max(self.floor, self.minimum, beta * current)
        if not self.increase_per_second:  # learned, not configured: grow by a fraction of it per second
            self.increase_per_second = increase * max(self.rate, LEARN_STEP_BASE * self.minimum)
            self.floor = max(0.05 * self.rate, self.minimum)
        self.last_cut = now
        self.last_grow = now
        self.calm_from = now + hold
        return True


@dataclass
class Permit:
    """A reserved slot: sleep ``delay`` seconds, :meth:`Pacer.confirm` it, then send. ``settle``
    with the tokens billed."""

    at: float
    delay: float
    tokens: float
    _entry: _Sent = field(repr=False)


class Pacer:
    """Schedules calls under requests/s and tokens/s limits that adapt to 429s. Thread-safe."""

    def __init__(
        self,
        *,
        requests_per_minute: float | None = None,
        tokens_per_minute: float | None = None,
        share: float = 1.0,
        beta: float = 0.97,
        increase: float = 0.02,
        slack: float = 0.05,
        probe: Probe | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if share < 1:
            raise ValueError("share must be at least 1 (the number of instances sharing the quota)")
        self.clock = clock
        now = clock()
        rpm, tpm = requests_per_minute, tokens_per_minute
        self.requests = Dimension.make(rpm / 60 if rpm else None, share, now, increase, MIN_LEARNED_REQUESTS)
        self.tokens = Dimension.make(tpm / 60 if tpm else None, share, now, increase, MIN_LEARNED_TOKENS)
        self.beta = beta
        self.increase = increase
        self.probe = probe or Probe()
        # the window the log keeps is a little longer than the service's, so that arrival jitter
        # cannot put two calls we spaced a second apart into one of its windows
        self.window = WINDOW_SECONDS + slack
        self.hold_until = float("-inf")
        self.throttled = 0
        self._log: deque[_Sent] = deque()
        self._next_request = float("-inf")  # even spacing: no burst for burst protection to refuse
        self._next_tokens = float("-inf")
        self._limited = False
        self._lock = threading.Lock()

    # --- scheduling (pure given the clock) -----------------------------------------------------

    def _prune(self, now: float) -> None:
        while self._log and self._log[0].at <= now - self.window - WINDOW_SECONDS:
            self._log.popleft()

    def _allowance(self, dim: Dimension) -> float:
        """What one of our windows (a little longer than the service's) may hold. At the whole
        quota, the quota's per-second count: our calls alone can fill the service's window, and
        the slack keeps arrival jitter from putting one too many into it. Below it, the rate times
        our window, the rate spacing gives: flooring a share of the quota to a whole count per
        window would lose up to a call per window, 10% at 10 calls/s, for nothing."""
        rate = dim.rate or 0.0
        if dim.quota is not None and rate >= dim.quota:
            return rate * WINDOW_SECONDS
        return rate * self.window

    def _fits_from(self, start: float, tokens: float) -> float:
        """Earliest time >= start at which the sliding windows hold one more call of ``tokens``."""
        req_rate, tok_rate = self.requests.rate, self.tokens.rate
        if req_rate is None and tok_rate is None:
            return start
        # in time order (every slot is at or after the one before); a refused call took nothing
        # from the quota's window (it is not admitted), so it holds no place in ours either
        log = [e for e in self._log if e.outcome < 2]
        req_allowed = self._allowance(self.requests)
        tok_allowed = self._allowance(self.tokens)
        at, first = start, 0
        while first < len(log) and at - log[first].at >= self.window:
            first += 1
        while first < len(log):
            n = len(log) - first
            over_req = req_rate is not None and n + 1 > max(req_allowed, 1.0)
            # a call bigger than a whole window's tokens goes alone, into an empty window
            over_tok = tok_rate is not None and sum(e.tokens for e in log[first:]) + tokens > tok_allowed
            if not (over_req or over_tok):
                break
            at = max(at, log[first].at + self.window)  # wait for the oldest call in the window to leave it
            first += 1
        return at

    def reserve(self, tokens: float) -> Permit:
        """The earliest slot for a call of ``tokens`` (an estimate; settle the real count later)."""
        with self._lock:
            return self._reserve(self.clock(), tokens)

    def _reserve(self, now: float, tokens: float) -> Permit:
        self._prune(now)
        self.requests.grow(now, self._limited, self.probe)
        self.tokens.grow(now, self._limited, self.probe)
        entry = self._place(now, _Sent(now, tokens))
        self._limited = entry.at > max(now, self.hold_until)
        return Permit(entry.at, entry.at - now, tokens, entry)

    def _place(self, now: float, entry: _Sent, not_before: float = float("-inf")) -> _Sent:
        """Give ``entry`` the earliest slot after every slot already given, and log it."""
        start = max(now, not_before, self.hold_until, self._next_request, self._next_tokens)
        entry.at = self._fits_from(start, entry.tokens)
        if self.requests.rate:
            self._next_request = entry.at + 1.0 / self.requests.rate
        if self.tokens.rate:
            self._next_tokens = entry.at + entry.tokens / self.tokens.rate
        self._log.append(entry)
        return entry

    def confirm(self, permit: Permit) -> Permit:
        """Call when ``permit``'s delay has passed: send now if the delay of the permit returned is
        0, else sleep it and confirm again. With calls in flight, slots are reserved up to a second
        ahead at the rate of the moment; a 429 or a Retry-After meanwhile moves them (see
        :meth:`_reschedule`), or they would go out at the old rate into a full window."""
        with self._lock:
            now = self.clock()
            at = permit._entry.at
            return replace(permit, at=at, delay=max(0.0, at - now))

    def _reschedule(self, now: float) -> None:
        """A new schedule: the slots reserved for later are given again, in their order, at the
        rate allowed now and after any hold, behind the calls already sent. A call refused just now
        and retried goes behind them too, so one call does not take a whole 429 storm alone."""
        waiting = [e for e in self._log if e.outcome == 0 and e.at > now]
        self._log = deque(e for e in self._log if not (e.outcome == 0 and e.at > now))
        sent = [e.at for e in self._log if e.outcome < 2]  # admitted or in flight
        last = max(sent, default=float("-inf"))
        self._next_request = last + 1.0 / self.requests.rate if self.requests.rate else float("-inf")
        self._next_tokens = float("-inf")
        for e in waiting:  # never earlier: its caller sleeps until the slot it was given
            self._place(now, e, not_before=e.at)

    def settle(self, permit: Permit, tokens: float | None = None) -> None:
        """An admitted call; its estimate replaced by the tokens billed, so the window holds the truth."""
        with self._lock:
            if tokens:
                permit._entry.tokens = tokens
            permit._entry.outcome = 1
            permit._entry.done = self.clock()

    def on_throttle(self, permit: Permit | None, kind: Kind = "both", retry_after: float | None = None) -> None:
        """A 429: cut the refused dimension's rate and honour ``Retry-After`` for every call."""
        with self._lock:
            now = self.clock()
            self.throttled += 1
            if permit is not None:
                permit._entry.outcome, permit._entry.done = 2, now
            # the answers of the last window, by when they came back: a send can be late (a cold
            # client), an answer's time is what the service decided plus a steady latency
            done = [e for e in self._log if now - self.window < e.done <= now]
            sent = done + [e for e in self._log if e.outcome == 0 and e.at <= now]  # and those in flight
            ok = [e for e in done if e.outcome == 1]
            cut = False
            if kind in ("requests", "both"):
                admitted = len(ok) / WINDOW_SECONDS
                cut |= self.requests.cut(
                    now, len(sent) / WINDOW_SECONDS, admitted, self.beta, self.increase, self.probe.hold
                )
            if kind in ("tokens", "both"):
                admitted = sum(e.tokens for e in ok) / WINDOW_SECONDS
                spent = sum(e.tokens for e in sent) / WINDOW_SECONDS
                cut |= self.tokens.cut(now, spent, admitted, self.beta, self.increase, self.probe.hold)
            if retry_after is not None and retry_after > 0 and now + retry_after > self.hold_until:
                self.hold_until = now + retry_after
                cut = True
            if cut:
                self._reschedule(now)

    @property
    def rates(self) -> tuple[float | None, float | None]:
        """(requests/s, tokens/s) allowed now."""
        return self.requests.rate, self.tokens.rate


def throttle_kind(code_or_message: str) -> Kind:
    """Which limit a 429 names: ``Throttling.RateQuota`` requests, ``Throttling.AllocationQuota`` tokens."""
    text = code_or_message.lower()
    if "allocationquota" in text or "token" in text:
        return "tokens"
    if "ratequota" in text:
        return "requests"
    return "both"  # burst protection ("Request rate increased too quickly") or unknown


def parse_retry_after(value: str | None) -> float | None:
    """Seconds from a ``Retry-After`` header (delta-seconds form), or None."""
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        return None  # an HTTP date: not sent by DashScope; fall back to the rate cut
    return min(seconds, 60.0) if seconds > 0 else None


class TokensPerChar:
    """Tokens per character, learned from what the service bills, so a call's token cost is one
    multiplication instead of running the token estimator over every text again."""

    def __init__(self, initial: float | None = None) -> None:
        self.ratio = initial

    def cost(self, chars: int, exact: Callable[[], int]) -> float:
        if self.ratio is None:
            return float(exact())
        return chars * self.ratio

    def learn(self, chars: int, tokens: int) -> None:
        if chars <= 0 or tokens <= 0:
            return
        observed = tokens / chars
        self.ratio = observed if self.ratio is None else 0.8 * self.ratio + 0.2 * observed
