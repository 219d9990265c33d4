"""Office documents to markdown: Word (python-docx), PowerPoint (python-pptx), Excel (openpyxl), OpenDocument (odfpy).

Each reads the archive only after `open_zip` bounded what it unpacks to.
"""

from __future__ import annotations

import io
import re
import zipfile
from typing import Any

from .detect import open_zip
from .document import Markdown, ParsedDocument, ParseOptions, corrupt, locked, table, too_large

# Errors the libraries raise on a damaged archive or part (their own types derive from these).
_BROKEN = (zipfile.BadZipFile, KeyError, ValueError, TypeError, AttributeError, IndexError, OSError, SyntaxError)
_HEADING_STYLE = re.compile(r"^(?:Heading|Titre)\s*(\d)$", re.I)


def _meta(**values: Any) -> dict[str, Any]:
    return {k: str(v).strip() for k, v in values.items() if v is not None and str(v).strip()}


# ---------------------------------------------------------------- Word


def parse_docx(name: str, data: bytes, options: ParseOptions) -> ParsedDocument:
    import docx
    from docx.table import Table

    open_zip(name, data, options)
    out = Markdown(name, options)
    try:
        document = docx.Document(io.BytesIO(data))
        for block in document.iter_inner_content():
            if isinstance(block, Table):
                out.add(table([[cell.text for cell in row.cells] for row in block.rows], options))
                continue
            text = " ".join(block.text.split())
            style = (block.style.name if block.style is not None else "") or ""
            level = _HEADING_STYLE.match(style)
            if not text:
                continue
            if level or style == "Title":
                out.heading(int(level.group(1)) if level else 1, text)
            elif style.startswith("List Number"):
                out.add(f"1. {text}")
            elif style.startswith("List"):
                out.add(f"- {text}")
            else:
                out.add(text)
        props = document.core_properties
        meta = _meta(title=props.title, author=props.author)
    except _BROKEN as exc:
        raise corrupt(name, f"not a readable Word document ({exc})") from exc
    return ParsedDocument(_lists_tight(out.text()), "markdown", source=name, metadata=meta)


def _lists_tight(text: str) -> str:
    # Consecutive list items were written as separate blocks; a list reads (and chunks) better whole.
    return re.sub(r"(?m)^((?:-|1\.) .*)\n\n(?=(?:-|1\.) )", r"\1\n", text)


# ---------------------------------------------------------------- PowerPoint


def parse_pptx(name: str, data: bytes, options: ParseOptions) -> ParsedDocument:
    """One section per slide (`# Slide N: title`), its text, tables and speaker notes; chunks carry `slide`."""
    from pptx import Presentation

    open_zip(name, data, options)
    out = Markdown(name, options)
    try:
        deck = Presentation(io.BytesIO(data))
        if len(deck.slides) > options.max_document_pages:
            raise too_large(name, f"has {len(deck.slides):,} slides", "max_document_pages")
        for number, slide in enumerate(deck.slides, start=1):
            title_shape = slide.shapes.title
            title = " ".join((title_shape.text_frame.text if title_shape is not None else "").split())
            blocks = [f"# Slide {number}: {title}" if title else f"# Slide {number}"]
            for shape in _shapes(slide.shapes):
                if title_shape is not None and shape.shape_id == title_shape.shape_id:
                    continue
                blocks.extend(_shape_blocks(shape, options))
            if slide.has_notes_slide:
                notes = slide.notes_slide.notes_text_frame
                if notes is not None and notes.text.strip():
                    blocks += ["## Notes", notes.text.strip()]
            out.page(number, blocks)
        meta = _meta(title=deck.core_properties.title, author=deck.core_properties.author)
        meta["slides"] = len(deck.slides)
    except _BROKEN as exc:
        raise corrupt(name, f"not a readable presentation ({exc})") from exc
    return ParsedDocument(out.text(), "markdown", source=name, metadata=meta, pages=out.pages, page_key="slide")


def _shapes(shapes: Any) -> list[Any]:
    """Shapes in reading order (top to bottom, then left to right), groups opened."""
    from pptx.enum.shapes import MSO_SHAPE_TYPE

    flat: list[Any] = []
    for shape in shapes:
        if shape.shape_type == MSO_SHAPE_TYPE.GROUP:
            flat.extend(_shapes(shape.shapes))
        else:
            flat.append(shape)
    return sorted(flat, key=lambda s: (s.top or 0, s.left or 0))


def _shape_blocks(shape: Any, options: ParseOptions) -> list[str]:
    if shape.has_table:
        return [table([[cell.text for cell in row.cells] for row in shape.table.rows], options)]
    if not shape.has_text_frame:
        return []
    lines = []
    paragraphs = [p for p in shape.text_frame.paragraphs if "".join(r.text for r in p.runs).strip()]
    for paragraph in paragraphs:
        text = " ".join("".join(r.text for r in paragraph.runs).split())
        # several paragraphs in a box are bullets; one is a plain sentence
        lines.append(f"{'  ' * paragraph.level}- {text}" if len(paragraphs) > 1 else text)
    return ["\n".join(lines)] if lines else []


# ---------------------------------------------------------------- Excel


def parse_xlsx(name: str, data: bytes, options: ParseOptions) -> ParsedDocument:
    """One section per sheet (`# Sheet`), its cells as a table (row by row when long)."""
    import openpyxl
    from openpyxl.utils.exceptions import InvalidFileException

    open_zip(name, data, options)
    out = Markdown(name, options)
    try:
        # read_only streams the rows instead of building every cell object at once
        book = openpyxl.load_workbook(io.BytesIO(data), read_only=True, data_only=True)
        try:
            sheets = [ws for ws in book.worksheets if hasattr(ws, "iter_rows")]
            for sheet in sheets:
                rows = _rows(name, sheet.iter_rows(values_only=True), options)
                if rows:
                    out.heading(1, sheet.title)
                    out.add(table(rows, options))
            meta = _meta(title=book.properties.title, author=book.properties.creator)
            meta["sheets"] = [ws.title for ws in sheets]
        finally:
            book.close()
    except (*_BROKEN, InvalidFileException) as exc:
        raise corrupt(name, f"not a readable workbook ({exc})") from exc
    return ParsedDocument(out.text(), "markdown", source=name, metadata=meta)


def _rows(name: str, rows: Any, options: ParseOptions) -> list[list[Any]]:
    """The rows, bounded in cells (a sheet can declare a million empty rows in a few bytes)."""
    kept: list[list[Any]] = []
    cells = 0
    for row in rows:
        values = list(row)
        while values and values[-1] in (None, ""):
            values.pop()
        cells += len(values) + 1
        if cells > options.max_document_chars // 2:
            raise too_large(name, "has more cells than the text bound allows", "max_document_chars")
        if values:
            kept.append(values)
    return kept


# ---------------------------------------------------------------- OpenDocument


def parse_odt(name: str, data: bytes, options: ParseOptions) -> ParsedDocument:
    """Headings (outline level), paragraphs, lists and tables of an .odt, in order."""
    from odf import opendocument

    archive = open_zip(name, data, options)
    if "META-INF/manifest.xml" in archive.namelist() and b"encryption-data" in archive.read("META-INF/manifest.xml"):
        raise locked(name)
    out = Markdown(name, options)
    try:
        document = opendocument.load(io.BytesIO(data))
        for node in document.text.childNodes:
            _odf_block(node, out, options, 0)
        meta = _odf_meta(document)
    except _BROKEN as exc:
        raise corrupt(name, f"not a readable OpenDocument text ({exc})") from exc
    return ParsedDocument(_lists_tight(out.text()), "markdown", source=name, metadata=meta)


def _odf_block(node: Any, out: Markdown, options: ParseOptions, depth: int) -> None:
    from odf import teletype
    from odf.namespaces import TABLENS, TEXTNS

    kind = getattr(node, "qname", None)
    if kind == (TEXTNS, "h"):
        level = node.getAttrNS(TEXTNS, "outline-level") or "1"
        out.heading(int(level) if str(level).isdigit() else 1, teletype.extractText(node))
    elif kind == (TEXTNS, "p"):
        out.add(" ".join(teletype.extractText(node).split()))
    elif kind == (TEXTNS, "list"):
        for item in node.childNodes:
            for child in item.childNodes:
                if getattr(child, "qname", None) == (TEXTNS, "list"):
                    _odf_block(child, out, options, depth + 1)
                elif text := " ".join(teletype.extractText(child).split()):
                    out.add(f"{'  ' * depth}- {text}")
    elif kind == (TABLENS, "table"):
        rows = [
            [teletype.extractText(cell) for cell in row.childNodes if getattr(cell, "qname", None)
             == (TABLENS, "table-cell")]
            for row in _odf_rows(node)
        ]  # fmt: skip
        out.add(table(rows, options))
    elif kind in ((TEXTNS, "section"), (TEXTNS, "soft-page-break")) or kind is None:
        for child in getattr(node, "childNodes", []):
            _odf_block(child, out, options, depth)


def _odf_rows(node: Any) -> list[Any]:
    from odf.namespaces import TABLENS

    rows = []
    for child in node.childNodes:
        kind = getattr(child, "qname", None)
        if kind == (TABLENS, "table-row"):
            rows.append(child)
        elif kind in ((TABLENS, "table-header-rows"), (TABLENS, "table-rows")):
            rows.extend(_odf_rows(child))
    return rows


def _odf_meta(document: Any) -> dict[str, Any]:
    from odf import dc, teletype

    found: dict[str, Any] = {}
    for element, key in ((dc.Title, "title"), (dc.Creator, "author")):
        nodes = document.meta.getElementsByType(element)
        if nodes:
            found[key] = teletype.extractText(nodes[0])
    return _meta(**found)
