"""Synthetic documents whose chunking is known in advance, for the indexer tests and the benchmarks.

Each paragraph is about 125 estimated tokens: with 200-token chunks and a 30-token overlap two never
share a chunk and none is split, so a document of N paragraphs is exactly N chunks.
"""

from __future__ import annotations

WORDS = ["blue", "data", "fast", "node", "file", "pipe", "code", "test"]
WORDS += ["load", "save", "read", "sort", "find", "call", "send", "wait"]


def paragraph(n: int, words: int = 120) -> str:
    body = " ".join(WORDS[(n * 7 + i) % len(WORDS)] for i in range(words))
    return f"Part{n} {body} end{n}."


def document(paragraphs: int) -> str:
    return "\n\n".join(paragraph(n) for n in range(paragraphs))
