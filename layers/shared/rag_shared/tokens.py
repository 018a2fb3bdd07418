"""Token estimates for Qwen models, without shipping a tokenizer.

Qwen's real tokenizer (a 2.5 MB tiktoken vocabulary in the ``dashscope`` SDK, which drags in
about twenty packages) is too heavy for a Lambda layer that must cold-start fast, and tiktoken's
own encodings are downloaded at run time. Chunk sizes and prompt budgets only need an upper
bound, so this counts the pieces Qwen's pre-tokenizer splits text into and errs high: one token
per CJK character (Qwen averages 1.3-1.5 characters per token), one per digit and punctuation
mark, one per four letters of a word, and runs of blanks. ``tests/shared/test_tokens.py`` checks it
never undercounts the real tokenizer on English, Chinese and code, and stays within 2x of it on
hostile runs of blanks and line separators.
"""

from __future__ import annotations

import re
from collections.abc import Iterator

_CJK = r"\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uac00-\ud7af\uf900-\ufaff\uff00-\uffef\u3000-\u303f"
_LETTERS_PER_TOKEN = 4
# Whitespace is counted too, or a hostile file of blanks would estimate at a few tokens while
# Qwen's tokenizer makes one token of every 8-16 blanks or 31 newlines, and the chunk would fail
# DashScope's per-text token limit: runs of 2+ blanks one token per 8, newlines one per 8, a blank
# before a digit one (Qwen splits digits apart), any other (non-ASCII) blank one each.
_BLANKS = r"[ \t\r\f\v]{2,8}|[ \t](?=\d)|\n{1,8}|[^\S\x00-\x7f]"
# group 1: one CJK char; 2: a run of letters; 3: one token of anything else
_PIECE = re.compile(rf"([{_CJK}])|([^\W\d_{_CJK}]+)|({_BLANKS}|\d|[^\s{_CJK}])")
# The same count with one match per token: letters taken four at a time. Counting matches stays
# in C, which makes estimate_tokens several times faster than summing _piece_tokens; chunking a
# 50 MB file calls it for every sentence.
_TOKEN = re.compile(rf"[{_CJK}]|[^\W\d_{_CJK}]{{1,{_LETTERS_PER_TOKEN}}}|{_BLANKS}|\d|[^\s{_CJK}]")
# findall builds one str per token (a 50 MB one-line file: 12 M of them); above this many
# characters count match by match instead.
_COUNT_SLICE = 1 << 16
# A word longer than this many letters (no real word is) gets a split point every this many
# letters, so a 10 MB "word" can be cut into chunks instead of failing the file.
LONG_WORD = 64


def _piece_tokens(match: re.Match[str]) -> int:
    if match.lastindex == 2:
        return -(-len(match.group(2)) // _LETTERS_PER_TOKEN)
    return 1


def estimate_tokens(text: str) -> int:
    """An upper-bound estimate of Qwen tokens in ``text``; memory O(1) in its length."""
    if len(text) > _COUNT_SLICE:
        return sum(1 for _ in _TOKEN.finditer(text))  # findall would hold one str per token
    return len(_TOKEN.findall(text))


def messages_tokens(messages: list[dict[str, object]]) -> int:
    """Tokens of a chat prompt: content plus ChatML's per-message overhead (<|im_start|>role\\n…<|im_end|>\\n)."""
    return sum(estimate_tokens(str(m.get("content") or "")) + 5 for m in messages) + 3


def token_boundaries(text: str, start: int = 0, end: int | None = None) -> Iterator[tuple[int, int]]:
    """Yield (char_end, cumulative_tokens) after each piece of ``text[start:end]``, for splitting."""
    total = 0
    for m in _PIECE.finditer(text, start, len(text) if end is None else end):
        if m.lastindex == 2 and m.end() - m.start() > LONG_WORD:
            for cut in range(m.start() + LONG_WORD, m.end(), LONG_WORD):
                yield cut, total + (cut - m.start()) // _LETTERS_PER_TOKEN
        total += _piece_tokens(m)
        yield m.end(), total


def truncate_to_tokens(text: str, limit: int) -> str:
    """The longest prefix of ``text`` estimated at no more than ``limit`` tokens."""
    cut = 0
    for char_end, total in token_boundaries(text):
        if total > limit:
            return text[:cut]
        cut = char_end
    return text
