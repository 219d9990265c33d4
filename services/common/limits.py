"""Request body size limit (413 in the OpenAI error body), for declared and chunked bodies alike."""

from __future__ import annotations

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .errors import PayloadTooLarge, error_response


def too_large(max_bytes: int) -> PayloadTooLarge:
    return PayloadTooLarge(f"The request body is larger than the {max_bytes}-byte limit.")


def check_declared(scope: Scope, max_bytes: int) -> None:
    """PayloadTooLarge when the request declares a `Content-Length` over `max_bytes`."""
    declared = dict(scope["headers"]).get(b"content-length")
    if declared is not None and declared.isdigit() and int(declared) > max_bytes:
        raise too_large(max_bytes)


async def read_body(scope: Scope, receive: Receive, max_bytes: int) -> bytes:
    """The whole body, or PayloadTooLarge as soon as it is declared or sent past `max_bytes`: no more
    than `max_bytes` (and one chunk of the server's) is ever read or held."""
    check_declared(scope, max_bytes)
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] != "http.request":
            break
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > max_bytes:
            raise too_large(max_bytes)
        chunks.append(chunk)
        if not message.get("more_body"):
            break
    return b"".join(chunks)


class BodyLimit:
    """Pure-ASGI middleware: a body over `max_bytes` is refused before the route reads it all.

    A declared `Content-Length` over the limit is answered at once; a chunked body is
    counted as it arrives and the route's read fails with 413 at the first byte over.
    """

    def __init__(self, app: ASGIApp, max_bytes: int):
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        try:
            check_declared(scope, self.max_bytes)
        except PayloadTooLarge as exc:
            await error_response(exc)(scope, receive, send)
            return
        seen = 0

        async def counted() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    raise too_large(self.max_bytes)
            return message

        await self.app(scope, counted, send)
