"""Doubling a hostile input at most ~3x the time, for each extractor and the chunker.

CPU time of this process (``time.process_time``), so other processes on a busy machine do not count;
runs at n and 2n alternate (3 pairs, best of each), so a load change between them skews both alike,
and a ratio over the bound is measured up to three more pairs before failing. A linear step shows
~2x (2.0-2.2x measured under load with 8 other jobs, up to 2.8x beside another pytest worker
competing for the memory bus), a quadratic one ~4x and fails either way.
"""

from __future__ import annotations

import gc
import time
from collections.abc import Callable
from functools import partial

import pytest
from indexer.extract import Limits, Unindexable, extract
from rag_shared.chunking import chunk_text

from bench.hostile import SHAPES

# ~2x for a linear step; a quadratic one shows ~4x. Timing all runs at n before all runs at 2n flaked
# past 2.3x in full CI runs (2.35x, 2.44x: the machine's load changed between the two series);
# alternating them brought the worst of 11 shapes under load to 2.17x; with the suite's second
# pytest worker on the other core, 2.51x and 2.78x were seen.
BOUND = 3.0


def _run(key: str, data: bytes, limits: Limits) -> None:
    try:
        out = extract(key, data, limits=limits)
    except Unindexable:
        return
    for _ in chunk_text(out.text, size=400, overlap=60, markdown=out.markdown):
        pass


def _best(fn: Callable[[], None], runs: int = 1) -> float:
    """Best CPU time of ``runs``, with the cyclic collector paused while timing: late in a full run
    this process holds hundreds of MB from other tests, and one gen-2 collection over that heap
    landing inside a 0.1 s measurement doubled it (a spurious 2.3x+ in CI). What the extractor
    allocates is freed by reference counting either way."""
    best = float("inf")
    for _ in range(runs):
        gc.collect()
        gc.disable()
        try:
            t0 = time.process_time()
            fn()
            best = min(best, time.process_time() - t0)
        finally:
            gc.enable()
    return best


def _ratio(key: str, small: bytes, large: bytes, limits: Limits) -> tuple[float, float, float]:
    """Best time at n and at 2n over alternating runs (3 pairs, up to 3 more while over the bound)."""
    t1 = t2 = float("inf")
    for pair in range(6):
        if pair >= 3 and t2 / t1 <= BOUND:
            break
        t1 = min(t1, _best(lambda: _run(key, small, limits)))
        t2 = min(t2, _best(lambda: _run(key, large, limits)))
    return t2 / t1, t1, t2


@pytest.mark.parametrize(
    ("shape", "n"),
    [
        ("html nested tags", 60_000),
        ("html unclosed tags", 8_000_000),
        ("html unclosed title", 60_000),
        ("html unclosed comment", 8_000_000),
        ("html text + emoji", 200_000),
        ("markdown long heading line", 150_000),
        ("markdown all headings", 150_000),
        ("one-word file", 1_000_000),
        ("text + one emoji", 150_000),
        ("blank runs", 3_000_000),
        ("pdf high-ratio stream", 30_000),  # inflated content; extracted and chunked
    ],
)
def test_doubling_the_input_at_most_3x_the_time(shape, n):
    key, build = SHAPES[shape]
    # grow n until one run takes 0.15 s: at a few tens of ms, page faults of fresh large buffers and a
    # busy neighbour's cache traffic swung single ratios past 3x on this 2-core machine. But 2n stays
    # under half the character limit: past it extraction stops early, and a run cut short at 2n (or
    # at n only) made "html unclosed comment" read 3.8x in CI (0.022 s at n, 0.083 s at 2n)
    for _ in range(4):
        if 4 * n > Limits().max_chars or _best(partial(_run, key, build(n), Limits()), runs=1) >= 0.15:
            break
        n *= 2
    ratio, t1, t2 = _ratio(key, build(n), build(2 * n), Limits())
    # Under 0.1 s at 2n (megabytes of input) is too quick to time against a busy neighbour (0.029 s ->
    # 0.095 s read 3.3x in CI for "html unclosed comment" at 8-16 MB), and is itself the proof: a
    # super-linear step would take seconds at these sizes.
    if t2 < 0.1:
        return
    assert ratio <= BOUND, f"{shape}: {t1:.3f} s at n, {t2:.3f} s at 2n ({ratio:.2f}x)"


def test_a_pdf_inflating_past_its_bound_stops_early():
    """Twice the inflated size past the bound costs no more: decompression stops at the limit."""
    limits = Limits(max_pdf_stream_bytes=1_000_000)
    small, large = SHAPES["pdf high-ratio stream"][1](4_000_000), SHAPES["pdf high-ratio stream"][1](8_000_000)
    with pytest.raises(Unindexable, match="MAX_PDF_STREAM_BYTES"):
        extract("a.pdf", large, limits=limits)
    ratio, t1, t2 = _ratio("a.pdf", small, large, limits)
    assert ratio <= BOUND, f"{t1:.3f} s at n, {t2:.3f} s at 2n"
    assert t2 < 1.0  # it never inflated 8 MB and parsed it (that takes ~20 s)
