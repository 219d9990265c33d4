"""EPUB books (ebooklib): the spine's chapters in reading order, each XHTML chapter as markdown."""

from __future__ import annotations

import io
import zipfile

from .detect import open_zip
from .document import Markdown, ParsedDocument, ParseOptions, corrupt, locked
from .html import html_markdown


def parse_epub(name: str, data: bytes, options: ParseOptions) -> ParsedDocument:
    import ebooklib
    from ebooklib import epub

    archive = open_zip(name, data, options)
    if _drm(archive):
        raise locked(name)
    out = Markdown(name, options)
    try:
        # the NCX/nav pages are not read: the chapters' own headings give the structure
        book = epub.read_epub(io.BytesIO(data), {"ignore_ncx": True})
        for item_id, _ in book.spine:
            item = book.get_item_with_id(item_id)
            # the navigation page only lists the chapters that follow
            if item is None or item.get_type() != ebooklib.ITEM_DOCUMENT or isinstance(item, epub.EpubNav):
                continue
            text, _meta = html_markdown(item.get_content())
            out.add(text)
        meta = {}
        for key, element in (("title", "title"), ("author", "creator"), ("language", "language")):
            values = book.get_metadata("DC", element)
            if values and values[0][0]:
                meta[key] = str(values[0][0])
    except (epub.EpubException, zipfile.BadZipFile, KeyError, ValueError, AttributeError, TypeError, OSError) as exc:
        raise corrupt(name, f"not a readable EPUB ({exc})") from exc
    return ParsedDocument(out.text(), "markdown", source=name, metadata=meta)


def _drm(archive: zipfile.ZipFile) -> bool:
    """Chapters encrypted (DRM); font obfuscation alone, which the encryption file also lists, is fine."""
    if "META-INF/encryption.xml" not in archive.namelist():
        return False
    listing = archive.read("META-INF/encryption.xml")
    return b".htm" in listing or b".xhtml" in listing
