"""URL documents: the server-side request forgery guard (every hop, every resolved address) and the fetch bounds."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from typing import Any

import pytest

from services.common.errors import InvalidRequest, PayloadTooLarge
from services.rag.parsing import FetchOptions, ParseOptions, UrlRefused, check_url, fetch_documents
from tests.web_server import web_server

LOOPBACK = FetchOptions(allow_networks=("127.0.0.0/8",))


@pytest.fixture(scope="module")
def site() -> Iterator[tuple[str, list[str]]]:
    with web_server() as served:
        yield served


@pytest.mark.parametrize(
    "url",
    ["http://127.0.0.1/", "http://10.1.2.3/x", "http://169.254.169.254/latest/meta-data/", "http://[::1]/",
     "http://192.168.0.1/", "http://0.0.0.0/", "http://[::ffff:127.0.0.1]/", "http://100.64.0.1/",
     "http://localhost/"],
)  # fmt: skip
def test_non_public_addresses_are_refused_naming_the_setting(url: str) -> None:
    with pytest.raises(UrlRefused, match="INFERAG_RAG_FETCH_ALLOW_NETWORKS") as caught:
        check_url(url, FetchOptions())
    assert caught.value.status_code == 400 and caught.value.code == "url_refused"


@pytest.mark.parametrize("url", ["file:///etc/passwd", "ftp://example.com/x", "gopher://127.0.0.1:70/", "http:///x"])
def test_only_http_and_https(url: str) -> None:
    with pytest.raises(InvalidRequest):
        check_url(url, FetchOptions())


def test_a_loopback_page_is_fetched_when_the_setting_allows_it(site: tuple[str, list[str]]) -> None:
    base, _ = site
    with pytest.raises(UrlRefused):
        fetch_documents(f"{base}/page.html", FetchOptions(), ParseOptions())
    [doc] = fetch_documents(f"{base}/article", LOOPBACK, ParseOptions())
    assert doc.source == f"{base}/article" and doc.metadata["title"] == "Lighthouse keeping"
    assert doc.text.startswith("# Lighthouse keeping\n\nThe keeper lights the lamp") and "## Supplies" in doc.text
    assert doc.format == "markdown" and doc.doc_id and doc.doc_id.startswith("url-")


@pytest.mark.parametrize("target", ["http://10.0.0.1/", "http://169.254.169.254/latest/meta-data/",
                                    "http://192.168.1.1/admin"])  # fmt: skip
def test_a_redirect_to_a_private_address_is_refused(site: tuple[str, list[str]], target: str) -> None:
    base, _ = site
    with pytest.raises(UrlRefused, match=target.split("/")[2]):
        fetch_documents(f"{base}/redirect?to={target}", LOOPBACK, ParseOptions())


def test_redirects_are_followed_and_bounded(site: tuple[str, list[str]]) -> None:
    base, _ = site
    [doc] = fetch_documents(f"{base}/redirect?to=/page.html", LOOPBACK, ParseOptions())
    assert doc.metadata["final_url"] == f"{base}/page.html" and doc.source == f"{base}/redirect?to=/page.html"
    loop = f"{base}/redirect?to={base}/redirect?to=/page.html"
    with pytest.raises(InvalidRequest, match="redirects"):
        fetch_documents(loop, FetchOptions(allow_networks=("127.0.0.0/8",), max_redirects=1), ParseOptions())


def test_size_and_time_bounds(site: tuple[str, list[str]]) -> None:
    base, _ = site
    with pytest.raises(PayloadTooLarge, match="FETCH_MAX_BYTES"):
        fetch_documents(f"{base}/big?n=5000", FetchOptions(allow_networks=("127.0.0.0/8",), max_bytes=4096),
                        ParseOptions())  # fmt: skip
    with pytest.raises(InvalidRequest, match="FETCH_TIMEOUT"):
        fetch_documents(f"{base}/slow", FetchOptions(allow_networks=("127.0.0.0/8",), timeout=1.0), ParseOptions())
    with pytest.raises(InvalidRequest, match="answered 404"):
        fetch_documents(f"{base}/nothing", LOOPBACK, ParseOptions())


def test_the_connection_goes_to_the_checked_address(site: tuple[str, list[str]], monkeypatch: Any) -> None:
    """DNS rebinding: the name is resolved once, checked, and that address is the one connected to."""
    base, hosts = site
    port = int(base.rsplit(":", 1)[1])
    answers = {"rebind.test": ["127.0.0.1"], "mixed.test": ["93.184.215.14", "10.0.0.7"]}
    calls: list[str] = []
    real = socket.getaddrinfo

    def fake(host: str, *args: Any, **kwargs: Any) -> Any:
        if host not in answers:
            return real(host, *args, **kwargs)
        calls.append(host)
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (ip, port)) for ip in answers[host]]

    monkeypatch.setattr(socket, "getaddrinfo", fake)
    # a name with one private address among public ones is refused
    with pytest.raises(UrlRefused, match="10.0.0.7"):
        check_url(f"http://mixed.test:{port}/", FetchOptions())
    [doc] = fetch_documents(f"http://rebind.test:{port}/page.html", LOOPBACK, ParseOptions())
    # resolved once (our check), never again by the HTTP client; the server saw the name, not the address
    assert calls == ["mixed.test", "rebind.test"] and hosts[-1] == f"rebind.test:{port}"
    assert doc.source == f"http://rebind.test:{port}/page.html"
