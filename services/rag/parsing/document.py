"""What every parser returns, the bounds every parser obeys, and the errors they raise.

A parser turns a file into markdown (headings, lists, tables as markdown tables) so the
markdown chunker keeps heading paths; paginated sources (PDF pages, slides) also record the
character span of each page, so every chunk can carry the page it came from.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

from inferag_protocol.rag import Chunk
from services.common.errors import InvalidRequest, PayloadTooLarge, UnsupportedMediaType

if TYPE_CHECKING:
    from services.rag.chunking import Chunker, ChunkingParams


@dataclass(frozen=True)
class ParseOptions:
    """Bounds and switches of the parsers (from the RAG settings; the defaults suit tests)."""

    max_expanded_bytes: int = 128 * 1024 * 1024  # what an archive (docx, xlsx, epub...) may unpack to
    max_document_chars: int = 20_000_000  # characters of text one file may produce
    max_document_pages: int = 2000  # PDF pages, slides
    max_records: int = 100_000  # JSON records, mail attachments and nesting count against it too
    table_rows: int = 20  # a longer table is written row by row, each row with its column names
    ocr: bool = True  # OCR pages with no text layer and image files
    ocr_engine: str = "auto"  # auto | tesseract | rapidocr
    ocr_languages: str = "fra+eng"  # tesseract's language codes
    ocr_dpi: int = 200
    ocr_max_pages: int = 200  # pages one file may have OCR'd
    ocr_workers: int = 1
    max_image_pixels: int = 60_000_000
    text_field: str | None = None  # JSON: the field holding the text (default: text, content, body...)
    depth: int = 0  # attachment nesting (a mail in a mail...)

    def nested(self) -> ParseOptions:
        return replace(self, depth=self.depth + 1)


@dataclass(frozen=True)
class PageSpan:
    """Characters [start, end) of a document's text came from page (or slide) `number`."""

    number: int
    start: int
    end: int
    ocr: bool = False


@dataclass
class ParsedDocument:
    """A document ready for chunking; `format` picks the default chunking strategy."""

    text: str
    format: str  # text | markdown | pdf (extracted text, tables in markdown)
    source: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict)
    doc_id: str | None = None
    pages: list[PageSpan] = field(default_factory=list)
    page_key: str = "page"  # what a page is called in chunk metadata: page | slide

    def resolved_id(self) -> str:
        """The given id, or one derived from the content, so the same text is the same document."""
        return self.doc_id or content_id(self.text)

    async def chunk(self, chunker: Chunker, params: ChunkingParams) -> list[Chunk]:
        """Chunks of the text; a paginated document is cut at page ends too, so each chunk has one page.

        Chunks carry their page (`page`, or `slide`) and `ocr: true` when the page was OCR'd.
        """
        if not self.pages:
            return await chunker.chunk(self.text, params)
        chunks: list[Chunk] = []
        for page in self.pages:
            for chunk in await chunker.chunk(self.text[page.start : page.end], params):
                extra = {self.page_key: page.number, **({"ocr": True} if page.ocr else {})}
                chunks.append(chunk.model_copy(update={"start": chunk.start + page.start,
                                                       "end": chunk.end + page.start,
                                                       "metadata": {**chunk.metadata, **extra}}))  # fmt: skip
        return chunks


def content_id(text: str) -> str:
    return "sha256-" + hashlib.sha256(text.encode()).hexdigest()[:32]


# ---------------------------------------------------------------- errors


def corrupt(name: str, why: str) -> InvalidRequest:
    """A file of the right kind that cannot be read: 400 `corrupt_file`, naming the file."""
    return InvalidRequest(f"'{name}' cannot be read: {why}", param="files", code="corrupt_file")


def locked(name: str) -> InvalidRequest:
    return InvalidRequest(
        f"'{name}' is password-protected; remove the password and upload it again.", param="files", code="corrupt_file"
    )


def too_large(name: str, what: str, setting: str) -> PayloadTooLarge:
    return PayloadTooLarge(f"'{name}' {what} (bound: INFERAG_RAG_{setting.upper()}).", param="files")


def wrong_kind(name: str, expected: str, found: str | None = None) -> UnsupportedMediaType:
    hint = f" It is {found}." if found else ""
    return UnsupportedMediaType(f"'{name}' is not {expected}.{hint}", param="files")


def empty(name: str, why: str = "has no text") -> InvalidRequest:
    return InvalidRequest(f"'{name}' {why}.", param="files", code="empty_file")


# ---------------------------------------------------------------- markdown writer


class Markdown:
    """Blocks of markdown joined by blank lines, refused (413) once past the character bound.

    Parsers write as they read, so a file that expands without end (a sheet of a million rows,
    a PDF of repeated pages) stops at the bound instead of filling memory.
    """

    def __init__(self, name: str, options: ParseOptions):
        self.name, self.limit = name, options.max_document_chars
        self.blocks: list[str] = []
        self.size = 0
        self.pages: list[PageSpan] = []

    def add(self, block: str) -> None:
        block = block.strip("\n")
        if not block.strip():
            return
        self.size += len(block) + 2
        if self.size > self.limit:
            raise too_large(self.name, f"expands past {self.limit:,} characters of text", "max_document_chars")
        self.blocks.append(block)

    def heading(self, level: int, title: str) -> None:
        title = " ".join(title.split())
        if title:
            self.add(f"{'#' * max(1, min(level, 6))} {title}")

    def page(self, number: int, blocks: list[str], ocr: bool = False) -> None:
        """The blocks of one page, remembering where the page lies in the text."""
        start = self.size
        for block in blocks:
            self.add(block)
        if self.size > start:  # offsets as in text(): blocks joined by "\n\n"
            self.pages.append(PageSpan(number, start, self.size - 2, ocr))

    def text(self) -> str:
        return "\n\n".join(self.blocks)


# ---------------------------------------------------------------- tables


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    elif hasattr(value, "isoformat"):
        value = value.isoformat()
    return " ".join(str(value).split())


def table(rows: list[list[Any]], options: ParseOptions) -> str:
    """A markdown table (first row as header), or for long tables one line per row naming its columns.

    A long markdown table is cut between rows by the chunker and only the first chunk would keep
    the header; written row by row, every chunk says what each value is.
    """
    cells = [[_cell(v) for v in row] for row in rows]
    cells = [row for row in cells if any(row)]
    if not cells:
        return ""
    width = max(len(row) for row in cells)
    while width > 1 and not any(len(row) >= width and row[width - 1] for row in cells):
        width -= 1
    cells = [(row + [""] * width)[:width] for row in cells]
    header = [h or f"Column {i + 1}" for i, h in enumerate(cells[0])]
    body = cells[1:]
    if len(body) > options.table_rows:
        return "\n".join(_record(i, header, row) for i, row in enumerate(body, start=2) if any(row))
    esc = [[c.replace("|", "\\|") for c in row] for row in [header, *body]]
    lines = ["| " + " | ".join(esc[0]) + " |", "| " + " | ".join("---" for _ in header) + " |"]
    lines += ["| " + " | ".join(row) + " |" for row in esc[1:]]
    return "\n".join(lines)


def _record(number: int, header: list[str], row: list[str]) -> str:
    return f"Row {number}: " + "; ".join(f"{h}: {v}" for h, v in zip(header, row, strict=True) if v)
