"""Real files of each supported type, built with the library that writes that format (for ingestion tests)."""

from __future__ import annotations

import io
import json
import zipfile
from email.message import EmailMessage
from typing import Any


def _pdf(pages: list[bytes]) -> bytes:
    """A PDF of content streams (Helvetica, WinAnsi encoding) with a correct cross-reference table."""
    n = len(pages)
    font = 3 + 2 * n
    objects = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Kids [%s] /Count %d >>" % (b" ".join(b"%d 0 R" % (3 + 2 * i) for i in range(n)), n),
    ]
    for i, stream in enumerate(pages):
        objects.append(b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Contents %d 0 R "
                       b"/Resources << /Font << /F1 %d 0 R >> >> >>" % (4 + 2 * i, font))  # fmt: skip
        objects.append(b"<< /Length %d >>\nstream\n" % len(stream) + stream + b"\nendstream")
    objects.append(b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica /Encoding /WinAnsiEncoding >>")
    out = bytearray(b"%PDF-1.4\n")
    offsets = []
    for i, body in enumerate(objects, start=1):
        offsets.append(len(out))
        out += b"%d 0 obj\n" % i + body + b"\nendobj\n"
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1)
    out += b"".join(b"%010d 00000 n \n" % o for o in offsets)
    out += b"trailer\n<< /Size %d /Root 1 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (len(objects) + 1, xref)
    return bytes(out)


def _text(s: str) -> bytes:
    return s.encode("cp1252").replace(b"\\", b"\\\\").replace(b"(", b"\\(").replace(b")", b"\\)")


def text_pdf(pages: list[list[str]], *, size: int = 12, table: list[list[str]] | None = None) -> bytes:
    """A PDF whose pages hold these lines as a text layer (Latin-1 accents work); `table` on the last page."""
    streams = []
    for number, lines in enumerate(pages, start=1):
        ops = [b"BT /F1 %d Tf %d TL 72 720 Td" % (size, int(size * 1.6))]
        ops += [b"(%s) Tj T*" % _text(line) for line in lines]
        ops.append(b"ET")
        if table is not None and number == len(pages):
            ops += _table_ops(table, top=700 - int(size * 1.6) * len(lines) - 20)
        streams.append(b"\n".join(ops))
    return _pdf(streams)


def _table_ops(rows: list[list[str]], top: int) -> list[bytes]:
    """A ruled grid (what pdfplumber's table finder looks for) with a text in each cell."""
    width, height, left = 150, 24, 72
    cols = len(rows[0])
    ops = [b"0.5 w"]
    for r in range(len(rows) + 1):
        y = top - r * height
        ops.append(b"%d %d m %d %d l S" % (left, y, left + cols * width, y))
    for c in range(cols + 1):
        x = left + c * width
        ops.append(b"%d %d m %d %d l S" % (x, top, x, top - len(rows) * height))
    for r, row in enumerate(rows):
        for c, cell in enumerate(row):
            ops.append(b"BT /F1 11 Tf %d %d Td (%s) Tj ET" % (left + c * width + 6, top - (r + 1) * height + 8,
                                                              _text(cell)))  # fmt: skip
    return ops


def scanned_pdf(pages: list[list[str]], *, size: int = 12, dpi: int = 150) -> bytes:
    """An image-only PDF: `text_pdf` pages rendered to pictures (pypdfium2) and saved as a PDF of images (Pillow)."""
    import pypdfium2 as pdfium

    pdf = pdfium.PdfDocument(text_pdf(pages, size=size))
    images = [pdf[i].render(scale=dpi / 72, grayscale=True).to_pil() for i in range(len(pdf))]
    pdf.close()
    out = io.BytesIO()
    images[0].save(out, "PDF", resolution=dpi, save_all=True, append_images=images[1:])
    return out.getvalue()


def page_image(lines: list[str], *, size: int = 12, dpi: int = 150, fmt: str = "PNG") -> bytes:
    """One page of text as an image file."""
    import pypdfium2 as pdfium

    pdf = pdfium.PdfDocument(text_pdf([lines], size=size))
    image = pdf[0].render(scale=dpi / 72, grayscale=True).to_pil()
    pdf.close()
    out = io.BytesIO()
    image.save(out, fmt)
    return out.getvalue()


def docx_file(heading: str, paragraphs: list[str], table: list[list[str]]) -> bytes:
    import docx

    document = docx.Document()
    document.core_properties.title = heading
    document.add_heading(heading, level=1)
    for text in paragraphs:
        document.add_paragraph(text)
    document.add_heading("Figures", level=2)
    grid = document.add_table(rows=len(table), cols=len(table[0]))
    for r, row in enumerate(table):
        for c, cell in enumerate(row):
            grid.cell(r, c).text = cell
    out = io.BytesIO()
    document.save(out)
    return out.getvalue()


def pptx_file(slides: list[tuple[str, str, str]]) -> bytes:
    """Slides of (title, body, speaker notes)."""
    from pptx import Presentation

    deck = Presentation()
    for title, body, notes in slides:
        slide = deck.slides.add_slide(deck.slide_layouts[1])
        slide.shapes.title.text = title
        slide.placeholders[1].text_frame.text = body
        slide.notes_slide.notes_text_frame.text = notes
    out = io.BytesIO()
    deck.save(out)
    return out.getvalue()


def xlsx_file(sheets: dict[str, list[list[Any]]]) -> bytes:
    import openpyxl

    book = openpyxl.Workbook()
    book.remove(book.active)
    for title, rows in sheets.items():
        sheet = book.create_sheet(title)
        for row in rows:
            sheet.append(row)
    out = io.BytesIO()
    book.save(out)
    return out.getvalue()


def odt_file(heading: str, paragraphs: list[str]) -> bytes:
    from odf.opendocument import OpenDocumentText
    from odf.text import H, P

    document = OpenDocumentText()
    document.text.addElement(H(outlinelevel=1, text=heading))
    for text in paragraphs:
        document.text.addElement(P(text=text))
    out = io.BytesIO()
    document.write(out)
    return out.getvalue()


def epub_file(title: str, chapters: list[tuple[str, str]]) -> bytes:
    from ebooklib import epub

    book = epub.EpubBook()
    book.set_identifier("test-book")
    book.set_title(title)
    book.set_language("en")
    book.add_author("Test Author")
    items = []
    for i, (heading, text) in enumerate(chapters, start=1):
        item = epub.EpubHtml(title=heading, file_name=f"chap{i}.xhtml", lang="en")
        item.content = f"<html><body><h1>{heading}</h1><p>{text}</p></body></html>"
        book.add_item(item)
        items.append(item)
    book.toc = items
    book.add_item(epub.EpubNcx())
    book.add_item(epub.EpubNav())
    book.spine = ["nav", *items]
    out = io.BytesIO()
    epub.write_epub(out, book)
    return out.getvalue()


def eml_file(subject: str, body: str, attachments: list[tuple[str, bytes, str]]) -> bytes:
    """A message (the standard library's writer) with attachments of (file name, bytes, MIME type)."""
    message = EmailMessage()
    message["From"] = "Alice Martin <alice@example.com>"
    message["To"] = "team@example.com"
    message["Subject"] = subject
    message["Date"] = "Tue, 01 Dec 2026 09:30:00 +0000"
    message["Message-ID"] = "<test-1@example.com>"
    message.set_content(body)
    for filename, data, mime in attachments:
        main, sub = mime.split("/")
        message.add_attachment(data, maintype=main, subtype=sub, filename=filename)
    return message.as_bytes()


def jsonl_file(records: list[dict[str, Any]]) -> bytes:
    return "\n".join(json.dumps(r) for r in records).encode()


def zip_bomb(kind_part: str = "word/document.xml", size: int = 64 * 1024 * 1024) -> bytes:
    """A small zip that declares a huge member (zeros compress ~1000:1), shaped like an Office file."""
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("[Content_Types].xml", "<Types/>")
        with archive.open(kind_part, "w", force_zip64=True) as member:
            chunk = b"\0" * (1024 * 1024)
            for _ in range(size // len(chunk)):
                member.write(chunk)
    return out.getvalue()


def encrypted_office(data: bytes, password: str = "secret") -> bytes:
    """An OOXML file encrypted as Office does (msoffcrypto-tool writes the same OLE2 container)."""
    import msoffcrypto

    source, out = io.BytesIO(data), io.BytesIO()
    msoffcrypto.OfficeFile(source).encrypt(password, out)
    return out.getvalue()


def _cfb(streams: dict[str, bytes]) -> bytes:
    """A Compound File (OLE2, version 3) holding `streams` ("storage/stream" paths), as Outlook writes .msg files.

    No maintained library writes this format (olefile only reads it), so the test fixture does: 512-byte
    sectors, streams under 4096 bytes in the mini stream, each directory level a right-leaning sibling chain.
    """
    import struct

    end, free, fat_mark = 0xFFFFFFFE, 0xFFFFFFFF, 0xFFFFFFFD
    entries: list[dict[str, Any]] = [{"name": "Root Entry", "type": 5, "kids": [], "data": b""}]
    index: dict[str, int] = {"": 0}
    for path, data in streams.items():
        parent = ""
        for depth, part in enumerate(path.split("/")):
            key = f"{parent}/{part}" if parent else part
            if key not in index:
                index[key] = len(entries)
                is_stream = depth == len(path.split("/")) - 1
                kind, content = (2, data) if is_stream else (1, b"")
                entries.append({"name": part, "type": kind, "kids": [], "data": content})
                entries[index[parent]]["kids"].append(index[key])
            parent = key
    mini = bytearray()
    mini_fat: list[int] = []
    big: list[tuple[int, bytes]] = []
    for number, entry in enumerate(entries):
        data = entry["data"]
        if entry["type"] != 2:
            continue
        if len(data) < 4096:
            entry["start"] = len(mini) // 64 if data else end
            count = -(-len(data) // 64)
            mini_fat += [len(mini_fat) + i + 1 for i in range(count - 1)] + ([end] if count else [])
            mini += data + b"\0" * (count * 64 - len(data))
        else:
            big.append((number, data))
    sectors: list[bytes] = []
    chains: list[int] = []

    def place(blob: bytes) -> int:
        count = max(1, -(-len(blob) // 512))
        first = len(sectors)
        for i in range(count):
            sectors.append(blob[i * 512 : (i + 1) * 512].ljust(512, b"\0"))
            chains.append(first + i + 1 if i < count - 1 else end)
        return first

    def packed(values: list[int]) -> bytes:
        return struct.pack(f"<{len(values)}I", *values)

    minifat_start = place(packed(mini_fat + [free] * (-len(mini_fat) % 128))) if mini_fat else end
    entries[0]["start"], entries[0]["size"] = (place(bytes(mini)) if mini else end), len(mini)
    for number, data in big:
        entries[number]["start"] = place(data)
    for entry in entries:
        entry.setdefault("size", len(entry["data"]))
        entry.setdefault("start", end if entry["type"] != 2 else entry.get("start", end))
        kids = sorted(entry["kids"], key=lambda k: (len(entries[k]["name"]), entries[k]["name"].upper()))
        entry["child"] = kids[0] if kids else free
        for a, b in zip(kids, [*kids[1:], free], strict=False):  # no kids: nothing to chain
            entries[a]["right"] = b
    directory = bytearray()
    for entry in entries:
        name = entry["name"].encode("utf-16-le") + b"\0\0"
        directory += name.ljust(64, b"\0") + struct.pack("<HBB3I16sI16sIII", len(name), entry["type"], 1, free,
                                                         entry.get("right", free), entry["child"], b"\0" * 16, 0,
                                                         b"\0" * 16, entry["start"], entry["size"], 0)  # fmt: skip
    directory += b"\0" * (-len(directory) % 512)
    dir_start = place(bytes(directory))
    n_fat = 1
    while (len(sectors) + n_fat) > n_fat * 128:
        n_fat += 1
    fat_ids = list(range(len(sectors), len(sectors) + n_fat))
    table = chains + [fat_mark] * n_fat
    table += [free] * (n_fat * 128 - len(table))
    for i in range(n_fat):
        sectors.append(packed(table[i * 128 : (i + 1) * 128]))
    header = struct.pack("<8s16sHHHHH6sIIIIIIIII", b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1", b"\0" * 16, 0x3E, 3,
                         0xFFFE, 9, 6, b"\0" * 6, 0, n_fat, dir_start, 0, 4096, minifat_start,
                         1 if mini_fat else 0, end, 0)  # fmt: skip
    header += packed(fat_ids + [free] * (109 - n_fat))
    return header + b"".join(sectors)


def msg_file(subject: str, body: str, attachments: list[tuple[str, bytes]]) -> bytes:
    """An Outlook .msg: MAPI properties as `__substg1.0_<tag><type>` streams, attachments in their storages."""

    def text(value: str) -> bytes:
        return value.encode("utf-16-le")

    streams = {
        "__substg1.0_0037001F": text(subject),
        "__substg1.0_0C1A001F": text("Bob Durand"),
        "__substg1.0_0C1F001F": text("bob@example.com"),
        "__substg1.0_0E04001F": text("team@example.com"),
        "__substg1.0_1000001F": text(body),
        "__substg1.0_007D001F": text("Date: Wed, 02 Dec 2026 14:00:00 +0100\r\nMessage-ID: <m2@example.com>\r\n"),
    }
    for i, (filename, data) in enumerate(attachments):
        storage = f"__attach_version1.0_#{i:08X}"
        streams[f"{storage}/__substg1.0_3707001F"] = text(filename)
        streams[f"{storage}/__substg1.0_37010102"] = data
    return _cfb(streams)
