from __future__ import annotations

import pytest
from indexer.extract import Unindexable, extract, html_to_text


def minimal_pdf(text: str) -> bytes:
    """A one-page PDF with a text layer, with a correct xref table."""
    stream = f"BT /F1 12 Tf 72 720 Td ({text}) Tj ET".encode()
    objects = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
        b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Contents 4 0 R "
        b"/Resources << /Font << /F1 5 0 R >> >> >>",
        b"<< /Length %d >>\nstream\n" % len(stream) + stream + b"\nendstream",
        b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>",
    ]
    out = b"%PDF-1.4\n"
    offsets = []
    for i, body in enumerate(objects, start=1):
        offsets.append(len(out))
        out += b"%d 0 obj\n" % i + body + b"\nendobj\n"
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1)
    out += b"".join(b"%010d 00000 n \n" % o for o in offsets)
    out += b"trailer\n<< /Size %d /Root 1 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (len(objects) + 1, xref)
    return out


def test_pdf_text_layer_is_extracted():
    out = extract("report.pdf", minimal_pdf("Quarterly revenue grew nine percent"))
    assert out.kind == "pdf" and "Quarterly revenue grew nine percent" in out.text


def test_broken_pdf_is_unindexable():
    with pytest.raises(Unindexable, match="PDF"):
        extract("broken.pdf", b"%PDF-1.4\n garbage that is not a pdf")


def test_html_drops_scripts_and_keeps_headings():
    html = "<html><head><title>T</title><script>var x=1</script></head><body><h1>Main</h1><p>Hello <b>world</b></p>"
    html += "<h2>Sub</h2><style>p{}</style><ul><li>one</li><li>two</li></ul></body></html>"
    text = html_to_text(html)
    assert "var x" not in text and "p{}" not in text
    assert "# Main" in text and "## Sub" in text and "Hello world" in text
    assert extract("page.html", html.encode()).markdown


@pytest.mark.parametrize("key", ["a.py", "a.json", "a.csv", "a.md", "noext"])
def test_text_like_files_decode(key):
    out = extract(key, "名前,値\nkey,value ✓\n".encode())
    assert "value ✓" in out.text


def test_utf8_bom_and_utf16_are_decoded():
    assert extract("a.txt", "\ufeffhello".encode("utf-8")).text == "hello"
    assert extract("a.txt", "hello 世界".encode("utf-16")).text == "hello 世界"


def test_unknown_charset_in_content_type_falls_back_to_clear_error():
    with pytest.raises(Unindexable, match="not valid UTF-8"):
        extract("a.txt", b"ok \xfa\xfb bad", "text/plain; charset=nonsense")
    with pytest.raises(Unindexable, match="UTF-16"):
        extract("a.txt", b"\xff\xfe\x00\xd8 x")


def test_limits_default_to_the_settings_defaults():
    """The Settings fields the handler passes (MAX_EXTRACTED_CHARS, MAX_PDF_*) and Limits agree."""
    from indexer.extract import DEFAULT_LIMITS
    from rag_shared.config import Settings

    s = Settings()
    assert (s.max_extracted_chars, s.max_pdf_pages, s.max_pdf_stream_bytes, s.max_pdf_content_bytes) == (
        DEFAULT_LIMITS.max_chars,
        DEFAULT_LIMITS.max_pdf_pages,
        DEFAULT_LIMITS.max_pdf_stream_bytes,
        DEFAULT_LIMITS.max_pdf_content_bytes,
    )


def test_over_long_text_is_refused_with_its_limit():
    from indexer.extract import Limits

    small = Limits(max_chars=1000)
    with pytest.raises(Unindexable, match="MAX_EXTRACTED_CHARS"):
        extract("a.txt", b"x" * 5000, limits=small)
    with pytest.raises(Unindexable, match="MAX_EXTRACTED_CHARS"):
        extract("a.html", b"<p>" + b"x" * 5000, limits=small)
    assert extract("a.txt", b"x" * 1000, limits=small).text == "x" * 1000


def test_pdf_page_and_content_limits():
    from indexer.extract import Limits

    from bench.hostile import hostile_pdf

    with pytest.raises(Unindexable, match="MAX_PDF_PAGES"):
        extract("a.pdf", hostile_pdf(1000, pages=3), limits=Limits(max_pdf_pages=2))
    with pytest.raises(Unindexable, match="MAX_PDF_CONTENT_BYTES"):
        extract("a.pdf", hostile_pdf(10_000, pages=3), limits=Limits(max_pdf_content_bytes=25_000))
    assert "Jack" in extract("a.pdf", hostile_pdf(10_000, pages=2)).text


def test_unclosed_constructs_end_as_html5_ends_them():
    assert html_to_text("<p>kept</p><!-- never closed <p>hidden") == "kept"
    assert html_to_text("<p>kept</p><a href='x") == "kept"
    assert html_to_text("<title>" + "<b>x</b>" * 1000) == "# " + "x" * 500 + "\n\n" + "x" * 1000
