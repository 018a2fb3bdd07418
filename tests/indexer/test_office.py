"""DOCX, XLSX and PPTX: text with headings, sheet names and slide titles as chunk headings, built
with python-docx, openpyxl and python-pptx themselves; hostile and corrupt files refused once."""

from __future__ import annotations

import io
import zipfile
from dataclasses import replace

import pytest
from indexer.extract import DEFAULT_LIMITS, Unindexable, extract
from rag_shared.chunking import chunk_text

from tests.indexer.test_handler import store_for

DOCX_TYPE = "application/vnd.openxmlformats-officedocument.wordprocessingml.document"


def make_docx() -> bytes:
    import docx

    d = docx.Document()
    d.add_heading("Leave policy", level=1)
    d.add_paragraph("Employees get 25 days of annual leave.")
    d.add_heading("Travel abroad", level=2)
    d.add_paragraph("Trips abroad need approval two weeks ahead.")
    table = d.add_table(rows=1, cols=2)
    table.rows[0].cells[0].text = "Grade"
    table.rows[0].cells[1].text = "Per diem 80 EUR"
    buf = io.BytesIO()
    d.save(buf)
    return buf.getvalue()


def make_xlsx() -> bytes:
    from openpyxl import Workbook

    wb = Workbook()
    ws = wb.create_sheet("Budget", 0)
    wb.remove(wb.worksheets[1])  # the default sheet
    ws.append(["Item", "Cost"])
    ws.append(["Laptop", 1200])
    ws.append(["Desk", 350.5])
    staff = wb.create_sheet("Staff")
    staff.append(["Name", "Team"])
    staff.append(["Ann", "Search"])
    buf = io.BytesIO()
    wb.save(buf)
    return buf.getvalue()


def make_pptx() -> bytes:
    from pptx import Presentation

    prs = Presentation()
    slide = prs.slides.add_slide(prs.slide_layouts[1])  # title and content
    slide.shapes.title.text = "Quarterly results"
    slide.placeholders[1].text = "Revenue grew 12 percent."
    blank = prs.slides.add_slide(prs.slide_layouts[6])  # blank: no title
    from pptx.util import Inches

    blank.shapes.add_textbox(Inches(1), Inches(1), Inches(4), Inches(1)).text_frame.text = "Questions welcome."
    buf = io.BytesIO()
    prs.save(buf)
    return buf.getvalue()


def test_docx_headings_become_chunk_headings():
    got = extract("hr/policy.docx", make_docx())
    assert got.kind == "docx" and got.markdown
    assert got.text.splitlines()[0] == "# Leave policy"
    assert "## Travel abroad" in got.text and "Per diem 80 EUR" in got.text
    chunks = list(chunk_text(got.text, size=15, overlap=0, markdown=True))
    travel = next(c for c in chunks if "two weeks" in c.text)
    assert travel.heading is not None and "Travel abroad" in travel.heading


def test_xlsx_sheet_names_become_headings_and_rows_lines():
    got = extract("finance/budget.xlsx", make_xlsx())
    assert got.kind == "xlsx"
    assert got.text.split("\n\n") == [
        "## Budget",
        "Item | Cost\nLaptop | 1200\nDesk | 350.5",
        "## Staff",
        "Name | Team\nAnn | Search",
    ]


def test_pptx_slide_titles_become_headings_in_presentation_order():
    got = extract("talks/q3.pptx", make_pptx())
    assert got.kind == "pptx"
    assert got.text.split("\n\n") == [
        "## Quarterly results",
        "Revenue grew 12 percent.",
        "## Slide 2",
        "Questions welcome.",
    ]


def test_an_office_file_without_suffix_is_read_by_its_content_type():
    assert extract("inbox/upload-17", make_docx(), DOCX_TYPE).kind == "docx"


def _zip(members: dict[str, bytes], compression: int = zipfile.ZIP_DEFLATED) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression) as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return buf.getvalue()


def test_a_zip_bomb_is_refused_before_it_is_inflated():
    bomb = _zip({"word/document.xml": b"<a>" + b" " * 3_000_000 + b"</a>"})
    assert len(bomb) < 10_000  # 3 MB that compress to a few kB
    with pytest.raises(Unindexable, match="inflate to 3000007 bytes, over the 1000000-byte limit"):
        extract("x.docx", bomb, limits=replace(DEFAULT_LIMITS, max_zip_xml_bytes=1_000_000))


def test_a_zip_of_too_many_members_is_refused_from_its_end_record():
    many = _zip({f"m/{i}.xml": b"" for i in range(1_001)}, zipfile.ZIP_STORED)
    with pytest.raises(Unindexable, match="zip has 1001 members, over the 1000-member limit"):
        extract("x.xlsx", many, limits=replace(DEFAULT_LIMITS, max_zip_members=1_000))


def test_entity_expansion_is_refused():
    laughs = (
        b'<?xml version="1.0"?><!DOCTYPE lolz [<!ENTITY lol "lol"><!ENTITY lol2 "&lol;&lol;&lol;&lol;">]>'
        b'<w:document xmlns:w="http://schemas.openxmlformats.org/wordprocessingml/2006/main"><w:body><w:p><w:r>'
        b"<w:t>&lol2;</w:t></w:r></w:p></w:body></w:document>"
    )
    with pytest.raises(Unindexable, match=r"DOCX could not be read \(EntitiesForbidden\)"):
        extract("x.docx", _zip({"word/document.xml": laughs}))


@pytest.mark.parametrize(
    ("key", "data", "reason"),
    [
        ("x.docx", b"PK\x03\x04 not really a zip", "DOCX refused: not a zip archive"),
        ("x.pptx", b"plain text named .pptx", "PPTX refused: not a zip archive"),
        ("x.docx", make_docx()[:3000], "DOCX refused: not a zip archive"),
        ("x.docx", _zip({"other.xml": b"<a/>"}), "DOCX refused: part word/document.xml is missing"),
        ("x.xlsx", _zip({"xl/workbook.xml": b"<broken"}), "XLSX could not be read"),
        (
            "x.pptx",
            _zip({"ppt/presentation.xml": b"<p/>"}),
            "PPTX refused: part ppt/_rels/presentation.xml.rels is missing",
        ),
    ],
)
def test_corrupt_office_files_are_refused_with_a_reason(key, data, reason):
    with pytest.raises(Unindexable, match=reason):
        extract(key, data)


def test_a_sheet_padded_to_its_last_column_counts_against_the_cell_budget():
    from openpyxl import Workbook

    wb = Workbook()
    ws = wb.worksheets[0]
    for r in range(1, 201):
        ws.cell(row=r, column=1, value="a")
        ws.cell(row=r, column=250, value="z")  # each row padded to its last cell: 250 cells
    buf = io.BytesIO()
    wb.save(buf)
    with pytest.raises(Unindexable, match="over 10000 cells"):
        extract("wide.xlsx", buf.getvalue(), limits=replace(DEFAULT_LIMITS, max_xlsx_cells=10_000))
    assert extract("wide.xlsx", buf.getvalue()).text.count("\n") >= 200


def test_office_text_counts_against_max_chars():
    with pytest.raises(Unindexable, match="character limit"):
        extract("x.docx", make_docx(), limits=replace(DEFAULT_LIMITS, max_chars=40))


def test_an_office_file_is_indexed_with_headings_and_a_hostile_one_skipped_once(uploader, indexer_env):
    result = uploader.run(
        uploader.put("hr/policy.docx", make_docx()),
        uploader.put("hr/bomb.docx", _zip({"word/document.xml": b"<a>" + b" " * 120_000_000 + b"</a>"})),
    )
    assert result == {"batchItemFailures": []}
    store = store_for(indexer_env)
    hits = [h for h in store.search([1.0] * store.dimensions, 50) if h.source_key == "hr/policy.docx"]
    assert hits and all(h.heading == "Leave policy" for h in hits)  # one chunk at 200 tokens
    assert "## Travel abroad" in hits[0].text
    bomb = store.commits.get("hr/bomb.docx")  # type: ignore[union-attr]
    assert bomb is not None and bomb.version is None and "over the 100000000-byte limit" in str(bomb.reason)
    assert store.count("hr/bomb.docx") == 0


def test_shared_strings_over_their_limit_are_refused_before_openpyxl_loads_them():
    src = zipfile.ZipFile(io.BytesIO(make_xlsx()))
    members = {i.filename: src.read(i.filename) for i in src.infolist()}
    strings = b"".join(b"<si><t>s%d</t></si>" % i for i in range(200))
    members["xl/sharedStrings.xml"] = (
        b'<sst xmlns="http://schemas.openxmlformats.org/spreadsheetml/2006/main">' + strings + b"</sst>"
    )
    data = _zip(members)
    with pytest.raises(Unindexable, match=r"shared strings inflate to \d+ bytes, over the 1000-byte limit"):
        extract("s.xlsx", data, limits=replace(DEFAULT_LIMITS, max_xlsx_shared_strings_bytes=1_000))
    assert "## Budget" in extract("s.xlsx", data).text
