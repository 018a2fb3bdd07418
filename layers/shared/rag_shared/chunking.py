"""Split text into token-bounded, overlapping chunks that keep their place in the source.

Chunks end on paragraph or sentence boundaries where they can (Chinese sentence punctuation
included, since Chinese has no spaces to split on), fall back to token boundaries inside a
too-long sentence (and inside a word too long for any chunk), and carry the Markdown heading path
they sit under. Chunking is lazy and linear: a 50 MB file is walked once, never held as a list of
pieces or headings, and no regex here backtracks over more than a bounded stretch.
"""

from __future__ import annotations

import re
from collections import deque
from collections.abc import Iterator

from pydantic import BaseModel

from rag_shared.tokens import estimate_tokens, token_boundaries

# A unit ends after a blank line, a newline, or sentence punctuation (ASCII followed by space;
# CJK full-width marks need no space).
_UNIT_END = re.compile(r"\n\s*\n|\n|[.!?;](?=\s)|[。！？；…]+[”’」』)]?")
# Linear: the title is read as the rest of the line (at most _HEADING_SCAN characters) and its
# closing #s stripped in Python. The former ``(.+?)[ \t#]*$`` retried the tail at every character,
# quadratic in the line: a 150 kB line of "# a # # … b" took 43 s.
_HEADING_SCAN = 1000
_HEADING = re.compile(rf"^(#{{1,6}})[ \t]+([^\n]{{0,{_HEADING_SCAN}}})", re.MULTILINE)
MAX_HEADING_CHARS = 200  # of each title in a heading path; a chunk's heading is at most 6 of them
# A unit longer than this is cut by walking its token boundaries instead of being counted whole
_LONG_UNIT = 4096


class Chunk(BaseModel):
    number: int
    text: str
    start: int  # character offsets into the extracted text
    end: int
    tokens: int
    heading: str | None = None


def _units(text: str) -> Iterator[tuple[int, int]]:
    """Contiguous (start, end) ranges covering ``text``, each ending at a natural break."""
    pos = 0
    for m in _UNIT_END.finditer(text):
        if m.end() > pos:
            yield pos, m.end()
            pos = m.end()
    if pos < len(text):
        yield pos, len(text)


def _split_long(text: str, start: int, end: int, limit: int) -> Iterator[tuple[int, int, int]]:
    """Cut ``text[start:end]`` at token boundaries into pieces of at most ``limit`` tokens."""
    piece_start, base, last_end, last_total = start, 0, start, 0
    for char_end, total in token_boundaries(text, start, end):
        if total - base > limit and last_end > piece_start:
            yield piece_start, last_end, last_total - base
            piece_start, base = last_end, last_total
        last_end, last_total = char_end, total
    if end > piece_start:
        yield piece_start, end, max(last_total - base, 0)


def _title(raw: str) -> str:
    """A heading's text without its optional closing #s (the first character is always kept)."""
    return (raw[:1] + raw[1:].rstrip(" \t#")).strip()[:MAX_HEADING_CHARS]


class _Headings:
    """Heading path (``A > B``) at any offset, for Markdown sources; headings are found lazily,
    as the chunks reach them (a file of a million headings is never a list of a million)."""

    def __init__(self, text: str) -> None:
        self._marks = _HEADING.finditer(text)
        self._next = next(self._marks, None)
        self._path: list[tuple[int, str]] = []

    def at(self, offset: int) -> str | None:
        """Offsets must be asked in increasing order (chunks are produced in order)."""
        while self._next is not None and self._next.start() <= offset:
            level, title = len(self._next.group(1)), _title(self._next.group(2))
            self._path = [(lvl, t) for lvl, t in self._path if lvl < level] + [(level, title)]
            self._next = next(self._marks, None)
        return " > ".join(t for _, t in self._path) or None


def chunk_text(text: str, *, size: int = 400, overlap: int = 60, markdown: bool = False) -> Iterator[Chunk]:
    """Yield chunks of at most ``size`` estimated tokens, consecutive ones sharing ~``overlap`` tokens."""
    if overlap >= size:
        raise ValueError("overlap must be smaller than size")
    headings = _Headings(text) if markdown else None
    window: deque[tuple[int, int, int]] = deque()  # (start, end, tokens) of units in the chunk
    window_tokens = 0
    number = 0

    def pieces() -> Iterator[tuple[int, int, int]]:
        for start, end in _units(text):
            if end - start > _LONG_UNIT:  # never sliced whole: a one-line 50 MB file is one unit
                yield from _split_long(text, start, end, size)
                continue
            tokens = estimate_tokens(text[start:end])
            if tokens > size:
                yield from _split_long(text, start, end, size)
            else:
                yield start, end, tokens

    def emit() -> Chunk | None:
        nonlocal number
        start, end = window[0][0], window[-1][1]
        body = text[start:end]
        if not body.strip():
            return None
        # Trim surrounding whitespace so offsets point at content.
        lead = len(body) - len(body.lstrip())
        body = body.strip()
        chunk = Chunk(
            number=number,
            text=body,
            start=start + lead,
            end=start + lead + len(body),
            tokens=window_tokens,
            heading=headings.at(start + lead) if headings else None,
        )
        number += 1
        return chunk

    emitted_upto = 0  # end offset of the last emitted chunk: avoids a chunk that is all overlap
    for piece in pieces():
        if window and window_tokens + piece[2] > size:
            chunk = emit()
            if chunk:
                yield chunk
            emitted_upto, emitted_from = window[-1][1], window[0][0]
            # Keep a tail of whole units as overlap, but not one that drops only blank units: it would
            # hold the whole chunk again, and the next chunk would start where this one did.
            while window and (
                window_tokens > overlap
                or window_tokens + piece[2] > size
                or (chunk is not None and not text[emitted_from : window[0][0]].strip())
            ):
                window_tokens -= window.popleft()[2]
        window.append(piece)
        window_tokens += piece[2]
    if window and window[-1][1] > emitted_upto:
        chunk = emit()
        if chunk:
            yield chunk
