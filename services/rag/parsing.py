"""Uploaded files to text: .txt, .md, .html and .pdf, recognised by content as well as by name.

A name we do not handle, or bytes that are not what the name says (an image named
`notes.txt`), is 415; a file of the right kind that cannot be read (a truncated PDF)
is 400. Nothing here touches the store, so a refused file leaves nothing behind.
"""

from __future__ import annotations

import hashlib
import io
import logging
import re
from dataclasses import dataclass, field
from pathlib import PurePath
from typing import Any

from services.common.errors import InvalidRequest, UnsupportedMediaType

log = logging.getLogger(__name__)

EXTENSIONS = {".txt": "text", ".text": "text", ".md": "markdown", ".markdown": "markdown", ".html": "html",
              ".htm": "html", ".pdf": "pdf"}  # fmt: skip
_HTML_SNIFF = re.compile(rb"^\s*(<!doctype html|<html|<head|<body|<!--)", re.I)
# Control characters other than tab, newlines and form feed: binary, not text.
_BINARY = re.compile(r"[\x00-\x08\x0b\x0e-\x1f]")


_BLOCKS = ["p", "div", "br", "li", "tr", "h1", "h2", "h3", "h4", "h5", "h6", "pre", "blockquote", "section",
           "article", "table", "ul", "ol", "dd", "dt", "header", "footer", "main", "nav", "aside"]  # fmt: skip


@dataclass
class ParsedDocument:
    """A document ready for chunking; `format` picks the default chunking strategy."""

    text: str
    format: str  # text | markdown | html (already turned into text) | pdf (likewise)
    source: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict)
    doc_id: str | None = None

    def resolved_id(self) -> str:
        """The given id, or one derived from the content, so the same text is the same document."""
        return self.doc_id or content_id(self.text)


def content_id(text: str) -> str:
    return "sha256-" + hashlib.sha256(text.encode()).hexdigest()[:32]


def parse_upload(filename: str, data: bytes) -> ParsedDocument:
    """Text of an uploaded file, or UnsupportedMediaType / InvalidRequest."""
    name = PurePath(filename or "").name
    kind = EXTENSIONS.get(PurePath(name).suffix.lower())
    if kind is None:
        allowed = ", ".join(sorted(EXTENSIONS))
        raise UnsupportedMediaType(f"'{name}': unsupported file type. Supported: {allowed}.", param="files")
    if kind == "pdf":
        if not data.lstrip()[:5] == b"%PDF-":
            raise UnsupportedMediaType(f"'{name}' is named .pdf but is not a PDF file.", param="files")
        text, meta = _pdf_text(name, data)
        return ParsedDocument(text, "pdf", source=name, metadata=meta)
    if data.lstrip()[:5] == b"%PDF-":
        raise UnsupportedMediaType(f"'{name}' is a PDF file; name it .pdf.", param="files")
    text = _decode(name, data)
    if kind == "html" or (kind == "text" and _HTML_SNIFF.match(data[:512])):
        text, meta = html_text(text)
        return ParsedDocument(text, "html", source=name, metadata=meta)
    return ParsedDocument(text, kind, source=name)


def _decode(name: str, data: bytes) -> str:
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise UnsupportedMediaType(f"'{name}' is not UTF-8 text.", param="files") from None
    if _BINARY.search(text[:65536]):
        raise UnsupportedMediaType(f"'{name}' holds binary data, not text.", param="files")
    return text


def _pdf_text(name: str, data: bytes) -> tuple[str, dict[str, Any]]:
    from pypdf import PdfReader
    from pypdf.errors import PyPdfError

    try:
        reader = PdfReader(io.BytesIO(data), strict=False)
        pages = [page.extract_text() or "" for page in reader.pages]
        title = reader.metadata.title if reader.metadata else None
    except (PyPdfError, ValueError, TypeError, KeyError, OSError, AttributeError) as exc:
        raise InvalidRequest(f"'{name}' is not a readable PDF: {exc}", param="files", code="corrupt_file") from exc
    text = "\n\n".join(p.strip() for p in pages if p.strip())
    if not text:
        raise InvalidRequest(f"'{name}' has no extractable text (scanned PDF?).", param="files", code="empty_file")
    meta: dict[str, Any] = {"pages": len(pages)}
    if title:
        meta["title"] = str(title)
    return text, meta


def html_text(html: str) -> tuple[str, dict[str, Any]]:
    """Visible text of an HTML page, one block per line, and its title."""
    from bs4 import BeautifulSoup

    soup = BeautifulSoup(html, "html.parser")
    title = soup.title.get_text(strip=True) if soup.title else None
    for tag in soup(["head", "script", "style", "noscript", "template"]):
        tag.decompose()
    for tag in soup.find_all(_BLOCKS):
        tag.insert_after("\n")  # blocks end lines; inline tags (b, a, span) stay inside their line
    lines = (" ".join(line.split()) for line in soup.get_text().splitlines())
    text = re.sub(r"\n{3,}", "\n\n", "\n".join(lines)).strip()
    return text, ({"title": title} if title else {})
