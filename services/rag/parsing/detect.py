"""What a file is, from its bytes: the name says what it should be, the content must agree.

Zip containers are told apart by their parts (`word/document.xml`, `mimetype`...), OLE2
containers by their streams (a password-protected .docx/.xlsx/.pptx is an OLE2 file holding
an `EncryptedPackage`). Reading a zip's directory decompresses nothing, so the size check
runs before any library unpacks a byte.
"""

from __future__ import annotations

import io
import zipfile

from .document import ParseOptions, corrupt, locked, too_large

NAMES = {
    "pdf": "a PDF file",
    "docx": "a Word document (.docx)",
    "pptx": "a PowerPoint presentation (.pptx)",
    "xlsx": "an Excel workbook (.xlsx)",
    "odt": "an OpenDocument text (.odt)",
    "epub": "an EPUB book",
    "zip": "a zip archive",
    "msg": "an Outlook message (.msg)",
    "ole": "a legacy Office 97-2003 file",
    "encrypted": "a password-protected Office file",
    "image": "an image",
    "broken": "a damaged zip or OLE2 container",
}

_OLE = b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1"
_IMAGES = (b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff", b"II*\x00", b"MM\x00*", b"GIF87a", b"GIF89a")


def sniff(data: bytes) -> str | None:
    """The binary kind of `data` (a key of NAMES), or None for what may be text."""
    head = data[:16]
    if data.lstrip()[:5] == b"%PDF-":
        return "pdf"
    if head.startswith(b"PK\x03\x04") or head.startswith(b"PK\x05\x06"):
        return _zip_kind(data)
    if head.startswith(_OLE):
        return _ole_kind(data)
    if head.startswith(_IMAGES) or (head[:4] == b"RIFF" and head[8:12] == b"WEBP"):
        return "image"
    return None


def _zip_kind(data: bytes) -> str:
    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
        names = set(archive.namelist())
        mimetype = archive.read("mimetype")[:100].strip() if "mimetype" in names else b""
    except (zipfile.BadZipFile, OSError, RuntimeError, ValueError, NotImplementedError, EOFError):
        return "broken"  # a truncated or damaged container: corrupt if the name says zip-based
    if "word/document.xml" in names:
        return "docx"
    if "ppt/presentation.xml" in names:
        return "pptx"
    if "xl/workbook.xml" in names:
        return "xlsx"
    if mimetype == b"application/epub+zip" or "META-INF/container.xml" in names and mimetype == b"":
        return "epub"
    if mimetype == b"application/vnd.oasis.opendocument.text":
        return "odt"
    return "zip"


def _ole_kind(data: bytes) -> str:
    import olefile

    try:
        ole = olefile.OleFileIO(io.BytesIO(data))
        streams = {"/".join(entry) for entry in ole.listdir()}
    except (OSError, ValueError, IndexError, TypeError):
        return "broken"
    if "EncryptedPackage" in streams:
        return "encrypted"
    if any(s.startswith("__substg1.0_") or s.startswith("__properties_version1.0") for s in streams):
        return "msg"
    return "ole"


def open_zip(name: str, data: bytes, options: ParseOptions) -> zipfile.ZipFile:
    """The archive, once its declared sizes are within bounds (zip bombs are 413, not an OOM).

    The libraries read members through `zipfile`, which stops at each member's declared size,
    so bounding the declared sizes bounds what they can unpack.
    """
    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
        members = archive.infolist()
    except (zipfile.BadZipFile, OSError, ValueError, EOFError) as exc:
        raise corrupt(name, f"not a valid zip container ({exc})") from exc
    if any(m.flag_bits & 0x1 for m in members):
        raise locked(name)
    if len(members) > options.max_records:
        raise too_large(name, f"holds {len(members):,} parts", "max_records")
    total = sum(m.file_size for m in members)
    if total > options.max_expanded_bytes:
        raise too_large(
            name, f"would unpack to {total:,} bytes, more than {options.max_expanded_bytes:,}", "max_expanded_bytes"
        )
    return archive
