"""Peak RSS for the worst-case inputs stays under 60% of the indexer function's memory.

Each input is as large as the default bounds let through (just under MAX_EXTRACTED_CHARS, with
one emoji so CPython stores the text as UCS-4), or a PDF inflating far past its bound; extraction
and the first 2,000 chunks run in a fresh interpreter, whose own peak RSS (imports and the
input's bytes included) is what is measured.
"""

from __future__ import annotations

import pytest
from indexer.extract import DEFAULT_LIMITS

from bench.hostile import LAMBDA_MB, in_child

BUDGET_MB = 0.6 * LAMBDA_MB
NEAR_LIMIT = DEFAULT_LIMITS.max_chars - 1_000_000


@pytest.mark.parametrize(
    ("shape", "n", "expect"),
    [
        ("text + one emoji", NEAR_LIMIT, "chunks"),
        ("one-word file", NEAR_LIMIT, "chunks"),
        ("markdown all headings", NEAR_LIMIT, "chunks"),
        ("html long text + emoji", NEAR_LIMIT, "chunks"),
        ("text + one emoji", 2 * DEFAULT_LIMITS.max_chars, "MAX_EXTRACTED_CHARS"),
        ("pdf high-ratio stream", 70_000_000, "MAX_PDF_STREAM_BYTES"),  # the 204 kB PDF of issue 13
    ],
)
def test_worst_case_peak_rss_under_60_percent_of_the_function(shape, n, expect):
    r = in_child(shape, n, max_chunks=2000)
    assert expect in r["result"], r
    assert r["peak_mb"] < BUDGET_MB, r
