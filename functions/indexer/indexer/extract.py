"""Text out of an S3 object's bytes, or a clear reason why not.

Plain text, Markdown, source code, JSON, CSV and the like are decoded as UTF-8 (BOM-aware),
then as the charset the object's Content-Type declares; HTML is reduced to its text with
headings kept as Markdown headings (so chunks carry them); PDF goes through pypdf. Anything
binary, undecodable or empty is refused with :class:`Unindexable`, which the indexer reports and
skips instead of retrying.
"""

from __future__ import annotations

import codecs
import io
import re
from dataclasses import dataclass
from html.parser import HTMLParser
from pathlib import PurePosixPath
from typing import ClassVar

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
    ".docx",
    ".xlsx",
    ".pptx",
    ".doc",
    ".xls",
    ".ppt",
}
_SNIFF_BYTES = 8192


class Unindexable(Exception):
    """The object cannot be turned into text; ``reason`` says why (logged, then skipped)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class Extracted:
    text: str
    kind: str  # text | markdown | html | pdf
    markdown: bool  # headings are Markdown headings


def _charset(content_type: str | None) -> str | None:
    if not content_type:
        return None
    m = re.search(r"charset=([\w\-.:]+)", content_type, re.I)
    if not m:
        return None
    try:
        return codecs.lookup(m.group(1)).name
    except LookupError:
        return None


def decode(data: bytes, content_type: str | None = None) -> str:
    """UTF-8 (with or without BOM), UTF-16 by BOM, else the declared charset; else :class:`Unindexable`."""
    if data.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        try:
            return data.decode("utf-16")
        except UnicodeDecodeError:
            raise Unindexable("starts with a UTF-16 byte-order mark but is not valid UTF-16") from None
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        declared = _charset(content_type)
        if declared and declared != "utf-8":
            try:
                return data.decode(declared)
            except UnicodeDecodeError:
                raise Unindexable(f"not valid {declared} as its Content-Type declares") from None
        raise Unindexable(
            f"not valid UTF-8 (byte {exc.start}); upload it as UTF-8 or set its Content-Type charset, "
            "e.g. 'text/plain; charset=gb18030'"
        ) from None


def looks_binary(data: bytes) -> bool:
    head = data[:_SNIFF_BYTES]
    return b"\x00" in head and not head.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE))


class _HtmlText(HTMLParser):
    """Visible text; <h1>-<h6> become Markdown headings, block elements become line breaks."""

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

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self._skip = 0
        self.title = ""
        self._in_title = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "title":
            self._in_title = True
        if tag in self._SKIP:
            self._skip += 1
        elif re.fullmatch(r"h[1-6]", tag):
            self.parts.append("\n\n" + "#" * int(tag[1]) + " ")
        elif tag in self._BLOCK:
            self.parts.append("\n")

    def handle_endtag(self, tag: str) -> None:
        if tag == "title":
            self._in_title = False
        if tag in self._SKIP:
            self._skip = max(0, self._skip - 1)
        elif re.fullmatch(r"h[1-6]", tag) or tag in self._BLOCK:
            self.parts.append("\n\n" if tag != "br" else "\n")

    def handle_data(self, data: str) -> None:
        if self._in_title:
            self.title += data
        if not self._skip:
            self.parts.append(data)

    def text(self) -> str:
        raw = "".join(self.parts)
        raw = re.sub(r"[ \t\r\f\v]+", " ", raw)
        raw = re.sub(r" *\n *", "\n", raw)
        return re.sub(r"\n{3,}", "\n\n", raw).strip()


def html_to_text(html: str) -> str:
    parser = _HtmlText()
    parser.feed(html)
    parser.close()
    body = parser.text()
    title = parser.title.strip()
    if title and not body.startswith("#"):
        body = f"# {title}\n\n{body}"
    return body


def pdf_to_text(data: bytes) -> str:
    from pypdf import PdfReader  # imported on first PDF: keeps the cold start light
    from pypdf.errors import PdfReadError

    try:
        reader = PdfReader(io.BytesIO(data))
        if reader.is_encrypted:
            try:
                reader.decrypt("")
            except Exception:
                raise Unindexable("PDF is encrypted") from None
        pages = [page.extract_text() or "" for page in reader.pages]
    except Unindexable:
        raise
    except (PdfReadError, ValueError, KeyError, TypeError) as exc:
        raise Unindexable(f"PDF could not be read ({type(exc).__name__})") from None
    text = "\n\n".join(p.strip() for p in pages if p.strip())
    if not text:
        raise Unindexable("PDF has no extractable text (scanned images need OCR first)")
    return text


def extract(key: str, data: bytes, content_type: str | None = None) -> Extracted:
    """Text of an object, chosen by its key's suffix, then its Content-Type, then by sniffing."""
    suffix = PurePosixPath(key).suffix.lower()
    ctype = (content_type or "").split(";")[0].strip().lower()
    if not data.strip():
        raise Unindexable("empty file")
    if suffix == ".pdf" or ctype == "application/pdf" or data.startswith(b"%PDF-"):
        return Extracted(pdf_to_text(data), "pdf", False)
    if suffix in BINARY_SUFFIXES:
        raise Unindexable(f"unsupported file type {suffix}")
    if looks_binary(data):
        raise Unindexable("binary content")
    text = decode(data, content_type)
    if suffix in HTML_SUFFIXES or ctype in ("text/html", "application/xhtml+xml"):
        result = Extracted(html_to_text(text), "html", True)
    elif suffix in MARKDOWN_SUFFIXES or ctype == "text/markdown":
        result = Extracted(text, "markdown", True)
    else:
        result = Extracted(text, "text", False)
    if not result.text.strip():
        raise Unindexable("no text after extraction")
    return result
