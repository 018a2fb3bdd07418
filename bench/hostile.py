"""Hostile input: CPU time and peak RSS of extraction + chunking per adversarial shape and size,
each in a fresh process (so the peak is that input's alone), with the growth from the smaller size.

``python -m bench.hostile`` prints the table; :data:`SHAPES` and :func:`hostile_pdf` are also what
``tests/indexer/test_hostile_complexity.py`` and ``test_hostile_memory.py`` feed the indexer.
"""

from __future__ import annotations

import io
import json
import resource
import subprocess
import sys
import time
from collections.abc import Callable
from itertools import islice
from typing import Any

LAMBDA_MB = 1024  # template.yaml: the indexer's MemorySize
EMOJI = "😀".encode()  # one astral character: CPython stores the whole str as UCS-4


def hostile_pdf(stream_bytes: int, pages: int = 1) -> bytes:
    """A small PDF whose pages' Flate content streams inflate to ``stream_bytes`` of text-drawing
    operators each (a repeated line deflates about 300:1)."""
    from pypdf import PdfWriter
    from pypdf.generic import DecodedStreamObject, DictionaryObject, NameObject

    line = b"BT /F1 12 Tf 72 720 Td (All work and no play makes Jack a dull boy) Tj ET\n"
    writer = PdfWriter()
    font = writer._add_object(
        DictionaryObject(
            {
                NameObject("/Type"): NameObject("/Font"),
                NameObject("/Subtype"): NameObject("/Type1"),
                NameObject("/BaseFont"): NameObject("/Helvetica"),
            }
        )
    )
    content = line * max(1, stream_bytes // len(line))
    for _ in range(pages):
        page = writer.add_blank_page(612, 792)
        page[NameObject("/Resources")] = DictionaryObject(
            {NameObject("/Font"): DictionaryObject({NameObject("/F1"): font})}
        )
        stream = DecodedStreamObject()
        stream.set_data(content)
        page[NameObject("/Contents")] = writer._add_object(stream)
        page.compress_content_streams(level=9)
    out = io.BytesIO()
    writer.write(out)
    return out.getvalue()


def _repeat(unit: bytes, n: int, head: bytes = b"", tail: bytes = b"") -> bytes:
    return head + unit * max(1, (n - len(head) - len(tail)) // len(unit)) + tail


_LOREM = b"lorem ipsum dolor sit amet "
# name -> (object key, n -> bytes of about n bytes, or for PDFs n bytes of inflated content)
SHAPES: dict[str, tuple[str, Callable[[int], bytes]]] = {
    "html nested tags": ("a.html", lambda n: _repeat(b"<div>", n)),
    "html unclosed tags": ("a.html", lambda n: _repeat(b"<a b", n)),
    "html unclosed title": ("a.html", lambda n: _repeat(b"<b>x</b>", n, head=b"<title>")),
    "html unclosed comment": ("a.html", lambda n: _repeat(b"<a>", n, head=b"<!--")),
    "html text + emoji": ("a.html", lambda n: _repeat(b"<p>lorem ipsum dolor sit amet</p>", n, tail=EMOJI)),
    "html long text + emoji": ("a.html", lambda n: _repeat(b"<p>" + _LOREM * 40 + b"</p>", n, tail=EMOJI)),
    "markdown long heading line": ("a.md", lambda n: _repeat(b"# ", n, head=b"# a ", tail=b"b\n")),
    "markdown all headings": ("a.md", lambda n: _repeat(b"# a # b\n", n)),
    "one-word file": ("a.txt", lambda n: _repeat(b"a", n, tail=EMOJI)),
    "text + one emoji": ("a.txt", lambda n: _repeat(b"lorem ipsum dolor sit amet. ", n, tail=EMOJI)),
    "blank runs": ("a.txt", lambda n: _repeat(b" ", n, head=b"x", tail=b"y")),
    "pdf high-ratio stream": ("a.pdf", lambda n: hostile_pdf(n)),
}


def peak_rss_mb() -> float:
    """This process's peak resident memory. VmHWM belongs to the address space that ``exec`` made,
    whereas ``ru_maxrss`` carries over the parent's high-water mark across fork and exec: a child of
    a 900 MB test process reported 900 MB whatever it did."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024  # kB
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def measure(shape: str, n: int, *, max_chunks: int | None = None) -> dict[str, Any]:
    """In this process: build the input, then extract and chunk it; CPU seconds of that alone."""
    from indexer.extract import Unindexable, extract
    from rag_shared.chunking import chunk_text

    key, build = SHAPES[shape]
    data = build(n)
    t0 = time.process_time()
    try:
        out = extract(key, data)
        chunks = sum(1 for _ in islice(chunk_text(out.text, markdown=out.markdown), max_chunks))
        result = f"{len(out.text):,} chars, {chunks:,} chunks"
    except Unindexable as exc:
        result = f"skipped: {exc.reason}"
    seconds = time.process_time() - t0
    peak = peak_rss_mb()
    return {"shape": shape, "n": n, "bytes": len(data), "seconds": seconds, "peak_mb": peak, "result": result}


def in_child(shape: str, n: int, max_chunks: int | None = None) -> dict[str, Any]:
    """:func:`measure` in a fresh interpreter, so its peak RSS is not the caller's."""
    code = (
        "import json, sys; from bench.hostile import measure; "
        "print(json.dumps(measure(sys.argv[1], int(sys.argv[2]), max_chunks=json.loads(sys.argv[3]))))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, shape, str(n), json.dumps(max_chunks)],
        capture_output=True,
        text=True,
        check=True,
        timeout=900,
    )
    result: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


SIZES = {"pdf high-ratio stream": (500_000, 1_000_000, 70_000_000)}
DEFAULT_SIZES = (2_000_000, 4_000_000, 31_000_000)


def run() -> list[str]:
    from bench.harness import row

    rows = []
    for shape in SHAPES:
        previous: dict[str, Any] | None = None
        for n in SIZES.get(shape, DEFAULT_SIZES):
            r = in_child(shape, n)
            growth = ""
            if previous and previous["seconds"] > 0.01:
                growth = f"{r['seconds'] / previous['seconds']:.2f}× the time for {n / previous['n']:.1f}× the input"
            rows.append(
                row(
                    f"Hostile {shape}, {r['bytes'] / 1e6:.2f} MB",
                    f"{r['seconds']:.2f} s CPU, peak RSS {r['peak_mb']:.0f} MB ({r['peak_mb'] / LAMBDA_MB:.0%})",
                    growth,
                    r["result"],
                )
            )
            print(rows[-1], flush=True)
            previous = r
    return rows


if __name__ == "__main__":
    run()
