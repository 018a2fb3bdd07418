"""Text out of an S3 object's bytes, or a clear reason why not.

Plain text, Markdown, source code, JSON, CSV and the like are decoded as UTF-8 (BOM-aware),
then as the charset the object's Content-Type declares; HTML is reduced to its text with
headings kept as Markdown headings (so chunks carry them); PDF goes through pypdf. Anything
binary, undecodable or empty is refused with :class:`Unindexable`, which the indexer reports and
skips instead of retrying.

Hostile files are bounded apart from their size in bytes (:class:`Limits`): a 200 kB PDF can inflate
to 700 MB of text, so extracted characters and PDF pages are counted as they come and extraction
stops at the first bound crossed. Every step is linear in the input, and a text file is held
decoded once (never bytes, a stripped copy and a str at the same time beyond the caller's bytes).
"""

from __future__ import annotations

import codecs
import io
import re
from collections.abc import Iterator
from dataclasses import dataclass
from html import unescape
from html.parser import HTMLParser
from pathlib import PurePosixPath
from typing import Any, ClassVar

TEXT_SUFFIXES = {
    ".txt",
    ".text",
    ".md",
    ".markdown",
    ".rst",
    ".adoc",
    ".csv",
    ".tsv",
    ".json",
    ".jsonl",
    ".ndjson",
    ".yaml",
    ".yml",
    ".toml",
    ".ini",
    ".cfg",
    ".conf",
    ".xml",
    ".log",
    ".tex",
    ".srt",
    ".vtt",
    ".py",
    ".js",
    ".mjs",
    ".ts",
    ".tsx",
    ".jsx",
    ".java",
    ".kt",
    ".scala",
    ".go",
    ".rs",
    ".c",
    ".h",
    ".cc",
    ".cpp",
    ".hpp",
    ".cs",
    ".rb",
    ".php",
    ".swift",
    ".m",
    ".sh",
    ".bash",
    ".zsh",
    ".ps1",
    ".sql",
    ".r",
    ".lua",
    ".pl",
    ".dart",
    ".vue",
    ".svelte",
    ".css",
    ".scss",
    ".proto",
    ".graphql",
    ".tf",
    ".dockerfile",
    ".makefile",
    ".gradle",
}
MARKDOWN_SUFFIXES = {".md", ".markdown"}
# Office Open XML (indexer.office): by suffix or by Content-Type (IANA media types registry).
OFFICE_SUFFIXES = {".docx": "docx", ".xlsx": "xlsx", ".pptx": "pptx"}
OFFICE_TYPES = {
    "application/vnd.openxmlformats-officedocument.wordprocessingml.document": "docx",
    "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet": "xlsx",
    "application/vnd.openxmlformats-officedocument.presentationml.presentation": "pptx",
}
HTML_SUFFIXES = {".html", ".htm", ".xhtml"}
BINARY_SUFFIXES = {
    ".png",
    ".jpg",
    ".jpeg",
    ".gif",
    ".webp",
    ".bmp",
    ".ico",
    ".tif",
    ".tiff",
    ".mp3",
    ".wav",
    ".flac",
    ".mp4",
    ".mov",
    ".avi",
    ".mkv",
    ".zip",
    ".gz",
    ".tgz",
    ".bz2",
    ".xz",
    ".7z",
    ".rar",
    ".tar",
    ".exe",
    ".dll",
    ".so",
    ".dylib",
    ".bin",
    ".class",
    ".jar",
    ".woff",
    ".woff2",
    ".ttf",
    ".otf",
    ".parquet",
    ".avro",
    ".orc",
    ".sqlite",
    ".db",
    ".pyc",
    ".doc",
    ".xls",
    ".ppt",
}
_SNIFF_BYTES = 8192
_SLICE = 1 << 20  # bytes decoded at a time when text must be counted or fed incrementally
_WS = " \t\r\f\v\n"
_LEAD_WS = re.compile(r"[ \t\r\f\v\n]+")
_BLANKS = re.compile(r"[ \t\r\f\v]+")
_SPACED_NL = re.compile(r" ?\n ?")  # after _BLANKS a run of blanks is one space
_MANY_NL = re.compile(r"\n{3,}")
_NORMALISE = 1 << 16
_FEEDS = 4  # pieces an HTML page is fed to the parser in (see _feed_pieces)
_MAX_TITLE = 500  # characters of an HTML <title> kept; an unclosed <title> must not swallow the page


@dataclass(frozen=True)
class Limits:
    """What one object may expand into, bounded apart from its size in bytes.

    ``max_chars`` bounds extracted text: a str costs up to 4 bytes a character (one emoji makes
    CPython store the whole string as UCS-4), so 32 M characters are at most 128 MB, which with
    the object's bytes and the chunker keeps a worst case under 60% of the indexer's 1,024 MB
    (``tests/indexer/test_hostile_memory.py``). ``max_pdf_pages`` bounds the page walk, and
    ``max_pdf_stream_bytes`` the size one PDF stream may inflate to (pypdf's own default is 75 MB).
    ``max_pdf_content_bytes`` bounds the page content inflated over the whole document: pypdf
    extracts text at about 2-5 s per MB of content stream (measured: 2 MB 4.8 s, 7.9 MB 36 s on
    one core), and its decoded streams stay cached on the reader, so this bounds both time and
    memory where a 200 kB file inflating to 70 MB of text took 1.2 GB before.
    """

    max_chars: int = 32_000_000
    max_pdf_pages: int = 5_000
    max_pdf_stream_bytes: int = 4_000_000
    max_pdf_content_bytes: int = 32_000_000
    # Office files are zips (indexer.office). Our own bounds, in the spirit of Apache POI's
    # ZipSecureFile (which refuses zip bombs before parsing): a real DOCX/XLSX/PPTX has tens to a
    # few hundred parts, so 10,000 members is generous while keeping the central directory small;
    # the XML parts read may inflate to 100 MB together (twice the 50 MB MAX_FILE_BYTES default);
    # openpyxl read-only is slow per item: measured on this shared 2-core machine at load ~9,
    # 200 K cells took 13 s (67 us each) and 250 K shared strings (4.3 MB) 8 s (32 us each). So a
    # workbook may cost 2 M cells read (padding to each row's last cell counted) and a shared-strings
    # part of 16 MB (~1 M short strings, loaded whole before the first row): about 2 min and 30 s
    # at that pace at worst, well inside the indexer's 15-minute timeout; reported and skipped beyond.
    max_zip_members: int = 10_000
    max_zip_xml_bytes: int = 100_000_000
    max_xlsx_cells: int = 2_000_000
    max_xlsx_shared_strings_bytes: int = 16_000_000


DEFAULT_LIMITS = Limits()


class Unindexable(Exception):
    """The object cannot be turned into text; ``reason`` says why (logged, then skipped)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class Extracted:
    text: str
    kind: str  # text | markdown | html | pdf | docx | xlsx | pptx
    markdown: bool  # headings are Markdown headings


def _charset(content_type: str | None) -> str | None:
    if not content_type:
        return None
    m = re.search(r"charset=([\w\-.:]{1,64})", content_type, re.I)
    if not m:
        return None
    try:
        return codecs.lookup(m.group(1)).name
    except LookupError:
        return None


def _too_long(max_chars: int) -> Unindexable:
    return Unindexable(f"text is over the {max_chars}-character limit (MAX_EXTRACTED_CHARS)")


def _slices(data: bytes, encoding: str, max_chars: int) -> Iterator[str]:
    """``data`` decoded one slice at a time, counted against ``max_chars`` as it goes, so an
    over-long file is refused before it is ever decoded whole. Raises UnicodeDecodeError with
    ``start`` as an offset into ``data``."""
    decoder = codecs.getincrementaldecoder(encoding)()
    view = memoryview(data)
    count = 0
    for offset in range(0, len(data), _SLICE):
        try:
            piece = decoder.decode(view[offset : offset + _SLICE], final=offset + _SLICE >= len(data))
        except UnicodeDecodeError as exc:
            exc.start += offset
            raise
        count += len(piece)
        if count > max_chars:
            raise _too_long(max_chars)
        if piece:
            yield piece


def _encoding(data: bytes) -> str:
    if data.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        return "utf-16"
    return "utf-8-sig"


def _decode_error(encoding: str, exc: UnicodeDecodeError, declared: str | None) -> Unindexable:
    if encoding == "utf-16":
        return Unindexable("starts with a UTF-16 byte-order mark but is not valid UTF-16")
    if declared:
        return Unindexable(f"not valid {declared} as its Content-Type declares")
    return Unindexable(
        f"not valid UTF-8 (byte {exc.start}); upload it as UTF-8 or set its Content-Type charset, "
        "e.g. 'text/plain; charset=gb18030'"
    )


def _candidates(data: bytes, content_type: str | None) -> list[tuple[str, str | None]]:
    """(encoding, declared charset or None) to try in order."""
    first = _encoding(data)
    declared = _charset(content_type)
    out: list[tuple[str, str | None]] = [(first, None)]
    if first == "utf-8-sig" and declared and declared != "utf-8":
        out.append((declared, declared))
    return out


def decode(data: bytes, content_type: str | None = None, *, max_chars: int = DEFAULT_LIMITS.max_chars) -> str:
    """UTF-8 (with or without BOM), UTF-16 by BOM, else the declared charset; else :class:`Unindexable`.

    One decoded copy: a file that may be longer than ``max_chars`` is first counted slice by slice
    (nothing kept), then decoded in one call."""
    candidates = _candidates(data, content_type)
    for i, (encoding, declared) in enumerate(candidates):
        try:
            if len(data) > max_chars:  # UTF-8/16 and every 8-bit charset: characters <= bytes
                for _ in _slices(data, encoding, max_chars):
                    pass
            return data.decode(encoding)
        except UnicodeDecodeError as exc:
            if i + 1 < len(candidates):
                continue
            raise _decode_error(encoding, exc, declared) from None
    raise AssertionError("unreachable")  # pragma: no cover


def looks_binary(data: bytes) -> bool:
    head = data[:_SNIFF_BYTES]
    return b"\x00" in head and not head.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE))


class _HtmlText(HTMLParser):
    """Visible text; <h1>-<h6> become Markdown headings, block elements become line breaks.

    Text is kept as a list of parts compacted every few thousand parts (a page of a million tiny
    tags must not cost a million str objects), the title as bounded parts (``self.title += data``
    was quadratic under an unclosed <title>)."""

    _SKIP: ClassVar[set[str]] = {"script", "style", "noscript", "template", "svg", "head"}
    _BLOCK: ClassVar[set[str]] = {
        "p",
        "div",
        "br",
        "li",
        "tr",
        "section",
        "article",
        "table",
        "ul",
        "ol",
        "pre",
        "blockquote",
    }
    _HEADINGS: ClassVar[dict[str, str]] = {f"h{n}": "\n\n" + "#" * n + " " for n in range(1, 7)}
    _COMPACT = 4096

    def __init__(self, max_chars: int) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self.blocks: list[str] = []
        self.chars = 0
        self.max_chars = max_chars
        self._skip = 0
        self._title: list[str] = []
        self._title_len = 0
        self._in_title = False
        self._newlines = 0  # whitespace held back after the last text: newlines in it
        self._blank = False  # and whether there was any

    @property
    def title(self) -> str:
        return "".join(self._title)

    def _add(self, text: str) -> None:
        """Append ``text`` with whitespace normalised as it streams in: a run of blanks and
        newlines becomes one space, or its newlines (at most two). Done per piece of at most
        64 K characters with the held-back trailing run carried over, because ``re.sub`` over
        the whole page builds a list of every matched piece: 31 MB of text peaked at 713 MB."""
        for i in range(0, len(text), _NORMALISE):
            self._add_piece(text[i : i + _NORMALISE])

    def _add_piece(self, piece: str) -> None:
        lead = _LEAD_WS.match(piece)
        start = lead.end() if lead else 0
        self._pending(piece[:start])
        if start == len(piece):
            return
        body = piece[start:].rstrip(_WS)
        trailing = piece[start + len(body) :]
        if self.chars:  # nothing before the first text: the page is stripped
            sep = "\n" * min(self._newlines, 2) if self._newlines else (" " if self._blank else "")
            self._out(sep)
        body = _BLANKS.sub(" ", body)
        body = _SPACED_NL.sub("\n", body)
        self._out(_MANY_NL.sub("\n\n", body))
        self._newlines, self._blank = 0, False
        self._pending(trailing)

    def _pending(self, ws: str) -> None:
        if ws:
            self._newlines += ws.count("\n")
            self._blank = True

    def _out(self, text: str) -> None:
        if not text:
            return
        self.parts.append(text)
        self.chars += len(text)
        if self.chars > self.max_chars:
            raise _too_long(self.max_chars)
        if len(self.parts) >= self._COMPACT:
            self.blocks.append("".join(self.parts))
            self.parts.clear()

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "title":
            self._in_title = True
        if tag in self._SKIP:
            self._skip += 1
        elif tag in self._HEADINGS:
            self._add(self._HEADINGS[tag])
        elif tag in self._BLOCK:
            self._add("\n")

    def handle_endtag(self, tag: str) -> None:
        if tag == "title":
            self._in_title = False
        if tag in self._SKIP:
            self._skip = max(0, self._skip - 1)
        elif tag in self._HEADINGS or tag in self._BLOCK:
            self._add("\n\n" if tag != "br" else "\n")

    def handle_data(self, data: str) -> None:
        if self._in_title and self._title_len < _MAX_TITLE:
            self._title.append(data[: _MAX_TITLE - self._title_len])
            self._title_len += len(self._title[-1])
        if not self._skip:
            self._add(data)

    def parse_starttag(self, i: int) -> int:
        """Tag name only, found in linear time and constant memory. html.parser's own tolerant
        start-tag regex keeps a backtracking frame per attribute and then builds the attribute
        list: one unclosed 4 MB tag of a million attributes ('<a b<a b…') took 550 MB."""
        rawdata = self.rawdata
        m = _TAG_NAME.match(rawdata, i)
        if m is None:  # pragma: no cover - goahead only calls this after '<' + letter
            return -1
        end = _tag_end(rawdata, m.end())
        if end < 0:
            return -1  # incomplete: more input, or dropped at the end (see finish)
        tag = m.group(1).lower()
        self.lasttag = tag
        self.handle_starttag(tag, [])
        if rawdata[end - 2] == "/":
            self.handle_endtag(tag)
        elif tag in self.CDATA_CONTENT_ELEMENTS:
            self.set_cdata_mode(tag)
        return end

    def finish(self) -> None:
        """End of input as HTML5 ends it: an unclosed comment or declaration closes at end of file
        and an unclosed tag is dropped. Not ``close()``: before Python 3.12.11/3.13.4 it rescans
        the rest of the input for every '<' of an unclosed construct, quadratic (CPython
        gh-135462, CVE-2025-6069), and Lambda's runtime patch level is not ours to choose."""
        rest, self.rawdata = self.rawdata, ""
        if rest and not rest.startswith("<") and not self.cdata_elem:
            self.handle_data(unescape(rest))  # text held back for a possibly cut character reference

    def text(self) -> str:
        self.blocks.append("".join(self.parts))
        self.parts.clear()
        raw = "".join(self.blocks)
        self.blocks.clear()
        return raw.strip()  # only Unicode blanks can be left at the ends; no copy otherwise


_TAG_NAME = re.compile(r"<([a-zA-Z][^\t\n\r\f />\x00]*)")
# '>' ends a tag unless inside a quoted attribute value; an unclosed quote is an ordinary character
_TAG_PART = re.compile(r"""=\s*(?:"[^"]*"|'[^']*')|>""")


def _tag_end(rawdata: str, pos: int) -> int:
    """Index just past the '>' that closes the tag whose attributes start at ``pos``, or -1."""
    for m in _TAG_PART.finditer(rawdata, pos):
        if m.group() == ">":
            return m.end()
    return -1


def _feed_pieces(text: str) -> Iterator[str]:
    """_FEEDS pieces: html.parser rescans an unfinished construct (an unclosed comment or tag) from
    its start on every feed, so the work is the number of feeds times the input; a constant
    number keeps it linear (1 MiB feeds made a 2 MB page of '<a b' take 4x a 1 MB one)."""
    step = len(text) // _FEEDS + 1
    for i in range(0, len(text), step):
        yield text[i : i + step]


def _parse_html(pieces: Iterator[str], max_chars: int) -> str:
    parser = _HtmlText(max_chars)
    for piece in pieces:
        parser.feed(piece)
    parser.finish()
    body = parser.text()
    title = parser.title.strip()
    if title and not body.startswith("#"):
        body = f"# {title}\n\n{body}"
    return body


def html_to_text(html: str, *, max_chars: int = DEFAULT_LIMITS.max_chars) -> str:
    return _parse_html(_feed_pieces(html), max_chars)


def _html_from_bytes(data: bytes, content_type: str | None, max_chars: int) -> str:
    """Decode and parse in slices, so the page is never held decoded whole next to its text."""
    candidates = _candidates(data, content_type)
    for i, (encoding, declared) in enumerate(candidates):
        try:
            # about _FEEDS pieces whatever the size: see _feed_pieces
            return _parse_html(_regroup(_slices(data, encoding, max_chars), len(data) // _FEEDS + 1), max_chars)
        except UnicodeDecodeError as exc:
            if i + 1 < len(candidates):
                continue
            raise _decode_error(encoding, exc, declared) from None
    raise AssertionError("unreachable")  # pragma: no cover


def _regroup(pieces: Iterator[str], at_least: int) -> Iterator[str]:
    buf: list[str] = []
    size = 0
    for piece in pieces:
        buf.append(piece)
        size += len(piece)
        if size >= at_least:
            yield "".join(buf)
            buf, size = [], 0
    if buf:
        yield "".join(buf)


def pdf_to_text(data: bytes, *, limits: Limits = DEFAULT_LIMITS) -> str:
    """Page by page, stopping at the first bound crossed instead of inflating everything."""
    from pypdf import PdfReader, apply_configuration  # imported on first PDF: keeps the cold start light

    parts: list[str] = []
    chars = 0
    # pypdf's resource limits (pypdf.Configuration; pypdf.readthedocs.io modules/configuration.html
    # and user/security.html: 75 MB per stream by default): a stream inflating past
    # max_pdf_stream_bytes raises LimitReachedError instead of being decompressed further.
    with apply_configuration(
        zlib_maximum_output_length=limits.max_pdf_stream_bytes,
        lzw_maximum_output_length=limits.max_pdf_stream_bytes,
        run_length_maximum_output_length=limits.max_pdf_stream_bytes,
        brotli_maximum_output_length=limits.max_pdf_stream_bytes,
        array_based_stream_maximum_output_length=limits.max_pdf_stream_bytes,
        stream_decoding_work_maximum_length=4 * limits.max_pdf_stream_bytes,
    ):
        try:
            reader = PdfReader(io.BytesIO(data))
            if reader.is_encrypted:
                try:
                    reader.decrypt("")
                except Exception:
                    raise Unindexable("PDF is encrypted") from None
            pages = len(reader.pages)
            if pages > limits.max_pdf_pages:
                raise Unindexable(f"PDF has {pages} pages, over the {limits.max_pdf_pages}-page limit (MAX_PDF_PAGES)")
            content = 0
            for page in reader.pages:
                content += _content_bytes(page)  # inflated (and cached) before extract_text parses it
                if content > limits.max_pdf_content_bytes:
                    raise Unindexable(
                        f"PDF page content inflates past the {limits.max_pdf_content_bytes}-byte limit "
                        "(MAX_PDF_CONTENT_BYTES)"
                    )
                text = (page.extract_text() or "").strip()
                chars += len(text) + 2
                if chars > limits.max_chars:
                    raise _too_long(limits.max_chars)
                if text:
                    parts.append(text)
        except (Unindexable, MemoryError):
            raise
        except Exception as exc:  # pypdf raises many types on malformed files; none will change on retry
            from pypdf.errors import LimitReachedError

            if isinstance(exc, LimitReachedError):
                raise Unindexable(
                    f"PDF stream inflates past the {limits.max_pdf_stream_bytes}-byte limit (MAX_PDF_STREAM_BYTES)"
                ) from None
            raise Unindexable(f"PDF could not be read ({type(exc).__name__})") from None
    if not parts:
        raise Unindexable("PDF has no extractable text (scanned images need OCR first)")
    return "\n\n".join(parts)


def office_to_text(kind: str, data: bytes, limits: Limits = DEFAULT_LIMITS) -> str:
    """DOCX, XLSX or PPTX as Markdown (indexer.office, imported on first use: cold start)."""
    from indexer import office

    reader = {"docx": office.docx_to_text, "xlsx": office.xlsx_to_text, "pptx": office.pptx_to_text}[kind]
    try:
        text = reader(data, limits)
    except (Unindexable, MemoryError):
        raise
    except office.OfficeError as exc:
        raise Unindexable(f"{kind.upper()} refused: {exc}") from None
    except Exception as exc:  # zipfile, expat and openpyxl raise many types on corrupt files; none changes on retry
        raise Unindexable(f"{kind.upper()} could not be read ({type(exc).__name__})") from None
    if _blank(text):
        raise Unindexable(f"{kind.upper()} has no text")
    return text


def _content_bytes(page: Any) -> int:
    """Inflated size of a page's content streams, as extract_text will concatenate them (an
    array naming one stream a thousand times counts a thousand times)."""
    contents = page.get("/Contents")
    if contents is None:
        return 0
    obj = contents.get_object()
    items = list(obj) if isinstance(obj, list) else [obj]  # pypdf's ArrayObject is a list
    total = 0
    for item in items:
        stream = item.get_object()
        get_data = getattr(stream, "get_data", None)
        if get_data is not None:
            total += len(get_data())
    return total


def _blank(data: bytes | str) -> bool:
    """Empty or whitespace only, without the copy ``strip()`` makes."""
    return not data or data.isspace()


def extract(key: str, data: bytes, content_type: str | None = None, *, limits: Limits = DEFAULT_LIMITS) -> Extracted:
    """Text of an object, chosen by its key's suffix, then its Content-Type, then by sniffing."""
    suffix = PurePosixPath(key).suffix.lower()
    ctype = (content_type or "").split(";")[0].strip().lower()
    if _blank(data):
        raise Unindexable("empty file")
    if suffix == ".pdf" or ctype == "application/pdf" or data.startswith(b"%PDF-"):
        return Extracted(pdf_to_text(data, limits=limits), "pdf", False)
    if office := OFFICE_SUFFIXES.get(suffix) or OFFICE_TYPES.get(ctype):
        return Extracted(office_to_text(office, data, limits), office, True)
    if suffix in BINARY_SUFFIXES:
        raise Unindexable(f"unsupported file type {suffix}")
    if looks_binary(data):
        raise Unindexable("binary content")
    if suffix in HTML_SUFFIXES or ctype in ("text/html", "application/xhtml+xml"):
        result = Extracted(_html_from_bytes(data, content_type, limits.max_chars), "html", True)
    else:
        text = decode(data, content_type, max_chars=limits.max_chars)
        if suffix in MARKDOWN_SUFFIXES or ctype == "text/markdown":
            result = Extracted(text, "markdown", True)
        else:
            result = Extracted(text, "text", False)
        del text
    if _blank(result.text):
        raise Unindexable("no text after extraction")
    return result
