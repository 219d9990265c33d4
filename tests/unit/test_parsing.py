"""Each format from a real file built by its own library: structure kept as markdown, bad files refused clearly."""

from __future__ import annotations

import asyncio
import io
import resource
import zipfile
from typing import Any

import pytest

from services.common.errors import InvalidRequest, PayloadTooLarge, UnsupportedMediaType
from services.embeddings.models import packaged_folder
from services.rag.chunking import Chunker, ChunkingParams
from services.rag.parsing import ParsedDocument, ParseOptions, parse_upload
from tests import documents as make


@pytest.fixture(scope="module")
def chunker() -> Chunker:
    return Chunker.for_model(packaged_folder("all-minilm-l6-v2"))


def chunks_of(chunker: Chunker, doc: ParsedDocument, strategy: str = "recursive") -> list[tuple[str, dict[str, Any]]]:
    params = ChunkingParams.model_validate({"strategy": strategy, "chunk_size": 64})
    chunks = asyncio.run(doc.chunk(chunker, params))
    assert all(doc.text[c.start : c.end] == c.text for c in chunks)
    return [(c.text, c.metadata) for c in chunks]


def one(name: str, data: bytes, **options: object) -> tuple[str, dict[str, object]]:
    docs = parse_upload(name, data, ParseOptions(**options))  # type: ignore[arg-type]
    assert len(docs) == 1
    return docs[0].text, docs[0].metadata


def test_docx_keeps_headings_paragraphs_and_tables() -> None:
    data = make.docx_file("Pump manual", ["Service the pump every six months."], [["Part", "Price"], ["Valve", "12"]])
    text, meta = one("manual.docx", data)
    assert text == (
        "# Pump manual\n\nService the pump every six months.\n\n## Figures\n\n"
        "| Part | Price |\n| --- | --- |\n| Valve | 12 |"
    )
    assert meta["title"] == "Pump manual"


def test_pptx_one_section_per_slide_with_notes_and_slide_numbers(chunker: Chunker) -> None:
    data = make.pptx_file([("Intro", "Welcome aboard", "Say hello first"), ("Plan", "Ship in May", "Mind the risks")])
    [doc] = parse_upload("deck.pptx", data)
    assert doc.text == (
        "# Slide 1: Intro\n\nWelcome aboard\n\n## Notes\n\nSay hello first\n\n"
        "# Slide 2: Plan\n\nShip in May\n\n## Notes\n\nMind the risks"
    )
    assert chunks_of(chunker, doc, "markdown") == [
        ("# Slide 1: Intro\n\nWelcome aboard", {"headings": ["Slide 1: Intro"], "slide": 1}),
        ("## Notes\n\nSay hello first", {"headings": ["Slide 1: Intro", "Notes"], "slide": 1}),
        ("# Slide 2: Plan\n\nShip in May", {"headings": ["Slide 2: Plan"], "slide": 2}),
        ("## Notes\n\nMind the risks", {"headings": ["Slide 2: Plan", "Notes"], "slide": 2}),
    ]
    assert doc.metadata["slides"] == 2


def test_xlsx_a_table_per_sheet_and_long_sheets_row_by_row() -> None:
    long_rows: list[list[Any]] = [["Town", "People"], *[[f"Town{i}", i * 100] for i in range(30)]]
    data = make.xlsx_file({"Staff": [["Name", "Age"], ["Alice", 30], ["Bob", 41.0]], "Towns": long_rows})
    text, meta = one("book.xlsx", data, table_rows=20)
    staff, towns = text.split("# Towns")
    assert staff.strip() == "# Staff\n\n| Name | Age |\n| --- | --- |\n| Alice | 30 |\n| Bob | 41 |"
    lines = towns.strip().splitlines()
    # every row names its columns, so a chunk cut anywhere still says what the values are
    assert lines[0] == "Row 2: Town: Town0; People: 0" and lines[-1] == "Row 31: Town: Town29; People: 2900"
    assert meta["sheets"] == ["Staff", "Towns"]


def test_csv_sniffs_the_delimiter() -> None:
    text, meta = one("prices.csv", b"item;price\napple;1,20\npear;0,90\n")
    assert text == "| item | price |\n| --- | --- |\n| apple | 1,20 |\n| pear | 0,90 |" and meta["rows"] == 2


def test_odt_and_epub() -> None:
    text, _ = one("notes.odt", make.odt_file("Minutes", ["The board approved the budget."]))
    assert text == "# Minutes\n\nThe board approved the budget."
    book = make.epub_file("Tales", [("Chapter One", "A fox met a crow."), ("Chapter Two", "The crow sang.")])
    text, meta = one("tales.epub", book)
    assert text == "# Chapter One\n\nA fox met a crow.\n\n# Chapter Two\n\nThe crow sang."
    assert meta == {"title": "Tales", "author": "Test Author", "language": "en"}


def test_html_becomes_markdown() -> None:
    html = (
        b"<html><head><title>T</title><script>x()</script></head><body><h1>Top</h1><p>Hi <b>there</b></p>"
        b"<ul><li>one</li><li>two</li></ul><table><tr><th>A</th></tr><tr><td>1</td></tr></table></body></html>"
    )
    text, meta = one("page.html", html)
    assert text == "# Top\n\nHi **there**\n\n- one\n- two\n\n| A |\n| --- |\n| 1 |" and meta == {"title": "T"}


def test_eml_headers_as_metadata_and_attachments_as_documents() -> None:
    report = make.docx_file("Report", ["Sales rose by a tenth."], [["Q", "Sales"], ["Q1", "10"]])
    mail = make.eml_file("Quarterly report", "The report is attached.", [
        ("report.docx", report, "application/vnd.openxmlformats-officedocument.wordprocessingml.document"),
        ("tool.exe", b"MZ\x90\x00", "application/octet-stream"),
    ])  # fmt: skip
    message, attachment = parse_upload("mail.eml", mail, doc_id="m1")
    assert message.text.startswith("# Quarterly report\nFrom: Alice Martin <alice@example.com>")
    assert message.text.endswith("The report is attached.")
    assert message.metadata["from"] == "Alice Martin <alice@example.com>"
    assert message.metadata["date"] == "2026-12-01T09:30:00+00:00" and message.metadata["message_id"]
    assert message.metadata["attachments_skipped"] == ["tool.exe"] and message.doc_id == "m1"
    assert attachment.text.startswith("# Report\n\nSales rose by a tenth.")
    assert attachment.source == "mail.eml/report.docx" and attachment.doc_id == "m1/1-report.docx"
    assert attachment.metadata["attachment_of"] == "m1"


def test_msg_properties_as_metadata_and_attachments_as_documents() -> None:
    plan = make.docx_file("Plan", ["The plan doubles the budget."], [["a", "b"]])  # > 4 KiB: a regular stream
    attachments = [("plan.docx", plan), ("note.txt", b"A short note.")]
    data = make.msg_file("Budget meeting", "Please read the plan before Friday.", attachments)
    message, docx, note = parse_upload("memo.msg", data)
    assert message.text == (
        "# Budget meeting\nFrom: Bob Durand <bob@example.com>\nTo: team@example.com\n"
        "Date: 2026-12-02T14:00:00+01:00\n\nPlease read the plan before Friday."
    )
    assert message.metadata == {"subject": "Budget meeting", "from": "Bob Durand <bob@example.com>",
                                "to": "team@example.com", "date": "2026-12-02T14:00:00+01:00",
                                "message_id": "<m2@example.com>"}  # fmt: skip
    assert docx.text.startswith("# Plan\n\nThe plan doubles the budget.") and docx.source == "memo.msg/plan.docx"
    assert note.text == "A short note." and note.metadata["attachment_of"] == message.resolved_id()


def test_json_records_a_field_as_text_the_rest_as_metadata() -> None:
    data = make.jsonl_file([{"id": "a1", "body": "First note.", "lang": "en"}, {"body": "Second note.", "n": 2}])
    first, second = parse_upload("notes.jsonl", data)
    assert (first.text, first.doc_id, first.metadata) == ("First note.", "a1", {"lang": "en", "record": 1})
    assert second.text == "Second note." and second.metadata == {"n": 2, "record": 2}
    [doc] = parse_upload("one.json", b'{"title": "T", "summary": "Short."}', ParseOptions(text_field="summary"))
    assert doc.text == "Short." and doc.metadata == {"title": "T", "record": 1}
    with pytest.raises(InvalidRequest, match="record 1 has no string"):
        parse_upload("bad.json", b'[{"n": 1}]')


def test_pdf_pages_and_tables(chunker: Chunker) -> None:
    data = make.text_pdf([["Valves open at dawn."], ["Pumps rest at night."]], table=[["Part", "Price"],
                                                                                     ["Valve", "12"]])  # fmt: skip
    [doc] = parse_upload("plant.pdf", data)
    assert doc.text == "Valves open at dawn.\n\nPumps rest at night.\n\n| Part | Price |\n| --- | --- |\n| Valve | 12 |"
    assert [(p.number, p.ocr) for p in doc.pages] == [(1, False), (2, False)] and doc.metadata["pages"] == 2
    # short pages would fit one chunk: chunks end at page ends, so each has one page to cite
    assert chunks_of(chunker, doc) == [
        ("Valves open at dawn.", {"page": 1}),
        ("Pumps rest at night.\n\n| Part | Price |\n| --- | --- |\n| Valve | 12 |", {"page": 2}),
    ]


@pytest.mark.slow
def test_image_only_pdf_and_images_are_ocrd(chunker: Chunker) -> None:
    data = make.scanned_pdf([["Page one is typed text."], ["The contract was signed on Monday."]])
    [doc] = parse_upload("scan.pdf", data)
    assert "contract was signed on Monday" in doc.text and doc.metadata["ocr_pages"] == [1, 2]
    assert all(p.ocr for p in doc.pages)
    [(_, first), (text, second)] = chunks_of(chunker, doc)
    assert first == {"page": 1, "ocr": True} and second == {"page": 2, "ocr": True} and "Monday" in text
    text, meta = one("photo.png", make.page_image(["A photographed note about pears."]))
    assert "note about pears" in text and meta == {"ocr": True}
    with pytest.raises(InvalidRequest, match="OCR is off"):
        parse_upload("scan.pdf", data, ParseOptions(ocr=False))
    # a typed page then a scanned one: only the second is OCR'd, and with OCR off it is listed as without text
    from pypdf import PdfReader, PdfWriter

    writer = PdfWriter()
    for part in (make.text_pdf([["A typed page with a text layer."]]), make.scanned_pdf([["A scanned receipt."]])):
        writer.append(PdfReader(io.BytesIO(part)))
    out = io.BytesIO()
    writer.write(out)
    [doc] = parse_upload("mixed.pdf", out.getvalue())
    assert doc.metadata == {"pages": 2, "ocr_pages": [2]} and [p.ocr for p in doc.pages] == [False, True]
    [doc] = parse_upload("mixed.pdf", out.getvalue(), ParseOptions(ocr=False))
    assert doc.text == "A typed page with a text layer." and doc.metadata == {"pages": 2, "pages_without_text": [2]}


# ---------------------------------------------------------------- bad input


def _corrupt(data: bytes) -> bytes:
    return data[: len(data) // 2]


@pytest.mark.parametrize(
    ("name", "data"),
    [
        ("a.docx", _corrupt(make.docx_file("T", ["x"], [["a"]]))),
        ("a.pptx", _corrupt(make.pptx_file([("T", "b", "n")]))),
        ("a.xlsx", _corrupt(make.xlsx_file({"S": [["a"]]}))),
        ("a.odt", _corrupt(make.odt_file("T", ["x"]))),
        ("a.epub", _corrupt(make.epub_file("T", [("C", "x")]))),
        ("a.pdf", b"%PDF-1.4\n1 0 obj << /Type /Catalog"),
        ("a.png", b"\x89PNG\r\n\x1a\n" + b"\0" * 40),
        ("a.json", b'{"text": "unterminated'),
        ("a.jsonl", b'{"text": "ok"}\n{broken'),
        ("a.msg", b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1" + b"\0" * 600),
    ],
)
def test_corrupt_files_are_400_corrupt_file_naming_the_file(name: str, data: bytes) -> None:
    with pytest.raises(InvalidRequest) as caught:
        parse_upload(name, data)
    assert caught.value.code == "corrupt_file" and f"'{name}'" in caught.value.message


@pytest.mark.parametrize("kind", ["docx", "pptx", "xlsx"])
def test_password_protected_office_files(kind: str) -> None:
    plain = {"docx": lambda: make.docx_file("T", ["x"], [["a"]]), "pptx": lambda: make.pptx_file([("T", "b", "n")]),
             "xlsx": lambda: make.xlsx_file({"S": [["a"]]})}[kind]()  # fmt: skip
    with pytest.raises(InvalidRequest, match="password-protected") as caught:
        parse_upload(f"secret.{kind}", make.encrypted_office(plain))
    assert caught.value.code == "corrupt_file"


def test_password_protected_odt_and_drm_epub() -> None:
    def with_part(data: bytes, name: str, content: bytes) -> bytes:
        out = io.BytesIO()
        with zipfile.ZipFile(io.BytesIO(data)) as source, zipfile.ZipFile(out, "w") as target:
            for item in source.infolist():
                target.writestr(item, content if item.filename == name else source.read(item))
            if name not in source.namelist():
                target.writestr(name, content)
        return out.getvalue()

    manifest = b'<manifest:manifest><manifest:file-entry manifest:full-path="content.xml"><manifest:encryption-data/>'
    odt = with_part(make.odt_file("T", ["x"]), "META-INF/manifest.xml", manifest + b"</manifest:file-entry>")
    with pytest.raises(InvalidRequest, match="password-protected"):
        parse_upload("locked.odt", odt)
    drm = b"<encryption><EncryptedData><CipherReference URI='EPUB/chap1.xhtml'/></EncryptedData></encryption>"
    with pytest.raises(InvalidRequest, match="password-protected"):
        parse_upload("drm.epub", with_part(make.epub_file("T", [("C", "x")]), "META-INF/encryption.xml", drm))


def test_password_protected_pdf() -> None:
    from pypdf import PdfReader, PdfWriter

    writer = PdfWriter(clone_from=PdfReader(io.BytesIO(make.text_pdf([["Secret plans."]]))))
    writer.encrypt("secret")
    out = io.BytesIO()
    writer.write(out)
    with pytest.raises(InvalidRequest, match="password-protected"):
        parse_upload("secret.pdf", out.getvalue())


def test_zip_bomb_is_413_before_unpacking() -> None:
    bomb = make.zip_bomb(size=64 * 1024 * 1024)
    assert len(bomb) < 200_000
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with pytest.raises(PayloadTooLarge, match="unpack to"):
        parse_upload("bomb.docx", bomb, ParseOptions(max_expanded_bytes=16 * 1024 * 1024))
    grown_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before
    assert grown_kib < 32 * 1024  # nothing near the 64 MiB it declares was unpacked


def test_a_document_expanding_past_the_text_bound_is_413() -> None:
    rows = [["k", "v"], *[[f"key{i}", "value " * 5] for i in range(2000)]]
    with pytest.raises(PayloadTooLarge, match="characters"):
        parse_upload("big.xlsx", make.xlsx_file({"S": rows}), ParseOptions(max_document_chars=20_000))
    pages = [[f"Line {i} of page {p} with some words." for i in range(40)] for p in range(5)]
    with pytest.raises(PayloadTooLarge, match="MAX_DOCUMENT_CHARS"):
        parse_upload("long.pdf", make.text_pdf(pages), ParseOptions(max_document_chars=4000))


def _png_header(width: int, height: int) -> bytes:
    """A PNG that declares its size and holds no pixels (what an image bomb's header looks like)."""
    import struct
    import zlib

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IEND", b"")


@pytest.mark.parametrize("side", [9000, 16000])  # over our bound; over Pillow's own (it raises at open)
def test_image_bombs_are_413(side: int) -> None:
    with pytest.raises(PayloadTooLarge, match="MAX_IMAGE_PIXELS"):
        parse_upload("huge.png", _png_header(side, side))


def test_a_huge_page_is_rendered_within_the_pixel_bound() -> None:
    import pypdfium2 as pdfium

    from services.rag.parsing.pdf import _render

    pdf = pdfium.PdfDocument(make.scanned_pdf([["x"]]))
    [image] = _render(pdf, [0], ParseOptions(ocr_dpi=600, max_image_pixels=1_000_000))
    assert image.size[0] * image.size[1] <= 1_000_000


@pytest.mark.parametrize(
    ("name", "data", "said"),
    [
        ("notes.txt", make.docx_file("T", ["x"], [["a"]]), "Word document"),
        ("report.docx", make.xlsx_file({"S": [["a"]]}), "Excel workbook"),
        ("report.docx", b"plain words", "text"),
        ("deck.pptx", b"not a zip at all", "text"),
        ("photo.png", b"just text", "text"),
        ("mail.eml", b"no headers at all, just words", "e-mail"),
    ],
)
def test_content_must_match_the_name(name: str, data: bytes, said: str) -> None:
    with pytest.raises(UnsupportedMediaType, match=said):
        parse_upload(name, data)


def test_the_clients_offer_every_type_the_server_reads() -> None:
    import re
    from pathlib import Path

    from inferag_client.cli import UPLOAD_SUFFIXES
    from services.rag.parsing import EXTENSIONS

    assert set(UPLOAD_SUFFIXES) == set(EXTENSIONS)
    page = (Path(__file__).parents[2] / "services" / "playground" / "index.html").read_text()
    accept = re.search(r'accept="([^"]+)"', page)
    assert accept is not None and set(accept.group(1).split(",")) == set(EXTENSIONS)


@pytest.mark.slow
@pytest.mark.parametrize("language", ["en", "fr"])
def test_ocr_character_error_rate_on_known_pages(language: str) -> None:
    from tests.ocr_pages import ENGLISH, FRENCH, cer, page_lines

    paragraph = (ENGLISH if language == "en" else FRENCH)[0]
    [doc] = parse_upload("scan.pdf", make.scanned_pdf([page_lines(paragraph)], size=11))
    assert doc.metadata["ocr_pages"] == [1]
    assert cer(paragraph, doc.text) <= 0.05, doc.text
