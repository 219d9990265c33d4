"""Request body size limit (413 in the OpenAI error body), for declared and chunked bodies alike."""

from __future__ import annotations

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .errors import PayloadTooLarge, error_response


class BodyLimit:
    """Pure-ASGI middleware: a body over `max_bytes` is refused before the route reads it all.

    A declared `Content-Length` over the limit is answered at once; a chunked body is
    counted as it arrives and the route's read fails with 413 at the first byte over.
    """

    def __init__(self, app: ASGIApp, max_bytes: int):
        self.app, self.max_bytes = app, max_bytes

    def _error(self) -> PayloadTooLarge:
        return PayloadTooLarge(f"The request body is larger than the {self.max_bytes}-byte limit.")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            await error_response(self._error())(scope, receive, send)
            return
        seen = 0

        async def counted() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    raise self._error()
            return message

        await self.app(scope, counted, send)
