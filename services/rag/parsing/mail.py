"""Mail: .eml (the standard library's `email`) and Outlook .msg (olefile), headers as metadata.

The message is one document (subject as heading, then the body); each attachment of a type
the ingestion reads becomes a document of its own, linked by `attachment_of`. Attachments of
other types are listed in the message's metadata, not stored.
"""

from __future__ import annotations

import contextlib
import email
import email.policy
import io
from collections.abc import Callable
from email.message import EmailMessage
from email.utils import parsedate_to_datetime
from pathlib import PurePath
from typing import Any

from services.common.errors import InferagError, UnsupportedMediaType

from .document import ParsedDocument, ParseOptions, corrupt, empty, too_large
from .html import html_markdown

MAX_DEPTH = 3  # a mail attached to a mail attached to a mail...
Parse = Callable[[str, bytes, ParseOptions], list[ParsedDocument]]
_HEADERS = {"subject": "subject", "from": "from", "to": "to", "cc": "cc", "date": "date", "message-id": "message_id"}


def parse_eml(name: str, data: bytes, options: ParseOptions, parse: Parse) -> list[ParsedDocument]:
    message = email.message_from_bytes(data, policy=email.policy.default)
    if not isinstance(message, EmailMessage) or not any(message.get(h) for h in ("from", "subject", "date")):
        raise UnsupportedMediaType(f"'{name}' is not an e-mail message (no From, Subject or Date).", param="files")
    try:
        meta = {key: str(message[h]) for h, key in _HEADERS.items() if message.get(h)}
        part = message.get_body(preferencelist=("plain", "html"))
        body, html = "", False
        if part is not None:
            body, html = part.get_content(), part.get_content_subtype() == "html"
        attachments = [(p.get_filename() or "attachment", p.get_content()) for p in message.iter_attachments()]
    except (LookupError, ValueError, TypeError, AttributeError) as exc:  # bad charset, broken MIME
        raise corrupt(name, f"not a readable e-mail message ({exc})") from exc
    _iso_date(meta)
    return _documents(name, meta, body, html, attachments, options, parse)


def parse_msg(name: str, data: bytes, options: ParseOptions, parse: Parse) -> list[ParsedDocument]:
    """An Outlook message: its MAPI properties (subject, sender, recipients, body) and attachments."""
    import olefile

    try:
        ole = olefile.OleFileIO(io.BytesIO(data))
        streams = ["/".join(entry) for entry in ole.listdir()]

        def prop(code: str, storage: str = "") -> str | None:
            for suffix, encoding in (("001F", "utf-16-le"), ("001E", "cp1252")):
                path = f"{storage}__substg1.0_{code}{suffix}"
                if path in streams:
                    return ole.openstream(path).read().decode(encoding, "replace").rstrip("\x00")
            return None

        meta = {"subject": prop("0037"), "from": _sender(prop("0C1A"), prop("0C1F")), "to": prop("0E04"),
                "cc": prop("0E03")}  # fmt: skip
        headers = prop("007D")  # the transport headers, when the message came through SMTP
        if headers:
            parsed = email.message_from_string(headers, policy=email.policy.default)
            meta.update({k: str(parsed[h]) for h, k in (("date", "date"), ("message-id", "message_id")) if parsed[h]})
        body, html = prop("1000") or "", False
        if not body.strip() and "__substg1.0_10130102" in streams:
            body, html = ole.openstream("__substg1.0_10130102").read().decode("utf-8", "replace"), True
        attachments = []
        for storage in sorted({s.split("/")[0] for s in streams if s.startswith("__attach_version1.0_")}):
            filename = prop("3707", storage + "/") or prop("3704", storage + "/") or "attachment"
            if f"{storage}/__substg1.0_37010102" in streams:
                attachments.append((filename, ole.openstream(f"{storage}/__substg1.0_37010102").read()))
    except (OSError, ValueError, IndexError, TypeError, KeyError) as exc:
        raise corrupt(name, f"not a readable Outlook message ({exc})") from exc
    clean = {k: v for k, v in meta.items() if v}
    _iso_date(clean)
    return _documents(name, clean, body, html, attachments, options, parse)


def _sender(display: str | None, address: str | None) -> str | None:
    if display and address and address not in display:
        return f"{display} <{address}>"
    return address or display


def _iso_date(meta: dict[str, Any]) -> None:
    if "date" in meta:
        with contextlib.suppress(TypeError, ValueError):  # an odd date stays as written
            meta["date"] = parsedate_to_datetime(meta["date"]).isoformat()


def _documents(
    name: str,
    meta: dict[str, Any],
    body: Any,
    html: bool,
    attachments: list[tuple[str, Any]],
    options: ParseOptions,
    parse: Parse,
) -> list[ParsedDocument]:
    text = html_markdown(body)[0] if html else str(body or "").strip()
    subject = " ".join(str(meta.get("subject") or "").split())
    lines = [f"# {subject}" if subject else ""]
    lines += [f"{label}: {meta[key]}" for key, label in (("from", "From"), ("to", "To"), ("date", "Date"))
              if meta.get(key)]  # fmt: skip
    text = "\n".join(line for line in lines if line) + "\n\n" + text
    if len(text) > options.max_document_chars:
        raise too_large(name, "has a body longer than the text bound", "max_document_chars")
    main = ParsedDocument(text.strip(), "markdown", source=name, metadata=meta)
    docs = [main]
    skipped = []
    if len(attachments) > options.max_records:
        raise too_large(name, f"has {len(attachments):,} attachments", "max_records")
    for filename, content in attachments:
        filename = PurePath(filename).name or "attachment"
        if not isinstance(content, bytes):
            content = str(content).encode()
        if options.depth >= MAX_DEPTH:
            skipped.append(filename)
            continue
        try:
            parts = parse(filename, content, options.nested())
        except UnsupportedMediaType:
            skipped.append(filename)
            continue
        except InferagError as exc:  # a corrupt attachment fails its message, naming both
            exc.message = f"'{name}', attachment {exc.message}"
            raise
        for part in parts:
            part.source = f"{name}/{part.source or filename}"
            part.metadata = {**part.metadata, "attachment": filename, **({"email_subject": subject} if subject else {})}
            docs.append(part)
    if skipped:
        main.metadata["attachments_skipped"] = skipped
    if not main.text.strip() and len(docs) == 1:
        raise empty(name)
    return docs
