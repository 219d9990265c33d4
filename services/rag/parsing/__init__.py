"""Files to documents: each supported type, recognised by its content, as markdown that keeps its structure.

The name says what a file should be and the bytes must agree: a name we do not read, or
bytes that are another kind than the name says (an image named `notes.txt`), is 415; a file
of the right kind that cannot be read (truncated, password-protected) is 400 `corrupt_file`;
one that unpacks or expands past a bound is 413. Nothing here touches the store, so a refused
file leaves nothing behind.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import fields
from pathlib import PurePath
from typing import Any

from services.common.errors import UnsupportedMediaType

from .detect import NAMES, sniff
from .document import PageSpan, ParsedDocument, ParseOptions, content_id, corrupt, locked, wrong_kind
from .ebook import parse_epub
from .html import html_markdown
from .mail import parse_eml, parse_msg
from .office import parse_docx, parse_odt, parse_pptx, parse_xlsx
from .pdf import parse_image, parse_pdf
from .records import parse_csv, parse_json, parse_text
from .web import FetchOptions, UrlRefused, check_url, fetch_documents, url_id

__all__ = ["EXTENSIONS", "FetchOptions", "PageSpan", "ParseOptions", "ParsedDocument", "UrlRefused", "check_url",
           "content_id", "fetch_documents", "fetch_options", "html_markdown", "parse_options", "parse_upload",
           "url_id"]  # fmt: skip

# suffix → kind; binary kinds must also be that kind by content (detect.sniff)
EXTENSIONS = {
    ".txt": "text", ".text": "text", ".md": "markdown", ".markdown": "markdown", ".html": "html", ".htm": "html",
    ".xhtml": "html", ".pdf": "pdf", ".docx": "docx", ".pptx": "pptx", ".xlsx": "xlsx", ".odt": "odt",
    ".epub": "epub", ".csv": "csv", ".tsv": "csv", ".eml": "eml", ".msg": "msg", ".json": "json",
    ".jsonl": "jsonl", ".ndjson": "jsonl", ".png": "image", ".jpg": "image", ".jpeg": "image", ".tif": "image",
    ".tiff": "image", ".webp": "image",
}  # fmt: skip
_BINARY = {"pdf", "docx", "pptx", "xlsx", "odt", "epub", "msg", "image"}
_OOXML = {"docx", "pptx", "xlsx"}
_CONTAINERS = {*_OOXML, "odt", "epub", "msg"}

Parser = Callable[[str, bytes, ParseOptions], list[ParsedDocument]]


def _one(fn: Callable[[str, bytes, ParseOptions], ParsedDocument]) -> Parser:
    return lambda name, data, options: [fn(name, data, options)]


_PARSERS: dict[str, Parser] = {
    "text": lambda n, d, o: [parse_text(n, d, o, "text")],
    "markdown": lambda n, d, o: [parse_text(n, d, o, "markdown")],
    "html": lambda n, d, o: [parse_text(n, d, o, "html")],
    "csv": _one(parse_csv),
    "json": lambda n, d, o: parse_json(n, d, o, lines=False),
    "jsonl": lambda n, d, o: parse_json(n, d, o, lines=True),
    "pdf": _one(parse_pdf),
    "image": _one(parse_image),
    "docx": _one(parse_docx),
    "pptx": _one(parse_pptx),
    "xlsx": _one(parse_xlsx),
    "odt": _one(parse_odt),
    "epub": _one(parse_epub),
    "eml": lambda n, d, o: parse_eml(n, d, o, _parse),
    "msg": lambda n, d, o: parse_msg(n, d, o, _parse),
}


def kind_of(filename: str) -> str:
    """The kind a file name says, or 415 listing the supported types."""
    name = PurePath(filename or "").name
    kind = EXTENSIONS.get(PurePath(name).suffix.lower())
    if kind is None:
        allowed = ", ".join(sorted(EXTENSIONS))
        raise UnsupportedMediaType(f"'{name}': unsupported file type. Supported: {allowed}.", param="files")
    return kind


def parse_upload(
    filename: str, data: bytes, options: ParseOptions | None = None, doc_id: str | None = None
) -> list[ParsedDocument]:
    """The documents of a file: one, or several for JSON records and mail attachments (the message first).

    `doc_id` names the first document; attachments are `<id>/<n>-<file name>`, records without
    an `id` field `<id>/<n>` (without `doc_id`, ids come from the content).
    """
    docs = _parse(filename, data, options or ParseOptions())
    name = PurePath(filename or "").name
    if doc_id is not None:
        if EXTENSIONS.get(PurePath(name).suffix.lower()) in ("json", "jsonl"):
            for doc in docs:
                doc.doc_id = doc.doc_id or f"{doc_id}/{doc.metadata.get('record')}"
        else:
            docs[0].doc_id = doc_id
    parent = docs[0].resolved_id()
    for n, doc in enumerate(docs[1:], start=1):
        if "attachment" in doc.metadata:
            doc.metadata["attachment_of"] = parent
            doc.doc_id = doc.doc_id or f"{parent}/{n}-{doc.metadata['attachment']}"
    return docs


def _parse(filename: str, data: bytes, options: ParseOptions) -> list[ParsedDocument]:
    name = PurePath(filename or "").name
    kind = kind_of(name)
    found = sniff(data)
    if kind in _BINARY:
        if found == "encrypted" and kind in _OOXML:
            raise locked(name)
        if found == "broken" and kind in _CONTAINERS:
            raise corrupt(name, "the zip or OLE2 container is truncated or damaged")
        if found != kind:
            raise wrong_kind(name, NAMES[kind], NAMES.get(found or "", "text" if data else "empty"))
    elif found is not None:
        suffix = next((s for s, k in EXTENSIONS.items() if k == found), None)
        rename = f"; name it {suffix}" if suffix else ""
        raise UnsupportedMediaType(f"'{name}' is {NAMES[found]}, not text{rename}.", param="files")
    return _PARSERS[kind](name, data, options)


def parse_options(settings: Any, **overrides: Any) -> ParseOptions:
    """The parsers' bounds and switches from the RAG settings (fields of the same names)."""
    given = {f.name: getattr(settings, f.name) for f in fields(ParseOptions) if hasattr(settings, f.name)}
    return ParseOptions(**{**given, **overrides})


def fetch_options(settings: Any) -> FetchOptions:
    return FetchOptions(
        allow_networks=tuple(settings.fetch_allow_networks),
        timeout=settings.fetch_timeout,
        max_bytes=settings.fetch_max_bytes,
        max_redirects=settings.fetch_max_redirects,
    )
