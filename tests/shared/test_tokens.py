import random

import pytest
from rag_shared.tokens import estimate_tokens, messages_tokens, token_boundaries, truncate_to_tokens

SAMPLES = {
    "english": "The quick brown fox jumps over the lazy dog. Retrieval-augmented generation combines search "
    "with language models; it's widely used in 2024. Internationalization and containerization are long words.",
    "chinese": "检索增强生成将搜索与大语言模型结合起来，在企业知识库问答中被广泛使用。阿里云百炼提供通义千问系列模型。",
    "code": "def chunk_text(text: str, *, size: int = 400) -> Iterator[Chunk]:\n"
    "    for i in range(0, len(text), size):\n"
    "        yield text[i:i+size]  # naive\n",
    "json": '{"Records": [{"eventName": "ObjectCreated:Put", "s3": {"object": {"key": "docs/a%20b.md"}}}]}',
    "mixed": "AWS Lambda 函数 URL 支持 RESPONSE_STREAM 模式，first token 延迟 < 1s。",
    "numbers": "Order 12345678 shipped on 2026-11-24 at 09:30; total 1,234.56 USD.",
}


@pytest.fixture(scope="module")
def qwen():
    tokenizers = pytest.importorskip("dashscope.tokenizers", reason="dev extra: Qwen's real tokenizer")
    return tokenizers.get_tokenizer("qwen-turbo")


@pytest.mark.parametrize("name", sorted(SAMPLES))
def test_estimate_is_an_upper_bound_of_qwen_tokenizer_and_not_wildly_off(qwen, name):
    text = SAMPLES[name]
    real = len(qwen.encode(text))
    est = estimate_tokens(text)
    assert real <= est <= 2 * real, (real, est)


def test_sample_documents_stay_bounded(qwen):
    from pathlib import Path

    for path in sorted(Path(__file__).parents[2].joinpath("samples").glob("*")):
        text = path.read_text(encoding="utf-8")
        real = len(qwen.encode(text))
        assert real <= estimate_tokens(text) <= 2 * real, path.name


def test_truncate_respects_limit():
    text = SAMPLES["english"] * 10
    cut = truncate_to_tokens(text, 50)
    assert estimate_tokens(cut) <= 50
    assert text.startswith(cut) and len(cut) > 50
    assert truncate_to_tokens("short", 50) == "short"


def test_messages_overhead_counted():
    msgs: list[dict[str, object]] = [{"role": "user", "content": "hello"}, {"role": "assistant", "content": "hi"}]
    assert messages_tokens(msgs) > estimate_tokens("hello") + estimate_tokens("hi")


def test_fast_count_equals_the_sum_over_split_points():
    """estimate_tokens counts in C; token_boundaries walks pieces for cutting. They must agree, or a
    chunk cut by one would be over budget by the other."""
    alphabet = "abcXYZé_ 中文。，\t\n\n 0123456789.,;!?-#*'\"ßΩ ك"
    rng = random.Random(7)
    texts = [*SAMPLES.values(), "", "   ", "a" * 9, " \t 7", "x 12 yy\n\n\n3"]
    texts += ["".join(rng.choice(alphabet) for _ in range(rng.randint(1, 300))) for _ in range(500)]
    for text in texts:
        walked = [total for _, total in token_boundaries(text)]
        assert estimate_tokens(text) == (walked[-1] if walked else 0), repr(text)


HOSTILE = {
    "spaces": " " * 1000,
    "newlines": "\n" * 1000,
    "tabs": "\t" * 1000,
    "a spaces b": "a" + " " * 1000 + "b",
    "crlf": "\r\n" * 500,
    "nbsp": "\u00a0" * 1000,
    "line separators": "\u2028" * 1000,
    "x tab": "x\t" * 500,
    "one word": "a" * 20_000,
}


@pytest.mark.parametrize("name", sorted(HOSTILE))
def test_hostile_whitespace_and_long_words_are_not_undercounted_much(qwen, name):
    """Blank runs used to count as nothing: a chunk of a file of blanks was estimated at a few
    tokens and failed DashScope's per-text limit. Now at worst half the real count (U+2028 is two
    tokens a character), so a 400-token chunk stays far under 8,192."""
    text = HOSTILE[name]
    real = len(qwen.encode(text))
    assert real <= 2 * estimate_tokens(text), (real, estimate_tokens(text))
