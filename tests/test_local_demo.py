"""`make demo` as a user runs it: the local stack, samples indexed from S3 events, a streamed answer."""

from __future__ import annotations

import io
from contextlib import redirect_stdout

from local import demo


def test_demo_prints_a_streamed_answer_whose_sources_are_the_samples(monkeypatch):
    for var in ("DASHSCOPE_API_KEY", "OPENSEARCH_URL", "AWS_ENDPOINT_URL", "DASHSCOPE_BASE_URL"):
        monkeypatch.delenv(var, raising=False)
    out = io.StringIO()
    with redirect_stdout(out):
        code = demo.main([])
    text = out.getvalue()
    assert code == 0, text
    assert "STAND-IN" in text  # says plainly that no real key was given
    assert "Indexer processed 3 S3 event(s)" in text
    answer = text.split("A: ", 1)[1].split("\nSources:", 1)[0]
    assert "Meals are reimbursed up to 60 USD per day" in answer
    sources = text.split("Sources:", 1)[1].split("\n\n", 1)[0]
    assert "samples/handbook.md" in sources
    assert "Local stack stopped." in text
