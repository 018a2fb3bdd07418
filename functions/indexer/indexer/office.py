"""Text of Office Open XML files (DOCX, XLSX, PPTX) as Markdown, headings kept, bounded.

Headings become Markdown headings so chunks carry them: a DOCX paragraph whose style is a heading
(``heading N`` in styles.xml, or an outline level), each XLSX sheet's name, each PPTX slide's title.

Libraries: openpyxl (read-only mode, pure Python, ~2 MB) for XLSX, whose cell model (shared strings,
number and date formats, cached formula values) is worth a library. DOCX and PPTX text is a walk
over two XML parts with the standard library: python-docx would add lxml (+14 MB to the layer) and
python-pptx lxml and Pillow (+35 MB), for text we read in ~100 lines. The tests build their files
with python-docx, python-pptx and openpyxl (dev dependencies), so the reader is checked against
files the libraries themselves write.

Hostile files: an Office file is a zip, so before anything is inflated the member count (read from
the end-of-central-directory record, before ``zipfile`` builds an entry per member) and the total
uncompressed size of the parts we read are checked against :class:`~indexer.extract.Limits`
(``max_zip_members``, ``max_zip_xml_bytes``; for XLSX also the shared strings, which openpyxl loads
whole, and the cells read); ``zipfile`` stops inflating a member at its declared
size, so declared sizes bound the work. XML is parsed through defusedxml, which refuses entity
declarations and external references (billion laughs, quadratic blowup, XXE; Python docs, "XML
vulnerabilities"); openpyxl uses it too when installed (openpyxl docs, "Security"). DOCX paragraphs are streamed
(iterparse, each cleared and dropped once read), and extracted characters count against
``max_chars`` as they come.
"""

from __future__ import annotations

import io
import re
import struct
import xml.etree.ElementTree as ET
import zipfile
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from defusedxml.ElementTree import fromstring, iterparse

if TYPE_CHECKING:
    from indexer.extract import Limits

W = "{http://schemas.openxmlformats.org/wordprocessingml/2006/main}"
A = "{http://schemas.openxmlformats.org/drawingml/2006/main}"
P = "{http://schemas.openxmlformats.org/presentationml/2006/main}"
R = "{http://schemas.openxmlformats.org/officeDocument/2006/relationships}"
PKG_REL = "{http://schemas.openxmlformats.org/package/2006/relationships}"
_EOCD = b"PK\x05\x06"
_HEADING_NAME = re.compile(r"heading\s*([1-9])$", re.I)


class OfficeError(Exception):
    """Why the file cannot be read; the caller reports it as Unindexable."""


def _members(data: bytes) -> int:
    """Entries in the zip's central directory, from its end record (ZIP File Format Specification
    (PKWARE APPNOTE.TXT) 4.3.16: total entries at offset 10, 2 bytes), read before ``zipfile``
    materializes one object per entry. 0xFFFF means a ZIP64 archive: far beyond any Office file."""
    at = data.rfind(_EOCD, max(0, len(data) - 65_557))  # EOCD: 22 bytes + a comment of at most 65,535
    if at < 0 or at + 22 > len(data):
        raise OfficeError("not a zip archive (no end of central directory)")
    (entries,) = struct.unpack_from("<H", data, at + 10)
    return int(entries)


def _archive(data: bytes, limits: Limits) -> zipfile.ZipFile:
    members = _members(data)
    if members >= 0xFFFF or members > limits.max_zip_members:
        raise OfficeError(f"zip has {members} members, over the {limits.max_zip_members}-member limit")
    try:
        return zipfile.ZipFile(io.BytesIO(data))
    except (zipfile.BadZipFile, ValueError, EOFError) as exc:
        raise OfficeError(f"not a valid zip archive ({type(exc).__name__})") from None


def _check_sizes(zf: zipfile.ZipFile, names: list[str], limits: Limits) -> None:
    """The parts we will inflate must fit ``max_zip_xml_bytes`` together, by their declared sizes."""
    total = 0
    for name in names:
        try:
            total += zf.getinfo(name).file_size
        except KeyError:
            raise OfficeError(f"part {name} is missing") from None
    if total > limits.max_zip_xml_bytes:
        raise OfficeError(
            f"its XML parts inflate to {total} bytes, over the {limits.max_zip_xml_bytes}-byte limit "
            "(MAX_ZIP_XML_BYTES)"
        )


class _Out:
    """Markdown blocks, counted against ``max_chars`` as they are added."""

    def __init__(self, max_chars: int) -> None:
        self.parts: list[str] = []
        self.chars = 0
        self.max_chars = max_chars

    def add(self, block: str) -> None:
        block = block.strip()
        if not block:
            return
        self.chars += len(block) + 2
        if self.chars > self.max_chars:
            from indexer.extract import _too_long

            raise _too_long(self.max_chars)
        self.parts.append(block)

    def text(self) -> str:
        return "\n\n".join(self.parts)


def _heading(level: int, text: str) -> str:
    return "#" * max(1, min(level, 6)) + " " + " ".join(text.split())


# DOCX


def _docx_heading_styles(zf: zipfile.ZipFile) -> dict[str, int]:
    """Style id -> heading level: a built-in ``heading N`` / ``Title`` name (names in styles.xml are
    English whatever the UI language; ids are localized), or an outline level in the style."""
    if "word/styles.xml" not in zf.namelist():
        return {}
    levels: dict[str, int] = {}
    root = fromstring(zf.read("word/styles.xml"))
    for style in root.iter(W + "style"):
        sid = style.get(W + "styleId") or ""
        name = style.find(W + "name")
        value = (name.get(W + "val") or "") if name is not None else ""
        outline = style.find(f"{W}pPr/{W}outlineLvl")
        if m := _HEADING_NAME.match(value.strip()):
            levels[sid] = int(m.group(1))
        elif value.strip().lower() == "title":
            levels[sid] = 1
        elif outline is not None and (lvl := outline.get(W + "val", "")).isdigit() and int(lvl) < 9:
            levels[sid] = int(lvl) + 1
    return levels


def _paragraph_text(p: ET.Element) -> str:
    out: list[str] = []
    for el in p.iter():
        if el.tag == W + "t" and el.text:
            out.append(el.text)
        elif el.tag == W + "tab":
            out.append("\t")
        elif el.tag in (W + "br", W + "cr"):
            out.append("\n")
    return "".join(out)


def docx_to_text(data: bytes, limits: Limits) -> str:
    zf = _archive(data, limits)
    parts = ["word/document.xml"] + (["word/styles.xml"] if "word/styles.xml" in zf.namelist() else [])
    _check_sizes(zf, parts, limits)
    styles = _docx_heading_styles(zf)
    out = _Out(limits.max_chars)
    stack: list[ET.Element] = []
    with zf.open("word/document.xml") as src:
        for event, el in iterparse(src, events=("start", "end")):
            if event == "start":
                stack.append(el)
                continue
            stack.pop()
            if el.tag != W + "p":
                if el.tag == W + "tbl" and stack:
                    stack[-1].remove(el)  # a whole table read: drop it (its paragraphs were cleared)
                continue
            text = _paragraph_text(el)
            style = el.find(f"{W}pPr/{W}pStyle")
            outline = el.find(f"{W}pPr/{W}outlineLvl")
            level = styles.get(style.get(W + "val", "") if style is not None else "", 0)
            if not level and outline is not None and (lvl := outline.get(W + "val", "")).isdigit() and int(lvl) < 9:
                level = int(lvl) + 1
            out.add(_heading(level, text) if level and text.strip() else text)
            el.clear()
            if stack and stack[-1].tag == W + "body":
                stack[-1].remove(el)  # streamed: a million paragraphs never stay in memory
    return out.text()


# PPTX


def _rels(zf: zipfile.ZipFile, name: str) -> dict[str, str]:
    root = fromstring(zf.read(name))
    return {r.get("Id", ""): r.get("Target", "") for r in root.iter(PKG_REL + "Relationship")}


def _slide_names(zf: zipfile.ZipFile) -> list[str]:
    """Slide parts in presentation order (presentation.xml's sldIdLst through its relationships)."""
    pres = fromstring(zf.read("ppt/presentation.xml"))
    rels = _rels(zf, "ppt/_rels/presentation.xml.rels")
    names = []
    for sld in pres.iter(P + "sldId"):
        target = rels.get(sld.get(R + "id", ""), "")
        if target:
            names.append(target.lstrip("/") if target.startswith("/") else "ppt/" + target)
    return names


def _shape_paragraphs(shape: ET.Element) -> Iterator[str]:
    for p in shape.iter(A + "p"):
        text = "".join(t.text or "" for t in p.iter(A + "t"))
        if text.strip():
            yield text


def pptx_to_text(data: bytes, limits: Limits) -> str:
    zf = _archive(data, limits)
    _check_sizes(zf, ["ppt/presentation.xml", "ppt/_rels/presentation.xml.rels"], limits)
    slides = _slide_names(zf)
    _check_sizes(zf, ["ppt/presentation.xml", "ppt/_rels/presentation.xml.rels", *slides], limits)
    out = _Out(limits.max_chars)
    for number, name in enumerate(slides, 1):
        root = fromstring(zf.read(name))
        title: list[str] = []
        body: list[str] = []
        tree = root.find(f"{P}cSld/{P}spTree")
        for shape in list(tree) if tree is not None else []:
            ph = shape.find(f"{P}nvSpPr/{P}nvPr/{P}ph")
            is_title = ph is not None and ph.get("type") in ("title", "ctrTitle")
            (title if is_title else body).extend(_shape_paragraphs(shape))
        out.add(_heading(2, " ".join(title) if title else f"Slide {number}"))
        for text in body:
            out.add(text)
    return out.text()


# XLSX


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return " ".join(str(value).split())


def xlsx_to_text(data: bytes, limits: Limits) -> str:
    zf = _archive(data, limits)
    xml = [n for n in zf.namelist() if n.endswith(".xml") or n.endswith(".rels")]
    _check_sizes(zf, xml, limits)
    shared = sum(i.file_size for i in zf.infolist() if i.filename.lower().endswith("sharedstrings.xml"))
    if shared > limits.max_xlsx_shared_strings_bytes:
        raise OfficeError(
            f"its shared strings inflate to {shared} bytes, over the {limits.max_xlsx_shared_strings_bytes}-byte "
            "limit (MAX_XLSX_SHARED_STRINGS_BYTES)"
        )
    zf.close()
    from openpyxl import load_workbook  # imported on first workbook: keeps the cold start light

    wb = load_workbook(io.BytesIO(data), read_only=True, data_only=True)
    try:
        out = _Out(limits.max_chars)
        cells_seen = 0  # padded cells included: the work openpyxl and this loop do
        for ws in wb.worksheets:
            out.add(_heading(2, str(ws.title)))
            rows: list[str] = []
            # Declared dimensions may be missing or lie (openpyxl docs, "Read-only mode": "Worksheet
            # dimensions"); without them each row is padded only to its own last cell.
            ws.reset_dimensions()
            for row in ws.iter_rows(values_only=True):
                cells_seen += len(row)
                if cells_seen > limits.max_xlsx_cells:
                    raise OfficeError(f"workbook has over {limits.max_xlsx_cells} cells (MAX_XLSX_CELLS)")
                cells = [_cell(v) for v in row]
                while cells and not cells[-1]:
                    cells.pop()
                if cells:
                    rows.append(" | ".join(cells))
                    if len(rows) >= 50:
                        out.add("\n".join(rows))
                        rows = []
            out.add("\n".join(rows))
        return out.text()
    finally:
        wb.close()
