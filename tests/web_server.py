"""A small HTTP server on 127.0.0.1 for the URL-document tests: pages, redirects, big and slow answers."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlparse

PAGE = (b"<html><head><title>Lighthouse keeping</title></head><body><h1>Lighthouse keeping</h1>"
        b"<p>The keeper lights the lamp of the Ar-Men lighthouse at sunset every evening.</p>"
        b"<h2>Supplies</h2><p>Fuel arrives by boat on the first Monday of each month.</p></body></html>")  # fmt: skip


class _Handler(BaseHTTPRequestHandler):
    hosts: list[str] = []

    def log_message(self, *args: object) -> None:  # quiet
        pass

    def do_GET(self) -> None:  # noqa: N802 (the standard library's name)
        url = urlparse(self.path)
        query = parse_qs(url.query)
        type(self).hosts.append(self.headers.get("Host", ""))
        if url.path == "/page.html" or url.path == "/article":
            self._send(200, PAGE, "text/html; charset=utf-8")
        elif url.path == "/redirect":
            self.send_response(302)
            self.send_header("Location", query["to"][0])
            self.send_header("Content-Length", "0")
            self.end_headers()
        elif url.path == "/big":
            self._send(200, b"x" * int(query["n"][0]), "text/plain")
        elif url.path == "/slow":
            self.send_response(200)
            self.send_header("Content-Type", "text/plain")
            self.end_headers()
            for _ in range(40):
                self.wfile.write(b"slow ")
                self.wfile.flush()
                time.sleep(0.1)
        else:
            self._send(404, b"not found", "text/plain")

    def _send(self, status: int, body: bytes, kind: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


@contextlib.contextmanager
def web_server() -> Iterator[tuple[str, list[str]]]:
    """(base URL, Host headers received) of a server on a free loopback port."""
    handler = type("Handler", (_Handler,), {"hosts": []})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", handler.hosts
    finally:
        server.shutdown()
        server.server_close()
