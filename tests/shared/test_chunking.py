import pytest
from rag_shared.chunking import chunk_text
from rag_shared.tokens import estimate_tokens


def _words(n):
    return " ".join(f"word{i}" for i in range(n))


def test_chunks_respect_size_and_offsets_point_into_source():
    text = "\n\n".join(f"Paragraph {p}. " + ". ".join(_words(12) for _ in range(5)) + "." for p in range(30))
    chunks = list(chunk_text(text, size=120, overlap=20))
    assert len(chunks) > 5
    for c in chunks:
        assert c.tokens <= 120
        assert estimate_tokens(c.text) <= 120
        assert text[c.start : c.end] == c.text
    assert [c.number for c in chunks] == list(range(len(chunks)))
    # covers the whole text, in order, with overlap
    assert chunks[0].start == 0 and chunks[-1].end == len(text.rstrip())
    for a, b in zip(chunks, chunks[1:], strict=False):
        assert b.start <= a.end or not text[a.end : b.start].strip()  # overlap, or only blanks between
        assert b.start > a.start


def test_chinese_splits_on_sentence_punctuation():
    sentence = "阿里云百炼提供通义千问系列模型，可以通过兼容模式调用。"
    text = sentence * 40
    chunks = list(chunk_text(text, size=100, overlap=40))  # overlap is whole sentences (~28 tokens)
    assert len(chunks) > 5
    for c in chunks:
        assert c.tokens <= 100
        assert c.text.endswith("。")  # whole sentences, never cut mid-sentence
    assert chunks[1].start < chunks[0].end  # overlap carried


def test_a_sentence_longer_than_a_chunk_is_split_on_token_boundaries():
    text = _words(1000)  # no punctuation at all
    chunks = list(chunk_text(text, size=100, overlap=10))
    assert all(c.tokens <= 100 for c in chunks)
    assert "".join(text[c.start : c.end] for c in chunks).replace(" ", "") == text.replace(" ", "")


def test_markdown_headings_are_carried():
    text = (
        "# Guide\n\nIntro text here.\n\n## Install\n\n"
        + "Run the installer. " * 60
        + "\n\n## Usage\n\n"
        + "Call it with care. " * 60
    )
    chunks = list(chunk_text(text, size=80, overlap=10, markdown=True))
    assert chunks[0].heading == "Guide"
    assert any(c.heading == "Guide > Install" for c in chunks)
    assert chunks[-1].heading == "Guide > Usage"  # the heading in force where the chunk starts


def test_empty_and_whitespace_give_no_chunks():
    assert list(chunk_text("")) == []
    assert list(chunk_text("  \n\n \t ")) == []


def test_overlap_must_be_smaller():
    with pytest.raises(ValueError, match="overlap"):
        list(chunk_text("x", size=10, overlap=10))
