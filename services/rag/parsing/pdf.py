"""PDFs and images: text per page (pdfplumber), tables as markdown tables, OCR for pages with no text layer.

pypdfium2 opens the file first (fast, and it tells a password-protected file from a broken
one) and renders the pages that need OCR; pdfplumber reads the text layer and finds tables.
Every page's span in the text is kept, so each chunk knows its page; OCR'd pages are marked.
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from typing import Any

from services.common.errors import InferagError

from .document import Markdown, ParsedDocument, ParseOptions, corrupt, empty, locked, table, too_large
from .ocr import engine, read_all

# A page with fewer visible characters than this has no real text layer (a scan with a page number).
MIN_PAGE_CHARS = 16


def parse_pdf(name: str, data: bytes, options: ParseOptions) -> ParsedDocument:
    import pdfplumber
    import pypdfium2 as pdfium

    try:
        pdf = pdfium.PdfDocument(data)
    except pdfium.PdfiumError as exc:
        if "password" in str(exc).lower():
            raise locked(name) from exc
        raise corrupt(name, f"not a readable PDF ({exc})") from exc
    try:
        count = len(pdf)
        if count > options.max_document_pages:
            raise too_large(name, f"has {count:,} pages", "max_document_pages")
        title = (pdf.get_metadata_dict(skip_empty=True) or {}).get("Title")
        pages: dict[int, list[str]] = {}
        scanned: list[int] = []
        try:
            with pdfplumber.open(io.BytesIO(data)) as doc:
                chars = 0
                for index, page in enumerate(doc.pages):
                    blocks = _page_blocks(page, options)
                    page.close()  # frees the page's parsed objects
                    chars += sum(len(b) for b in blocks)
                    if chars > options.max_document_chars:  # a small stream can draw millions of glyphs
                        raise too_large(name, f"expands past {options.max_document_chars:,} characters of text",
                                        "max_document_chars")  # fmt: skip
                    if sum(len(b.strip()) for b in blocks) >= MIN_PAGE_CHARS:
                        pages[index] = blocks
                    else:
                        scanned.append(index)
        except InferagError:
            raise
        except Exception as exc:  # pdfminer raises many unrelated types on a damaged file
            raise corrupt(name, f"not a readable PDF ({type(exc).__name__}: {exc})") from exc
        ocred: set[int] = set()
        if scanned and options.ocr:
            if len(scanned) > options.ocr_max_pages:
                raise too_large(name, f"has {len(scanned):,} pages without text to OCR", "ocr_max_pages")
            ocr = engine(options.ocr_engine, options.ocr_languages)
            texts = read_all(ocr, _render(pdf, scanned, options), options.ocr_workers)
            for index, text in zip(scanned, texts, strict=True):
                if text.strip():
                    pages[index] = [_paragraphs(text)]
                    ocred.add(index)
    finally:
        pdf.close()
    out = Markdown(name, options)
    for index in sorted(pages):
        out.page(index + 1, pages[index], ocr=index in ocred)
    if not out.blocks:
        hint = "" if options.ocr else " (scanned? OCR is off: INFERAG_RAG_OCR)"
        raise empty(name, f"has no text{hint}")
    meta: dict[str, Any] = {"pages": count}
    if title:
        meta["title"] = str(title)
    if ocred:
        meta["ocr_pages"] = sorted(i + 1 for i in ocred)
    if blank := [i + 1 for i in scanned if i not in ocred]:
        meta["pages_without_text"] = blank  # OCR off, or nothing it could read
    return ParsedDocument(out.text(), "pdf", source=name, metadata=meta, pages=out.pages)


def _page_blocks(page: Any, options: ParseOptions) -> list[str]:
    """The page's text lines and tables in reading order (top to bottom), tables as markdown."""
    tables = [t for t in page.find_tables() if t.bbox]
    boxes = [t.bbox for t in tables]

    def outside(obj: dict[str, Any]) -> bool:
        x, y = (obj["x0"] + obj["x1"]) / 2, (obj["top"] + obj["bottom"]) / 2
        return not any(x0 <= x <= x1 and top <= y <= bottom for x0, top, x1, bottom in boxes)

    text_page = page.filter(outside) if boxes else page
    items = [(line["top"], line["bottom"], line["text"], False)
             for line in text_page.extract_text_lines(return_chars=False)]  # fmt: skip
    items += [(t.bbox[1], t.bbox[3], table(t.extract(), options), True) for t in tables]
    items.sort(key=lambda item: item[0])
    blocks: list[str] = []
    paragraph: list[str] = []
    last_bottom: float | None = None
    for top, bottom, text, is_table in items:
        # a gap over 0.6 line heights between lines starts a paragraph; a table is a block of its own
        if paragraph and (is_table or last_bottom is None or top - last_bottom > 0.6 * (bottom - top)):
            blocks.append("\n".join(paragraph))
            paragraph = []
        if is_table:
            blocks.append(text)
            last_bottom = None
        else:
            paragraph.append(text)
            last_bottom = bottom
    if paragraph:
        blocks.append("\n".join(paragraph))
    return [b for b in blocks if b.strip()]


def _render(pdf: Any, indexes: list[int], options: ParseOptions) -> Iterator[Any]:
    for index in indexes:
        page = pdf[index]
        try:
            width, height = page.get_size()  # points; a page may declare itself 5 m wide
            # 0.99: the rendered size is rounded up
            scale = min(options.ocr_dpi / 72, 0.99 * (options.max_image_pixels / max(1.0, width * height)) ** 0.5)
            yield page.render(scale=scale, grayscale=True).to_pil()
        finally:
            page.close()


def _paragraphs(text: str) -> str:
    lines = [" ".join(line.split()) for line in text.splitlines()]
    out = "\n".join(lines).strip()
    while "\n\n\n" in out:
        out = out.replace("\n\n\n", "\n\n")
    return out


def parse_image(name: str, data: bytes, options: ParseOptions) -> ParsedDocument:
    """An image (.png .jpg .tif .webp), OCR'd; each frame of a multi-page TIFF is a page."""
    from PIL import Image, ImageOps, UnidentifiedImageError

    if not options.ocr:
        raise empty(name, "is an image and OCR is off (INFERAG_RAG_OCR)")
    try:
        image = Image.open(io.BytesIO(data))
        width, height = image.size
        if width * height > options.max_image_pixels:
            raise too_large(name, f"has {width}x{height} pixels", "max_image_pixels")
        frames = getattr(image, "n_frames", 1)
        if frames > options.ocr_max_pages:
            raise too_large(name, f"has {frames} frames to OCR", "ocr_max_pages")

        def pages() -> Iterator[Any]:
            for i in range(frames):
                image.seek(i)
                yield ImageOps.exif_transpose(image).convert("L")

        ocr = engine(options.ocr_engine, options.ocr_languages)
        texts = list(read_all(ocr, pages(), options.ocr_workers))
    except Image.DecompressionBombError as exc:  # Pillow's own bound, at twice its default pixel count
        raise too_large(name, f"is too large an image ({exc})", "max_image_pixels") from exc
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError, EOFError) as exc:
        raise corrupt(name, f"not a readable image ({exc})") from exc
    out = Markdown(name, options)
    for number, text in enumerate(texts, start=1):
        out.page(number, [_paragraphs(text)], ocr=True)
    if not out.blocks:
        raise empty(name, "has no text that OCR could read")
    meta = {"ocr_pages": [p.number for p in out.pages]} if frames > 1 else {"ocr": True}
    return ParsedDocument(out.text(), "text", source=name, metadata=meta, pages=out.pages if frames > 1 else [])
