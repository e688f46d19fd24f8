"""Text extraction from uploaded documents, on real documents (tests/data/documents, see its README) and on
PDF/DOCX files built here from real text: the PSF licence shipped with Python."""

from __future__ import annotations

import codecs
import io
import json
import re
import sys
import sysconfig
import zipfile
from pathlib import Path
from typing import Any

import docx
import pytest
from PIL import Image, ImageDraw
from pypdf import PdfReader, PdfWriter

from retrieval.errors import UnreadableDocument, UnsupportedFormat
from retrieval.formats import SUPPORTED_SUFFIXES, extract_text, format_of
from shared_engine.errors import InvalidRequest

DOCS = Path(__file__).resolve().parents[1] / "data" / "documents"
SPEC_PDF = DOCS / "shared-mime-info-spec.pdf"
SPEC_HTML = DOCS / "shared-mime-info-spec-section-2.html"
PYTHON_LICENSE = Path(sysconfig.get_paths()["stdlib"]) / "LICENSE.txt"


def _flat(text: str) -> str:
    """Whitespace collapsed and typographic quotes made plain, to compare two editions of a text."""
    return " ".join(text.translate(str.maketrans("‘’“”", "''\"\"")).split())


def _prose_paragraphs(markdown: str) -> list[str]:
    """The Markdown's prose paragraphs as they read once rendered: no code spans, emphasis or link marks
    (and no headings, lists, quotes, comments, code blocks or link definitions)."""
    paragraphs = []
    for block in markdown.split("\n\n"):
        block = block.strip()
        if not block or block[0] in "<>*#`" or re.match(r"\[[^\]]+\]:", block):
            continue
        block = re.sub(r"\[([^\]]+)\]\[[^\]]*\]", r"\1", block).replace("`", "").replace("**", "")
        paragraphs.append(" ".join(block.split()))
    return paragraphs


@pytest.fixture(scope="module")
def spec_pdf() -> bytes:
    return SPEC_PDF.read_bytes()


@pytest.fixture(scope="module")
def spec_pdf_text(spec_pdf: bytes) -> str:
    return extract_text(spec_pdf, SPEC_PDF.name)


def _rewritten(pdf: bytes, **encrypt: Any) -> bytes:
    writer = PdfWriter(clone_from=PdfReader(io.BytesIO(pdf)))
    if encrypt:
        writer.encrypt(**encrypt)
    out = io.BytesIO()
    writer.write(out)
    return out.getvalue()


# -- format_of ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("filename", "content_type", "expected"),
    [
        ("notes.txt", None, "text"),
        ("notes.TEXT", None, "text"),
        ("README.md", "application/octet-stream", "markdown"),
        ("guide.markdown", None, "markdown"),
        ("Page.HTM", None, "html"),
        ("report.pdf", "text/plain", "pdf"),  # the suffix wins
        ("dir/letter.docx", None, "docx"),
        ("data.json", None, "json"),
        ("rows.CSV", None, "text"),
        ("events.jsonl", "application/octet-stream", "text"),
        ("upload", "application/pdf", "pdf"),
        ("upload", "text/html; charset=utf-8", "html"),
        ("upload", "Text/Markdown", "markdown"),
        ("blob", "application/vnd.openxmlformats-officedocument.wordprocessingml.document", "docx"),
        ("export", "application/json", "json"),
        ("export", "text/csv; charset=utf-8", "text"),
        ("log", "application/x-ndjson", "text"),
        ("CHANGES", "text/plain", "text"),
    ],
)
def test_format_of_by_suffix_then_content_type(
    filename: str, content_type: str | None, expected: str
) -> None:
    assert format_of(filename, content_type) == expected


@pytest.mark.parametrize(
    ("filename", "content_type"),
    [("setup.exe", None), ("setup.exe", "application/octet-stream"), ("photo.png", "image/png"), ("x", None)],
)
def test_unsupported_types_are_refused_at_once(filename: str, content_type: str | None) -> None:
    with pytest.raises(UnsupportedFormat) as refused:
        format_of(filename, content_type)
    message = str(refused.value)
    assert f"`{filename}`" in message and "not a supported file type" in message
    assert all(suffix in message for suffix in SUPPORTED_SUFFIXES)
    with pytest.raises(UnsupportedFormat):
        extract_text(Path(sys.executable).read_bytes()[:4096], filename, content_type)


def test_errors_carry_the_codes_of_vector_store_files() -> None:
    assert UnsupportedFormat.code == "unsupported_file"
    assert UnreadableDocument.code == "invalid_file"
    for error in (UnsupportedFormat("m"), UnreadableDocument("m")):
        assert isinstance(error, InvalidRequest)
    with pytest.raises(UnreadableDocument) as unreadable:
        extract_text(b"", "empty.txt")
    assert unreadable.value.param == "file"


# -- text and Markdown --------------------------------------------------------------------------------


def test_markdown_stays_as_it_is() -> None:
    source = (DOCS / "punycode.md").read_text(encoding="utf-8")
    assert extract_text((DOCS / "punycode.md").read_bytes(), "punycode.md") == source.strip()
    assert "`'例.com'`" in source  # real non-ASCII text survives


@pytest.mark.parametrize("encoding", ["utf-8-sig", "utf-16", "utf-16-be"])
def test_text_with_a_byte_order_mark(encoding: str) -> None:
    source = PYTHON_LICENSE.read_text(encoding="utf-8") + "\nThe Internationalized Domain Name '例.com'\n"
    data = source.encode(encoding)
    if encoding == "utf-16-be":
        data = codecs.BOM_UTF16_BE + data
    text = extract_text(data, "LICENSE.txt")
    assert text == source.strip()
    assert not text.startswith("\ufeff")


def test_windows_line_ends_and_a_legacy_8bit_text() -> None:
    lines = [line for line in (DOCS / "punycode.md").read_text(encoding="utf-8").splitlines() if "ñ" in line]
    assert lines
    data = "\r\n".join(lines).encode("cp1252")
    assert extract_text(data, "legacy.txt") == "\n".join(lines)


def test_utf8_with_a_damaged_byte_keeps_its_other_letters() -> None:
    data = (DOCS / "punycode.md").read_bytes()
    cut = data.index("例".encode())
    text = extract_text(data[:cut] + data[cut + 1 :], "punycode.md")
    assert 0 < text.count("\ufffd") <= 2 and "'mañana'" in text and "'☃-⌘'" in text


@pytest.mark.parametrize(
    "data",
    [
        Path(sys.executable).read_bytes()[:65536],  # NUL bytes
        SPEC_PDF.read_bytes().replace(b"\x00", b"")[-65536:],  # compressed streams: mostly not UTF-8
        "'例.com'".encode("utf-16-le") * 50,  # UTF-16 without a byte order mark
    ],
    ids=["executable", "compressed", "utf-16-without-bom"],
)
def test_bytes_that_are_not_text_are_unreadable(data: bytes) -> None:
    with pytest.raises(UnreadableDocument, match=re.escape("`notes.txt` is not text")):
        extract_text(data, "notes.txt")


# -- HTML ---------------------------------------------------------------------------------------------


def test_html_page_gives_its_text_not_its_markup_nor_scripts() -> None:
    page = (DOCS / "punycode.html").read_text(encoding="utf-8")
    assert "localStorage.getItem" in page and "&#x3C;integer[]>" in page
    text = extract_text(page.encode(), "punycode.html")
    assert text.splitlines()[0] == "Punycode | Node.js v20.20.2 Documentation"  # the title
    assert "localStorage" not in text and "<a " not in text and "href=" not in text and "&#x" not in text
    assert "codePoints <integer[]>" in text.splitlines()  # an entity decoded, a list item as its own line
    # The page is built from punycode.md: its prose is all there, whole.
    paragraphs = _prose_paragraphs((DOCS / "punycode.md").read_text(encoding="utf-8"))
    assert len(paragraphs) == 11
    for paragraph in paragraphs:
        assert paragraph in _flat(text)


def test_docbook_html_blocks_become_lines() -> None:
    text = extract_text(SPEC_HTML.read_bytes(), SPEC_HTML.name)
    lines = text.splitlines()
    assert lines[0] == "Unified system"  # <TITLE> (upper-case markup, as DocBook writes it)
    assert "2.1. Directory layout" in lines  # a heading
    assert "A standard way of getting the MIME type for a file." in lines  # a list item
    assert "<MIME> indicate the files should be loaded from" in lines  # &#60;MIME&#62;
    assert all(line == " ".join(line.split()) for line in lines)


def test_html_rules_for_heads_scripts_styles_templates_tables() -> None:
    page = (
        "<html><head><meta charset='utf-8'><title>Release table</title><style>td { color: red }</style>"
        "<script>var hidden = 1;</script><link rel=stylesheet href=x.css></head><body>"
        "<noscript>Enable JavaScript</noscript><template><p>not rendered</p></template>"
        "<h1>Python&nbsp;releases</h1><table><tr><th>Release</th><th>Owner</th></tr>"
        "<tr><td>2.2 and above</td><td>PSF</td></tr></table>Line one<br>Line&#32;two &amp; "
        "<b>bold</b><i>italic</i><div>Last</div></body></html>"
    )
    assert extract_text(page.encode(), "r.html").splitlines() == [
        "Release table",
        "Python releases",
        "Release Owner",
        "2.2 and above PSF",
        "Line one",
        "Line two & bolditalic",
        "Last",
    ]
    headless = "<head><meta name=x content=y><p>Text after an unclosed head</p>"
    assert extract_text(headless.encode(), "h.htm") == "Text after an unclosed head"


def test_html_of_markup_only_contains_no_text() -> None:
    with pytest.raises(UnreadableDocument, match=re.escape("`blank.html` contains no text")):
        extract_text(b"<html><head><script>x()</script></head><body><div> </div></body></html>", "blank.html")


# -- PDF ----------------------------------------------------------------------------------------------


def test_pdf_text_matches_the_html_edition_of_the_same_spec(spec_pdf_text: str) -> None:
    assert spec_pdf_text.startswith("Shared MIME-info Database")
    assert "\n\n" in spec_pdf_text  # pages joined by blank lines
    pdf = _flat(spec_pdf_text)
    html = extract_text(SPEC_HTML.read_bytes(), SPEC_HTML.name)
    sentences = [s for line in html.splitlines() for s in re.split(r"(?<=[.!?])\s+", line) if len(s) > 40]
    found = [s for s in sentences if _flat(s) in pdf]
    assert len(sentences) > 300
    assert len(found) >= 0.85 * len(sentences), set(sentences) - set(found)


def test_pdf_encrypted_with_an_empty_user_password_is_read(spec_pdf: bytes, spec_pdf_text: str) -> None:
    locked = _rewritten(spec_pdf, user_password="", owner_password="owner-secret")
    assert PdfReader(io.BytesIO(locked)).is_encrypted
    assert extract_text(locked, "spec.pdf") == spec_pdf_text


def test_pdf_with_a_password_is_unreadable(spec_pdf: bytes) -> None:
    locked = _rewritten(spec_pdf, user_password="secret", owner_password="owner-secret")
    with pytest.raises(UnreadableDocument, match=re.escape("`spec.pdf` is encrypted")):
        extract_text(locked, "spec.pdf")


@pytest.mark.parametrize("kept", [0.05, 0.5, 0.99])
def test_truncated_pdf_is_unreadable(spec_pdf: bytes, kept: float) -> None:
    with pytest.raises(UnreadableDocument, match=re.escape("`spec.pdf` is not a readable PDF")):
        extract_text(spec_pdf[: int(len(spec_pdf) * kept)], "spec.pdf")


def test_a_text_file_named_pdf_is_unreadable() -> None:
    with pytest.raises(UnreadableDocument, match=re.escape("`punycode.pdf` is not a readable PDF")):
        extract_text((DOCS / "punycode.md").read_bytes(), "punycode.pdf")


def test_scanned_pdf_without_a_text_layer_is_unreadable() -> None:
    scan = Image.new("L", (850, 300), 255)
    ImageDraw.Draw(scan).text((40, 40), PYTHON_LICENSE.read_text().splitlines()[3], fill=0)
    out = io.BytesIO()
    scan.save(out, format="PDF", resolution=100)
    with pytest.raises(UnreadableDocument, match=r"`scan.pdf` has no extractable text: its 1 page\(s\)"):
        extract_text(out.getvalue(), "scan.pdf")


# -- DOCX ---------------------------------------------------------------------------------------------


def _history() -> tuple[str, list[str], list[list[str]], list[str]]:
    """Python's licence history: its heading, prose paragraphs, release table and footnotes."""
    section = PYTHON_LICENSE.read_text().split("\n\n\nB.")[0]
    blocks = [b for b in section.split("\n\n") if b.strip()]
    heading = blocks[0].splitlines()[0]
    table_block = next(b for b in blocks if "0.9.0 thru 1.2" in b)
    rows = [
        re.split(r"\s{2,}", line.strip()) for line in table_block.splitlines() if re.match(r"\s+\d", line)
    ]
    prose = [" ".join(b.split()) for b in blocks[1:] if b is not table_block and "Release" not in b]
    return heading, prose[:4], rows, prose[4:]


def _docx(build: Any) -> bytes:
    document = docx.Document()
    build(document)
    out = io.BytesIO()
    document.save(out)
    return out.getvalue()


def test_docx_paragraphs_headings_and_tables_in_document_order() -> None:
    heading, before, rows, after = _history()

    def build(document: Any) -> None:
        document.add_heading(heading, level=1)
        for paragraph in before:
            document.add_paragraph(paragraph)
        table = document.add_table(rows=len(rows) + 1, cols=5)
        title = table.cell(0, 0).merge(table.cell(0, 4))
        title.text = "Python releases"
        for r, row in enumerate(rows, start=1):
            for c, value in enumerate(row):
                table.cell(r, c).text = value
        for paragraph in after:
            document.add_paragraph(paragraph)

    lines = extract_text(_docx(build), "history.docx").splitlines()
    assert lines == [heading, *before, "Python releases", *(" | ".join(row) for row in rows), *after]
    assert "0.9.0 thru 1.2 | 1991-1995 | CWI | yes" in lines
    assert any(line.startswith("Python was created in the early 1990s by Guido van Rossum") for line in lines)


def test_docx_without_text_contains_no_text() -> None:
    with pytest.raises(UnreadableDocument, match=re.escape("`blank.docx` contains no text")):
        extract_text(_docx(lambda document: document.add_paragraph("   ")), "blank.docx")


def test_docx_that_is_not_a_word_document_is_unreadable(tmp_path: Path) -> None:
    with pytest.raises(UnreadableDocument, match=re.escape("`letter.docx` is not a readable .docx")):
        extract_text(PYTHON_LICENSE.read_bytes(), "letter.docx")
    archive = io.BytesIO()
    with zipfile.ZipFile(archive, "w") as zf:
        zf.write(DOCS / "punycode.md", "punycode.md")
    with pytest.raises(UnreadableDocument, match=re.escape("`archive.docx` is not a readable .docx")):
        extract_text(archive.getvalue(), "archive.docx")


# -- JSON ---------------------------------------------------------------------------------------------


def test_json_values_with_their_key_paths() -> None:
    data = (DOCS / "punycode.json").read_bytes()
    doc = json.loads(data)
    lines = extract_text(data, "punycode.json").splitlines()
    assert lines[:3] == ["type: module", "source: doc/api/punycode.md", "modules.0.textRaw: Punycode"]
    module = doc["modules"][0]
    assert f"modules.0.stability: {module['stability']}" in lines
    assert f"modules.0.meta.deprecated.0: {module['meta']['deprecated'][0]}" in lines
    method = module["methods"][0]
    assert f"modules.0.methods.0.textRaw: {method['textRaw']}" in lines
    assert not any(line.startswith("modules.0.meta.changes") for line in lines)  # an empty list


def test_json_scalars_and_nesting() -> None:
    data = json.dumps({"title": "Python", "open": True, "year": 1991, "owner": None, "tags": ["a", ""]})
    assert extract_text(data.encode(), "d.json") == "title: Python\nopen: true\nyear: 1991\ntags.0: a"
    assert extract_text(b'"just a string"', "s.json") == "just a string"


@pytest.mark.parametrize("data", [b"{}", b"[null, {}, []]", b'{"a": "  "}'])
def test_json_without_values_contains_no_text(data: bytes) -> None:
    with pytest.raises(UnreadableDocument, match=re.escape("`d.json` contains no text")):
        extract_text(data, "d.json")


def test_invalid_json_is_unreadable() -> None:
    data = (DOCS / "punycode.json").read_bytes()
    with pytest.raises(UnreadableDocument, match=r"`punycode.json` is not valid JSON: .* at line \d+ column"):
        extract_text(data[: len(data) // 2], "punycode.json")


# -- every format -------------------------------------------------------------------------------------


@pytest.mark.parametrize("suffix", SUPPORTED_SUFFIXES)
def test_empty_files_are_unreadable(suffix: str) -> None:
    for data in (b"", b" \n\t\r\n"):
        with pytest.raises(
            UnreadableDocument, match=f"`empty{re.escape(suffix)}` is empty: it contains no text"
        ):
            extract_text(data, f"empty{suffix}")
