"""Web pages as documents: fetched over http(s) with bounds, and guarded against server-side request forgery.

A URL's host is resolved once per hop and every address it resolves to must be public
(loopback, private, link-local, shared, reserved and multicast ranges are refused unless a
network of `INFERAG_RAG_FETCH_ALLOW_NETWORKS` holds it). The connection then goes to the
address that was checked, the name kept for the Host header and TLS (SNI and certificate), so
a DNS answer that changes between the check and the connection (rebinding) cannot redirect
it. Redirects are followed by hand, each hop checked the same way; size and time are bounded.
"""

from __future__ import annotations

import hashlib
import ipaddress
import socket
import time
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import Any

import httpx

from services.common.errors import InvalidRequest, PayloadTooLarge

from .document import ParsedDocument, ParseOptions

SETTING = "INFERAG_RAG_FETCH_ALLOW_NETWORKS"
_TYPES = {
    "text/html": ".html", "application/xhtml+xml": ".html", "text/plain": ".txt", "text/markdown": ".md",
    "text/csv": ".csv", "application/json": ".json", "application/x-ndjson": ".jsonl", "application/pdf": ".pdf",
    "application/epub+zip": ".epub", "message/rfc822": ".eml", "image/png": ".png", "image/jpeg": ".jpg",
    "application/vnd.openxmlformats-officedocument.wordprocessingml.document": ".docx",
    "application/vnd.openxmlformats-officedocument.presentationml.presentation": ".pptx",
    "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet": ".xlsx",
    "application/vnd.oasis.opendocument.text": ".odt",
}  # fmt: skip
IpAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


@dataclass(frozen=True)
class FetchOptions:
    allow_networks: tuple[str, ...] = ()  # CIDRs where non-public addresses are allowed ("127.0.0.0/8")
    timeout: float = 20.0  # seconds for the whole fetch, redirects included
    max_bytes: int = 20 * 1024 * 1024
    max_redirects: int = 5

    def networks(self) -> list[ipaddress.IPv4Network | ipaddress.IPv6Network]:
        return [ipaddress.ip_network(n, strict=False) for n in self.allow_networks]


class UrlRefused(InvalidRequest):
    code = "url_refused"


def _public(ip: IpAddress) -> bool:
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_global and not ip.is_multicast


def check_url(url: str, options: FetchOptions, param: str = "url") -> tuple[httpx.URL, IpAddress]:
    """The URL parsed and the address to connect to; UrlRefused (400) for a scheme or address not allowed."""
    try:
        target = httpx.URL(url)
    except (httpx.InvalidURL, TypeError, ValueError) as exc:
        raise InvalidRequest(f"'{url}' is not a valid URL ({exc}).", param=param, code="invalid_url") from exc
    if target.scheme not in ("http", "https") or not target.host:
        raise UrlRefused(f"'{url}': only http and https URLs with a host are fetched.", param=param)
    port = target.port or (443 if target.scheme == "https" else 80)
    try:
        infos = socket.getaddrinfo(target.host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as exc:
        raise InvalidRequest(f"'{url}': cannot resolve '{target.host}' ({exc}).", param=param,
                             code="fetch_failed") from exc  # fmt: skip
    addresses = [ipaddress.ip_address(str(info[4][0]).split("%")[0]) for info in infos]
    allowed = options.networks()
    for ip in addresses:  # every address: a name that also resolves to 127.0.0.1 is refused
        if not _public(ip) and not any(ip.version == net.version and ip in net for net in allowed):
            raise UrlRefused(
                f"'{url}' resolves to {ip}, a loopback, private, link-local or reserved address: refused "
                f"(server-side request forgery guard). Allow its network with {SETTING}.",
                param=param,
            )
    return target, addresses[0]


def fetch(url: str, options: FetchOptions, param: str = "url") -> tuple[httpx.URL, str, bytes]:
    """(final URL, content type, body) of a GET, each redirect hop checked; bounded in size and time."""
    deadline = time.monotonic() + options.timeout
    current = url
    with httpx.Client(timeout=options.timeout, follow_redirects=False, trust_env=False) as client:
        for _ in range(options.max_redirects + 1):
            target, ip = check_url(current, options, param)
            # the checked address is the one connected to; the name goes in Host and, for https, SNI (the
            # certificate is verified against it)
            extensions = {"sni_hostname": target.host} if target.scheme == "https" else {}
            headers = {"Host": target.netloc.decode("ascii"), "User-Agent": "inferag-ingest/1.0", "Accept": "*/*"}
            try:
                with client.stream("GET", target.copy_with(host=str(ip)), headers=headers,
                                   extensions=extensions) as resp:  # fmt: skip
                    if resp.is_redirect and "location" in resp.headers:
                        current = str(target.join(resp.headers["location"]))
                        continue
                    if resp.status_code >= 400:
                        raise InvalidRequest(f"'{url}': the server answered {resp.status_code}.", param=param,
                                             code="fetch_failed")  # fmt: skip
                    body = _read(resp, url, options, deadline, param)
                    return target, resp.headers.get("content-type", ""), body
            except httpx.HTTPError as exc:
                raise InvalidRequest(f"'{url}': fetch failed ({type(exc).__name__}: {exc}).", param=param,
                                     code="fetch_failed") from exc  # fmt: skip
    raise InvalidRequest(f"'{url}': more than {options.max_redirects} redirects.", param=param, code="fetch_failed")


def _read(resp: httpx.Response, url: str, options: FetchOptions, deadline: float, param: str) -> bytes:
    declared = resp.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > options.max_bytes:
        raise PayloadTooLarge(f"'{url}' is {int(declared):,} bytes (bound: INFERAG_RAG_FETCH_MAX_BYTES).", param=param)
    body = bytearray()
    for part in resp.iter_bytes():  # decoded: a gzip bomb counts at its unpacked size
        body += part
        if len(body) > options.max_bytes:
            raise PayloadTooLarge(f"'{url}' is larger than {options.max_bytes:,} bytes "
                                  "(bound: INFERAG_RAG_FETCH_MAX_BYTES).", param=param)  # fmt: skip
        if time.monotonic() > deadline:
            raise InvalidRequest(f"'{url}': took longer than {options.timeout:g} s (INFERAG_RAG_FETCH_TIMEOUT).",
                                 param=param, code="fetch_failed")  # fmt: skip
    return bytes(body)


def url_id(url: str) -> str:
    """A web document's default id: from its URL, so fetching it again replaces it."""
    return "url-" + hashlib.sha256(url.encode()).hexdigest()[:32]


def fetch_documents(
    url: str, fetch_options: FetchOptions, options: ParseOptions, doc_id: str | None = None, param: str = "url"
) -> list[ParsedDocument]:
    """The page (or file) at `url` as documents, parsed by its content type and bytes; `source` is the URL."""
    from . import EXTENSIONS, parse_upload

    final, content_type, body = fetch(url, fetch_options, param)
    kind = content_type.split(";")[0].strip().lower()
    suffix = PurePosixPath(final.path).suffix.lower()
    if kind in _TYPES and EXTENSIONS.get(suffix) != EXTENSIONS.get(_TYPES[kind]):
        suffix = _TYPES[kind]  # the server's type wins over a path like /article or /view.php
    elif suffix not in EXTENSIONS:
        suffix = ".html" if b"<html" in body[:1024].lower() else ".txt"
    docs = parse_upload(f"page{suffix}", body, options, doc_id=doc_id or url_id(url))
    extra: dict[str, Any] = {"url": url, **({"final_url": str(final)} if str(final) != url else {})}
    for doc in docs:
        doc.source = url if doc.source == f"page{suffix}" else f"{url}#{doc.source}"
        doc.metadata = {**doc.metadata, **extra}
    return docs
