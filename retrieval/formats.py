"""Plain text from an uploaded document's bytes (text, Markdown, HTML, PDF, DOCX, JSON; CSV and JSON Lines
as plain text), ready to chunk and embed: the format is told by the file name's suffix or, failing that,
by its content type."""

from __future__ import annotations

import codecs
import io
import json
import re
from collections.abc import Callable, Iterator
from html.parser import HTMLParser
from pathlib import PurePosixPath
from typing import TYPE_CHECKING, Any

from retrieval.errors import UnreadableDocument, UnsupportedFormat

if TYPE_CHECKING:
    from docx.table import Table
    from docx.text.paragraph import Paragraph

_FORMAT_OF_SUFFIX = {
    ".txt": "text",
    ".text": "text",
    ".md": "markdown",
    ".markdown": "markdown",
    ".html": "html",
    ".htm": "html",
    ".pdf": "pdf",
    ".docx": "docx",
    ".json": "json",
    ".csv": "text",
    ".jsonl": "text",
}
SUPPORTED_SUFFIXES: tuple[str, ...] = tuple(_FORMAT_OF_SUFFIX)
_FORMAT_OF_TYPE = {
    "text/plain": "text",
    "text/markdown": "markdown",
    "text/x-markdown": "markdown",
    "text/html": "html",
    "application/xhtml+xml": "html",
    "application/pdf": "pdf",
    "application/vnd.openxmlformats-officedocument.wordprocessingml.document": "docx",
    "application/json": "json",
    "text/csv": "text",
    "application/jsonl": "text",
    "application/x-ndjson": "text",
}
_SUPPORTED = ", ".join(SUPPORTED_SUFFIXES)
# The share of undecodable bytes, or of control characters, past which a file is not text at all.
_MAX_DAMAGED = 0.05
_NON_ASCII = re.compile(r"[^\x00-\x7f\ufffd]")
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0e-\x1f\x7f]")


def format_of(filename: str, content_type: str | None = None) -> str:
    """The format ("text", "markdown", "html", "pdf", "docx" or "json") by the name's suffix, else (no
    suffix, or one not listed) by the content type; raises UnsupportedFormat for anything else."""
    suffix = PurePosixPath(filename.replace("\\", "/")).suffix.lower()
    if suffix in _FORMAT_OF_SUFFIX:
        return _FORMAT_OF_SUFFIX[suffix]
    media_type = (content_type or "").split(";")[0].strip().lower()
    if media_type in _FORMAT_OF_TYPE:
        return _FORMAT_OF_TYPE[media_type]
    kind = f"suffix `{suffix}`" if suffix else "no suffix"
    if media_type:
        kind += f" and content type `{media_type}`"
    raise UnsupportedFormat(
        f"`{filename}` has {kind}, which is not a supported file type; supported: {_SUPPORTED}",
        param="file",
    )


def extract_text(data: bytes, filename: str, content_type: str | None = None) -> str:
    """The readable text of a document; raises UnsupportedFormat for a format not listed in
    SUPPORTED_SUFFIXES, UnreadableDocument for one that is broken, encrypted or holds no text."""
    fmt = format_of(filename, content_type)
    if not data.strip():
        raise _unreadable(f"`{filename}` is empty: it contains no text")
    text = _EXTRACTORS[fmt](data, filename).strip()
    if not text:
        raise _unreadable(f"`{filename}` contains no text")
    return text


def _unreadable(message: str) -> UnreadableDocument:
    return UnreadableDocument(message, param="file")


def _decode(data: bytes, name: str) -> str:
    """UTF-8 (with or without a BOM) or UTF-16 with a BOM; a legacy 8-bit text is read as cp1252."""
    try:
        if data.startswith(codecs.BOM_UTF8):
            text = data[len(codecs.BOM_UTF8) :].decode("utf-8")
        elif data.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
            text = data.decode("utf-16")
        elif b"\x00" in data:
            raise _unreadable(
                f"`{name}` is not text: it holds NUL bytes (binary data, or UTF-16 without a byte order "
                "mark); text files must be UTF-8, or UTF-16 with a byte order mark"
            )
        else:
            text = _decode_8bit(data, name)
    except UnicodeDecodeError as e:
        raise _unreadable(f"`{name}` is not valid text: {e.reason} at byte {e.start}") from e
    return text.replace("\r\n", "\n").replace("\r", "\n")


def _decode_8bit(data: bytes, name: str) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        replaced = data.decode("utf-8", errors="replace")
    if _NON_ASCII.search(replaced) and replaced.count("\ufffd") <= _MAX_DAMAGED * len(replaced):
        return replaced  # UTF-8 with a few damaged bytes
    try:
        legacy = data.decode("cp1252")
    except UnicodeDecodeError:
        legacy = ""
    if legacy and len(_CONTROL.findall(legacy)) <= _MAX_DAMAGED * len(legacy):
        return legacy
    raise _unreadable(
        f"`{name}` is not text: its bytes are neither UTF-8 nor a legacy 8-bit text (binary data?)"
    )


# -- HTML ---------------------------------------------------------------------------------------------

_SKIPPED_TAGS = frozenset({"script", "style", "template", "noscript"})
_VOID_TAGS = frozenset(
    {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source", "wbr"}
)
_BLOCK_TAGS = frozenset(
    {"address", "article", "aside", "blockquote", "body", "br", "caption", "dd", "details", "dialog", "div"}
    | {"dl", "dt", "fieldset", "figcaption", "figure", "footer", "form", "h1", "h2", "h3", "h4", "h5", "h6"}
    | {"header", "hgroup", "hr", "legend", "li", "main", "nav", "ol", "option", "p", "pre", "section"}
    | {"summary", "table", "tbody", "tfoot", "thead", "title", "tr", "ul"}
)
_CELL_TAGS = frozenset({"td", "th"})
# Any other tag ends the head, whether or not the page closes it.
_HEAD_TAGS = frozenset({"base", "link", "meta", "noscript", "script", "style", "template", "title"})


class _HtmlText(HTMLParser):
    """Collects the text of a page: blocks as lines, without scripts, styles or the head's metadata."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self._skipped = 0
        self._in_head = False
        self._in_title = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "head":
            self._in_head = True
        elif tag not in _HEAD_TAGS:
            self._in_head = False
        if tag == "title":
            self._in_title = True
        if tag in _SKIPPED_TAGS:
            self._skipped += 1
        self._separate(tag)

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self._separate(tag)

    def handle_endtag(self, tag: str) -> None:
        if tag == "head":
            self._in_head = False
        elif tag == "title":
            self._in_title = False
        if tag in _SKIPPED_TAGS and self._skipped:
            self._skipped -= 1
        if tag not in _VOID_TAGS:
            self._separate(tag)

    def handle_data(self, data: str) -> None:
        if not self._skipped and (self._in_title or not self._in_head):
            self.parts.append(data)

    def _separate(self, tag: str) -> None:
        if tag in _BLOCK_TAGS:
            self.parts.append("\n")
        elif tag in _CELL_TAGS:
            self.parts.append(" ")

    def text(self) -> str:
        lines = (" ".join(line.split()) for line in "".join(self.parts).split("\n"))
        return "\n".join(line for line in lines if line)


def _html_text(data: bytes, name: str) -> str:
    parser = _HtmlText()
    parser.feed(_decode(data, name))
    parser.close()
    return parser.text()


# -- PDF, DOCX, JSON ----------------------------------------------------------------------------------


def _pdf_text(data: bytes, name: str) -> str:
    from pypdf import PasswordType, PdfReader
    from pypdf.errors import DependencyError

    try:
        reader = PdfReader(io.BytesIO(data))
        if reader.is_encrypted:
            try:
                decrypted = reader.decrypt("") != PasswordType.NOT_DECRYPTED
            except DependencyError as e:
                raise _unreadable(f"`{name}` is encrypted with a cipher this server cannot read") from e
            if not decrypted:
                raise _unreadable(f"`{name}` is encrypted: upload a copy without a password")
        pages = [(page.extract_text() or "").strip() for page in reader.pages]
    except UnreadableDocument:
        raise
    except Exception as e:  # pypdf reports a damaged file with many exception types
        raise _unreadable(f"`{name}` is not a readable PDF (damaged or truncated?): {e}") from e
    text = "\n\n".join(page for page in pages if page)
    if not text.strip():
        raise _unreadable(
            f"`{name}` has no extractable text: its {len(pages)} page(s) hold no text layer "
            "(a scanned document needs OCR first)"
        )
    return text


def _docx_text(data: bytes, name: str) -> str:
    import docx

    try:
        document = docx.Document(io.BytesIO(data))
        return "\n".join(_docx_blocks(document.iter_inner_content()))
    except Exception as e:  # a non-zip, a zip that is no Word document, a damaged part
        raise _unreadable(f"`{name}` is not a readable .docx (Word 2007+) document: {e}") from e


def _docx_blocks(blocks: Iterator[Paragraph | Table]) -> list[str]:
    """Paragraphs as lines and each table row as one line of its cells, in document order."""
    from docx.table import Table

    lines: list[str] = []
    for block in blocks:
        if isinstance(block, Table):
            for row in block.rows:
                cells: list[str] = []
                seen: set[int] = set()
                for cell in row.cells:
                    if id(cell._tc) in seen:  # a merged cell is listed once per grid column it spans
                        continue
                    seen.add(id(cell._tc))
                    cell_text = " ".join(" ".join(_docx_blocks(cell.iter_inner_content())).split())
                    if cell_text:
                        cells.append(cell_text)
                if cells:
                    lines.append(" | ".join(cells))
        elif block.text.strip():
            lines.append(block.text.strip())
    return lines


def _json_text(data: bytes, name: str) -> str:
    try:
        value = json.loads(_decode(data, name))
    except json.JSONDecodeError as e:
        raise _unreadable(f"`{name}` is not valid JSON: {e.msg} at line {e.lineno} column {e.colno}") from e
    except RecursionError as e:
        raise _unreadable(f"`{name}` is JSON nested too deeply to read") from e
    lines: list[str] = []
    stack: list[tuple[str, Any]] = [("", value)]
    while stack:
        path, item = stack.pop()
        if isinstance(item, dict | list):
            children = item.items() if isinstance(item, dict) else enumerate(item)
            paths = [(f"{path}.{key}" if path else str(key), child) for key, child in children]
            stack.extend(reversed(paths))
            continue
        if item is None or (isinstance(item, str) and not item.strip()):
            continue
        shown = ("true" if item else "false") if isinstance(item, bool) else str(item).strip()
        lines.append(f"{path}: {shown}" if path else shown)
    return "\n".join(lines)


_EXTRACTORS: dict[str, Callable[[bytes, str], str]] = {
    "text": _decode,
    "markdown": _decode,
    "html": _html_text,
    "pdf": _pdf_text,
    "docx": _docx_text,
    "json": _json_text,
}
