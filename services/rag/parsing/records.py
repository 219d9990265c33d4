"""Text-based formats: plain text, markdown, HTML, CSV (csv module) and JSON / JSON Lines records."""

from __future__ import annotations

import csv
import json
import re
from typing import Any

from services.common.errors import InvalidRequest, UnsupportedMediaType

from .document import Markdown, ParsedDocument, ParseOptions, corrupt, table, too_large
from .html import html_markdown

# Control characters other than tab, newlines and form feed: binary, not text.
_BINARY = re.compile(r"[\x00-\x08\x0b\x0e-\x1f]")
_HTML_SNIFF = re.compile(rb"^\s*(<!doctype html|<html|<head|<body|<!--)", re.I)
# Fields tried, in order, as a JSON record's text when none is named.
TEXT_FIELDS = ("text", "content", "body", "page_content", "document", "passage", "message", "description")


def decode(name: str, data: bytes) -> str:
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise UnsupportedMediaType(f"'{name}' is not UTF-8 text.", param="files") from None
    if _BINARY.search(text[:65536]):
        raise UnsupportedMediaType(f"'{name}' holds binary data, not text.", param="files")
    return text


def parse_text(name: str, data: bytes, options: ParseOptions, kind: str) -> ParsedDocument:
    """.txt / .md as they are; HTML (or a .txt that is HTML) as markdown."""
    text = decode(name, data)
    if len(text) > options.max_document_chars:
        raise too_large(name, f"is longer than {options.max_document_chars:,} characters", "max_document_chars")
    if kind == "html" or (kind == "text" and _HTML_SNIFF.match(data[:512])):
        markdown, meta = html_markdown(text)
        return ParsedDocument(markdown, "markdown", source=name, metadata=meta)
    return ParsedDocument(text, kind, source=name)


def parse_csv(name: str, data: bytes, options: ParseOptions) -> ParsedDocument:
    """The rows as one table (row by row when long); delimiter sniffed (, ; tab |)."""
    text = decode(name, data)
    sample = text[:16384]
    try:
        dialect: Any = csv.Sniffer().sniff(sample, delimiters=",;\t|")
    except csv.Error:
        dialect = csv.excel_tab if name.lower().endswith(".tsv") else csv.excel
    out = Markdown(name, options)
    rows: list[list[str]] = []
    try:
        for row in csv.reader(text.splitlines(), dialect):
            rows.append(row)
            if len(rows) > options.max_records:
                raise too_large(name, f"has more than {options.max_records:,} rows", "max_records")
    except csv.Error as exc:
        raise corrupt(name, f"not valid CSV ({exc})") from exc
    out.add(table(rows, options))
    return ParsedDocument(out.text(), "markdown", source=name, metadata={"rows": max(0, len(rows) - 1)})


def parse_json(name: str, data: bytes, options: ParseOptions, lines: bool) -> list[ParsedDocument]:
    """One document per record: its text field as text, the other fields as metadata, `id` as id."""
    text = decode(name, data)
    try:
        if lines:
            records = [json.loads(line) for line in text.splitlines() if line.strip()]
        else:
            loaded = json.loads(text)
            records = loaded if isinstance(loaded, list) else [loaded]
    except json.JSONDecodeError as exc:
        raise corrupt(name, f"not valid JSON ({exc})") from exc
    if len(records) > options.max_records:
        raise too_large(name, f"holds {len(records):,} records", "max_records")
    docs = []
    for i, record in enumerate(records, start=1):
        where = f"'{name}' record {i}"
        if not isinstance(record, dict):
            raise InvalidRequest(f"{where} is not a JSON object.", param="files", code="corrupt_file")
        key = options.text_field or next((k for k in TEXT_FIELDS if isinstance(record.get(k), str)), None)
        if key is None or not isinstance(record.get(key), str):
            wanted = f"'{key}'" if key else "a text field (" + ", ".join(TEXT_FIELDS) + "; or set text_field)"
            raise InvalidRequest(f"{where} has no string {wanted}.", param="text_field", code="corrupt_file")
        raw_id = record.get("id")
        meta = {str(k): v for k, v in record.items() if k not in (key, "id")}
        meta["record"] = i
        doc_id = str(raw_id) if isinstance(raw_id, str | int) and str(raw_id) else None
        docs.append(ParsedDocument(record[key], "text", source=name, metadata=meta, doc_id=doc_id))
    if not docs:
        raise InvalidRequest(f"'{name}' holds no records.", param="files", code="empty_file")
    return docs
