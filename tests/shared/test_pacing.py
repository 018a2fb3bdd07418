"""The pacer against a simulated DashScope quota, on a fake clock: it reaches the binding ceiling,
learns an unknown one from 429s, honours Retry-After, and instances sharing a quota converge."""

from __future__ import annotations

import heapq
from dataclasses import dataclass, field

import pytest
from rag_shared.pacing import Pacer, Permit, TokensPerChar, parse_retry_after, throttle_kind

from standins.dashscope import Quota, Refusal


class FakeClock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


@dataclass
class Client:
    """One indexer: a pacer and ``workers`` calls in flight, each ``latency`` long."""

    pacer: Pacer
    workers: int = 8
    start: float = 0.0
    tokens: int = 100
    calls: int | None = None  # a job of this many calls (None: endless)
    stop: float = float("inf")  # no call reserved after this
    ok: list[float] = field(default_factory=list)  # when each admitted call was sent
    refused: int = 0
    begun: int = 0


def simulate(clock: FakeClock, quota: Quota, clients: list[Client], seconds: float, latency: float = 0.2) -> None:
    """Discrete-event run: each worker reserves a slot, sends at it, and on success (or a quick 429)
    reserves again; the stand-in's quota decides on arrival, as the service does."""
    events: list[tuple[float, int, int, str]] = []
    seq = 0
    for ci, c in enumerate(clients):
        for _ in range(c.workers if c.calls is None else min(c.workers, c.calls)):
            c.begun += 1
            heapq.heappush(events, (c.start, seq, ci, "reserve"))
            seq += 1
    pending: dict[int, Permit] = {}
    while events:
        t, n, ci, what = heapq.heappop(events)
        if t > seconds:
            break
        clock.t = t
        c = clients[ci]
        if what == "reserve":
            permit = c.pacer.reserve(c.tokens)
            pending[n] = permit
            heapq.heappush(events, (permit.at, n, ci, "send"))
            continue
        permit = pending.pop(n)
        confirmed = c.pacer.confirm(permit)  # as the embedder does when its sleep ends
        if confirmed.delay > 0:  # a 429 meanwhile: a new slot, later
            pending[n] = confirmed
            heapq.heappush(events, (confirmed.at, n, ci, "send"))
            continue
        permit = confirmed
        refused = quota.admit("m", c.tokens, now=t)
        if refused is None:
            c.ok.append(t)
            c.pacer.settle(permit, c.tokens)
            if (c.calls is None or c.begun < c.calls) and t + latency < c.stop:
                c.begun += 1
                heapq.heappush(events, (t + latency, n, ci, "reserve"))
        else:
            c.refused += 1
            clock.t = t + 0.01  # a 429 comes back at once: the stand-in checks before its latency
            c.pacer.on_throttle(
                permit, throttle_kind(refused.code), parse_retry_after(refused.headers.get("Retry-After"))
            )
            heapq.heappush(events, (t + 0.01, n, ci, "reserve"))


def rate(c: Client, since: float, until: float) -> float:
    return sum(1 for t in c.ok if since <= t < until) / (until - since)


def test_configured_quota_runs_at_the_ceiling_with_few_429s():
    clock = FakeClock()
    c = Client(Pacer(requests_per_minute=30 * 60, clock=clock))
    simulate(clock, Quota(30, None), [c], seconds=30)
    assert rate(c, 0, 30) >= 0.9 * 30
    assert c.refused <= 0.02 * len(c.ok)


def test_unknown_quota_is_learned_from_429s():
    clock = FakeClock()
    c = Client(Pacer(clock=clock), workers=16)  # 16 in flight at 0.2 s could send 80/s: the ceiling binds
    simulate(clock, Quota(30, None), [c], seconds=60)
    assert c.refused >= 1  # it had to find the ceiling
    learned = c.pacer.requests.met  # the rate allowed when the last 429 came: the ceiling it found
    assert 0.7 * 30 <= learned <= 1.2 * 30
    assert rate(c, 10, 60) >= 0.9 * 30
    assert c.refused <= 0.03 * len(c.ok)


def test_tokens_per_second_binds_when_it_is_the_tighter_limit():
    clock = FakeClock()
    c = Client(Pacer(requests_per_minute=30 * 60, tokens_per_minute=2000 * 60, clock=clock), tokens=300)
    simulate(clock, Quota(30, 2000), [c], seconds=30)
    ceiling = 2000 // 300  # 6 calls of 300 tokens fit in any second: well under 30 requests/s
    assert 0.9 * ceiling <= rate(c, 0, 30) <= ceiling * 1.01
    assert c.refused <= 0.03 * len(c.ok)


def test_unknown_token_limit_is_learned_from_allocation_quota_429s():
    clock = FakeClock()
    c = Client(Pacer(requests_per_minute=30 * 60, clock=clock), tokens=300)
    simulate(clock, Quota(30, 2000), [c], seconds=60)
    assert c.refused >= 1
    learned = c.pacer.tokens.met
    assert 0.7 * 2000 <= learned <= 1.2 * 2000
    assert rate(c, 10, 60) >= 0.9 * (2000 // 300)


def test_429_cuts_the_refused_dimension_and_retry_after_holds_every_call():
    clock = FakeClock()
    p = Pacer(requests_per_minute=600, tokens_per_minute=60000, clock=clock)
    first = p.reserve(10)
    assert first.delay == 0
    p.on_throttle(first, "requests", retry_after=2.5)
    cut = p.requests.rate
    assert cut is not None and 0.45 * 10 <= cut < 10  # its only call was refused: at most halved
    assert p.tokens.rate == pytest.approx(1000)  # the token limit was not the one refused
    assert p.reserve(10).delay >= 2.5
    clock.t = 0.5
    p.on_throttle(None, "requests")  # the same overshoot's other 429s do not cut again
    assert p.requests.rate == cut
    clock.t = 2.0
    p.on_throttle(None, "tokens")
    tokens = p.tokens.rate
    assert tokens is not None and tokens < 1000


def test_two_instances_sharing_one_quota_converge_to_fair_shares():
    clock = FakeClock()
    quota = Quota(30, None)
    # both configured with the whole quota over a share of 2; the second starts 15 s later and
    # the first has grown to the whole quota by then
    a = Client(Pacer(requests_per_minute=1800, share=2, clock=clock))
    b = Client(Pacer(requests_per_minute=1800, share=2, clock=clock), start=15)
    simulate(clock, quota, [a, b], seconds=90)
    assert rate(a, 0, 1) < 0.7 * 30  # it starts at its share (and grows fast until a 429)
    assert rate(a, 11, 15) >= 0.9 * 30  # alone, it grew to the whole quota
    ra, rb = rate(a, 40, 90), rate(b, 40, 90)
    assert ra + rb >= 0.9 * 30
    assert 0.2 <= ra / (ra + rb) <= 0.8  # AIMD evens shares out slowly; neither starves
    assert a.refused + b.refused <= 0.05 * (len(a.ok) + len(b.ok))


def test_three_instances_that_each_think_they_own_the_quota_still_converge():
    clock = FakeClock()
    clients = [Client(Pacer(requests_per_minute=1800, clock=clock), workers=8, start=i * 0.3) for i in range(3)]
    simulate(clock, Quota(30, None), clients, seconds=90)
    rates = [rate(c, 30, 90) for c in clients]
    assert sum(rates) >= 0.9 * 30
    assert min(rates) >= 0.2 * sum(rates)
    assert sum(c.refused for c in clients) <= 0.06 * sum(len(c.ok) for c in clients)


def test_tokens_per_char_learns_from_billed_tokens():
    est = TokensPerChar()
    assert est.cost(100, lambda: 30) == 30  # no ratio yet: the estimator
    est.learn(100, 25)
    assert est.cost(200, lambda: 999) == pytest.approx(50)


def test_throttle_kind_and_retry_after_parsing():
    assert throttle_kind("Throttling.RateQuota: Requests rate limit exceeded") == "requests"
    assert throttle_kind("Throttling.AllocationQuota: You exceeded your current quota") == "tokens"
    assert throttle_kind("Throttling: Request rate increased too quickly") == "both"
    assert parse_retry_after("1.5") == 1.5
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT") is None
    assert parse_retry_after("3600") == 60.0


def test_isolated_429s_never_shrink_a_learned_rate_to_a_crawl():
    """A few 429s that are not the quota (burst protection, a neighbour's spike: what the fault matrix
    injects) cut an unknown rate to at most its floor, 1 request/s, and it grows back at a useful pace.
    Before the floor, eight such 429s left 0.02 requests/s: one call every 45 s."""
    clock = FakeClock()
    pacer = Pacer(clock=clock)
    for _ in range(8):
        permit = pacer.reserve(100)
        clock.t += max(permit.delay, 0.0) + 1.1  # one call per window, each refused
        pacer.on_throttle(permit, "requests")
    assert pacer.throttled == 8
    assert pacer.requests.rate == pytest.approx(1.0)
    quota = Quota(requests_per_second=30, tokens_per_second=None)
    client = Client(pacer)
    simulate(clock, quota, [client], seconds=150)
    assert pacer.requests.rate is not None and pacer.requests.rate >= 20  # back near the real ceiling


def while_embedding(clients: list[Client], limit: float) -> float:
    """The aggregate admitted rate from the first admitted call to the last, as a share of the
    limit: the bench's "while embedding" figure."""
    sent = sorted(t for c in clients for t in c.ok)
    return (len(sent) - 1) / (sent[-1] - sent[0]) / limit


@pytest.mark.parametrize(("instances", "share"), [(2, 2), (3, 3), (3, 5), (5, 5), (1, 5)])
def test_instances_on_one_quota_converge_near_the_ceiling_with_few_429s(instances, share):
    """Separate pacers (no shared state, as Lambda instances) on one 30 requests/s quota, each
    configured with quota / share (share = MaximumConcurrency, possibly more than the busy ones)."""
    clock = FakeClock()
    clients = [
        Client(Pacer(requests_per_minute=1800, share=share, clock=clock), start=0.13 * i) for i in range(instances)
    ]
    simulate(clock, Quota(30, None), clients, seconds=60)
    rates = [rate(c, 15, 60) for c in clients]  # after a warm-up
    assert sum(rates) >= 0.9 * 30
    assert min(rates) >= 0.5 * sum(rates) / instances  # nobody starves
    sent = sum(len(c.ok) for c in clients)
    assert sum(c.refused for c in clients) <= 0.07 * sent  # each probe above the ceiling costs a few


def test_three_short_jobs_sharing_the_quota_finish_together_near_the_ceiling():
    """The bench's scenario: 3 indexers, 32 calls of 25 chunks each, share 3 (MaximumConcurrency 3),
    8 calls in flight at 200 ms. Before (cut to 0.9 x the allowed rate x the share admitted, slots
    reserved ahead kept, refused calls held a place): 76% of the ceiling and 14 429s here."""
    clock = FakeClock()
    clients = [Client(Pacer(requests_per_minute=1800, share=3, clock=clock), start=0.1 * i, calls=32) for i in range(3)]
    simulate(clock, Quota(30, None), clients, seconds=60)
    assert [len(c.ok) for c in clients] == [32, 32, 32]
    assert while_embedding(clients, 30) >= 0.88
    assert sum(c.refused for c in clients) <= 6


def test_when_peers_finish_the_last_instance_probes_up_to_the_whole_quota():
    """Three instances at their shares; two stop at 20 s. The survivor cannot see that: only the
    absence of 429s tells it, and its probe grows faster the longer that lasts (convex)."""
    clock = FakeClock()
    clients = [Client(Pacer(requests_per_minute=1800, share=3, clock=clock), start=0.1 * i) for i in range(3)]
    clients[1].stop = clients[2].stop = 20
    simulate(clock, Quota(30, None), clients, seconds=40)
    assert rate(clients[0], 10, 20) <= 0.5 * 30  # about its third before
    assert rate(clients[0], 30, 40) >= 0.9 * 30  # the whole quota within 10 s after


def test_a_cut_moves_the_slots_reserved_before_it():
    """Slots reserved ahead at the old rate would all go out into the full window after a 429;
    confirm() gives them new slots at the cut rate, and leaves an unchanged schedule alone."""
    clock = FakeClock()
    p = Pacer(requests_per_minute=600, clock=clock)  # 10/s: slots 0.1 s apart
    permits = [p.reserve(10) for _ in range(5)]
    assert [round(x.at, 2) for x in permits] == [0.0, 0.1, 0.2, 0.3, 0.4]
    assert p.confirm(permits[0]).delay == 0  # nothing changed: send now
    clock.t = 0.05
    early = p.confirm(permits[1])
    assert early.delay == pytest.approx(0.05)  # woken early: sleep the rest
    p.on_throttle(permits[0], "requests")
    cut = p.requests.rate
    assert cut is not None and cut < 10
    clock.t = 0.1
    moved = [p.confirm(x) for x in permits[1:]]
    gaps = [b.at - a.at for a, b in zip(moved, moved[1:], strict=False)]
    assert all(g == pytest.approx(1 / cut) for g in gaps)  # spaced at the new rate
    assert moved[-1].at > permits[-1].at


class FixedWindowQuota:
    """A per-second limit counted in whole clock seconds instead of a sliding second: the docs do
    not say which window the service uses (help.aliyun.com/en/model-studio/rate-limit: "RPS, which
    is RPM/60"), and the pacer must not depend on it. It admits at least what the sliding one does."""

    def __init__(self, requests_per_second: int) -> None:
        self.limit = requests_per_second
        self.counts: dict[int, int] = {}

    def admit(self, model: str, tokens: int, now: float) -> Refusal | None:
        second = int(now)
        if self.counts.get(second, 0) >= self.limit:
            return Refusal("Throttling.RateQuota", "Requests rate limit exceeded", {})
        self.counts[second] = self.counts.get(second, 0) + 1
        return None


def test_a_fixed_window_limit_is_met_as_well_as_a_sliding_one():
    clock = FakeClock()
    clients = [Client(Pacer(requests_per_minute=1800, share=3, clock=clock), start=0.13 * i) for i in range(3)]
    simulate(clock, FixedWindowQuota(30), clients, seconds=60)  # type: ignore[arg-type]
    assert sum(rate(c, 15, 60) for c in clients) >= 0.9 * 30
    assert sum(c.refused for c in clients) <= 0.07 * sum(len(c.ok) for c in clients)
