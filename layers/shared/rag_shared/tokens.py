"""Token estimates for Qwen models, without shipping a tokenizer.

Qwen's real tokenizer (a 2.5 MB tiktoken vocabulary in the ``dashscope`` SDK, which drags in
about twenty packages) is too heavy for a Lambda layer that must cold-start fast, and tiktoken's
own encodings are downloaded at run time. Chunk sizes and prompt budgets only need an upper
bound, so this counts the pieces Qwen's pre-tokenizer splits text into and errs high: one token
per CJK character (Qwen averages 1.3-1.5 characters per token), one per digit and punctuation
mark, and one per four letters of a word. ``tests/test_tokens.py`` checks it never undercounts
the real tokenizer on English, Chinese and code.
"""

from __future__ import annotations

import re
from collections.abc import Iterator

_CJK = r"\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uac00-\ud7af\uf900-\ufaff\uff00-\uffef\u3000-\u303f"
# group 1: one CJK char; 2: a run of letters; 3: one digit, with the blanks before it (Qwen makes
# those a token of their own); 4: a newline run; 5: one other symbol
_PIECE = re.compile(rf"([{_CJK}])|([^\W\d_{_CJK}]+)|([ \t]*\d)|(\n+)|([^\s{_CJK}])")
_LETTERS_PER_TOKEN = 4
# The same count with one match per token: letters taken four at a time, and the blanks before a
# digit as a match of their own. Counting matches stays in C, which makes estimate_tokens several
# times faster than summing _piece_tokens; chunking a 50 MB file calls it for every sentence.
_TOKEN = re.compile(rf"[{_CJK}]|[^\W\d_{_CJK}]{{1,{_LETTERS_PER_TOKEN}}}|[ \t]+(?=\d)|\d|\n+|[^\s{_CJK}]")


def _piece_tokens(match: re.Match[str]) -> int:
    if match.lastindex == 2:
        return -(-len(match.group(2)) // _LETTERS_PER_TOKEN)
    if match.lastindex == 3 and len(match.group(3)) > 1:
        return 2
    return 1


def estimate_tokens(text: str) -> int:
    """An upper-bound estimate of Qwen tokens in ``text``."""
    return len(_TOKEN.findall(text))


def messages_tokens(messages: list[dict[str, object]]) -> int:
    """Tokens of a chat prompt: content plus ChatML's per-message overhead (<|im_start|>role\\n…<|im_end|>\\n)."""
    return sum(estimate_tokens(str(m.get("content") or "")) + 5 for m in messages) + 3


def token_boundaries(text: str, start: int = 0, end: int | None = None) -> Iterator[tuple[int, int]]:
    """Yield (char_end, cumulative_tokens) after each piece of ``text[start:end]``, for splitting."""
    total = 0
    for m in _PIECE.finditer(text, start, len(text) if end is None else end):
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
