"""Property-based tests: whatever the input, extraction, chunking and event parsing either work or
fail with their documented exception (Unindexable, BadEvent), and chunks keep their invariants."""

from __future__ import annotations

import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from indexer.events import BadEvent, parse_notification
from indexer.extract import Limits, Unindexable, extract, html_to_text
from rag_shared.chunking import MAX_HEADING_CHARS, chunk_text
from rag_shared.tokens import estimate_tokens, token_boundaries

FAST = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])

KEYS = ["a.txt", "a.md", "a.html", "a.pdf", "a.json", "a.png", "noext", "a.HTM", "dir/a.markdown"]
CTYPES = [
    None,
    "text/plain",
    "text/html; charset=utf-8",
    "text/plain; charset=gb18030",
    "text/plain; charset=nope",
    "application/pdf",
    "text/markdown; charset=latin-1",
    "text/plain; charset=" + "x" * 200,
]
# Pieces hostile HTML, Markdown and PDFs are made of, so generated inputs hit the parsers' edges
FRAGMENTS = [
    "<",
    ">",
    "</",
    "<!--",
    "-->",
    "<![CDATA[",
    "]]>",
    "<?",
    "<!",
    "<title>",
    "</title>",
    "<script>",
    "</script>",
    "<h1>",
    "</h2>",
    "<p>",
    "<br/>",
    "<a href='",
    '"',
    "&amp;",
    "&#",
    "&#x1F600;",
    "&",
    ";",
    "# ",
    "## ",
    "#",
    " ",
    "\t",
    "\n",
    "\r\n",
    "\n\n",
    ". ",
    "。",
    "a",
    "word",
    "é",
    "中文",
    "😀",
    "\u2028",
    "\x00",
    "\ufeff",
    "1",
    "%PDF-",
    "stream\n",
    "endstream",
    "obj",
    "xref",
    "\xa0",
    "\u200b",
]
fragment_text = st.lists(st.sampled_from(FRAGMENTS), max_size=200).map("".join)
any_text = st.one_of(st.text(max_size=500), fragment_text)
SMALL = Limits(max_chars=2_000, max_pdf_pages=5, max_pdf_stream_bytes=50_000, max_pdf_content_bytes=100_000)


def _check_extract(key: str, data: bytes, ctype: str | None, limits: Limits) -> None:
    try:
        out = extract(key, data, ctype, limits=limits)
    except Unindexable as exc:
        reason = exc.reason
        assert reason
        return
    assert out.text.strip()
    assert len(out.text) <= limits.max_chars + 600  # + a title line at most
    assert out.kind in ("text", "markdown", "html", "pdf")


@FAST
@given(st.sampled_from(KEYS), st.binary(max_size=2000), st.sampled_from(CTYPES))
def test_extract_any_bytes(key, data, ctype):
    _check_extract(key, data, ctype, SMALL)


@FAST
@given(st.sampled_from(KEYS), fragment_text, st.sampled_from(["utf-8", "utf-16", "latin-1"]), st.sampled_from(CTYPES))
def test_extract_hostile_text(key, text, encoding, ctype):
    data = text.encode(encoding, errors="replace")
    _check_extract(key, data, ctype, SMALL)
    _check_extract(key, data, ctype, Limits())


@FAST
@given(st.binary(max_size=3000))
def test_extract_pdf_like_bytes(tail):
    _check_extract("x.pdf", b"%PDF-1.4\n" + tail, None, SMALL)


@FAST
@given(any_text)
def test_html_to_text_never_raises_and_is_bounded(html):
    text = html_to_text(html)
    assert len(text) <= len(html) + 600  # headings add "#"s, never more than the markup removed


@FAST
@given(any_text, st.integers(32, 300), st.data(), st.booleans())
def test_chunks_keep_their_invariants(text, size, data, markdown):
    overlap = data.draw(st.integers(0, size - 1))
    chunks = list(chunk_text(text, size=size, overlap=overlap, markdown=markdown))
    assert [c.number for c in chunks] == list(range(len(chunks)))
    for c in chunks:
        assert text[c.start : c.end] == c.text and c.text.strip() == c.text and c.text
        assert c.tokens <= size and estimate_tokens(c.text) <= size
        if c.heading:
            assert len(c.heading) <= 6 * (MAX_HEADING_CHARS + 3)
    for a, b in zip(chunks, chunks[1:], strict=False):
        assert b.start > a.start
        assert b.start <= a.end or not text[a.end : b.start].strip()  # nothing but blanks skipped
    if text.strip():
        assert chunks and chunks[0].start == len(text) - len(text.lstrip())
        assert chunks[-1].end == len(text.rstrip())


@FAST
@given(any_text)
def test_token_count_agrees_with_split_points(text):
    walked = [total for _, total in token_boundaries(text)]
    assert estimate_tokens(text) == (walked[-1] if walked else 0)


@FAST
@given(st.text(alphabet="abcXYZé", min_size=1, max_size=20_000), st.integers(32, 400))
def test_a_word_longer_than_a_chunk_is_split(word, size):
    chunks = list(chunk_text(word, size=size, overlap=0))
    assert all(c.tokens <= size for c in chunks)
    assert "".join(c.text for c in chunks) == word


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=30),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=4),
    max_leaves=20,
)
record = st.fixed_dictionaries(
    {
        "eventSource": st.sampled_from(["aws:s3", "aws:sqs", 1]),
        "eventName": st.sampled_from(["ObjectCreated:Put", "ObjectRemoved:Delete", "LifecycleExpiration:Delete", "x"]),
        "s3": st.fixed_dictionaries(
            {
                "bucket": st.fixed_dictionaries({"name": st.text(max_size=10)}) | json_values,
                "object": st.fixed_dictionaries(
                    {"key": st.text(max_size=30)},
                    optional={"size": json_values, "eTag": json_values, "sequencer": json_values},
                )
                | json_values,
            }
        ),
    }
)
payloads = st.one_of(
    json_values,
    st.fixed_dictionaries({"Records": st.lists(record | json_values, max_size=3)}),
    st.fixed_dictionaries({"Event": st.sampled_from(["s3:TestEvent", "x"])}),
    st.fixed_dictionaries(
        {"qwenRagSweep": st.dictionaries(st.sampled_from(["bucket", "key", "sequencer", "x"]), json_values)}
    ),
)


@FAST
@given(payloads, st.booleans())
def test_event_parser_accepts_or_refuses_with_bad_event(payload, as_text):
    body = json.dumps(payload) if as_text else payload
    try:
        events = parse_notification(body)
    except BadEvent as exc:
        message = str(exc)
        assert message
        return
    for e in events:
        assert e.action in ("upsert", "remove", "sweep") and isinstance(e.key, str)


@FAST
@given(st.text(max_size=300))
def test_event_parser_on_any_message_body(body):
    try:
        parse_notification(body)
    except BadEvent:
        pass


def test_event_parser_sweep_with_an_action_field():
    with pytest.raises(BadEvent):
        parse_notification({"qwenRagSweep": {"bucket": "b", "key": "k", "action": "upsert"}})


def test_event_parser_deeply_nested_body():
    with pytest.raises(BadEvent):
        parse_notification("[" * 100_000)


def test_a_chunk_after_a_blank_unit_never_restarts_where_the_last_began():
    """Found by the property above (seed-dependent): a blank leading unit was the only one the overlap
    dropped, so the next chunk held the whole previous one and began at the same offset."""
    text = "\n00000;\r00000000000000000000000000"
    for overlap in range(32):
        chunks = list(chunk_text(text, size=32, overlap=overlap))
        assert all(b.start > a.start for a, b in zip(chunks, chunks[1:], strict=False)), (overlap, chunks)
        assert chunks[-1].end == len(text)
