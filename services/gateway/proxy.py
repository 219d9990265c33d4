"""A streaming reverse proxy (ASGI → httpx), for a gateway in front of services in other processes."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
from starlette.types import Receive, Scope, Send

from services.common.errors import UpstreamUnavailable, error_response

# Hop-by-hop headers (RFC 9110 §7.6.1) and those httpx sets itself.
_SKIP = frozenset({"host", "connection", "keep-alive", "transfer-encoding", "te", "trailer", "upgrade",
                   "proxy-authorization", "proxy-connection", "content-length"})  # fmt: skip


class Proxy:
    """Forwards each request to `base_url` and streams the answer back (SSE included)."""

    def __init__(self, name: str, base_url: str, timeout: float = 600):
        self.name = name
        self.client = httpx.AsyncClient(base_url=base_url, timeout=httpx.Timeout(timeout, connect=10))

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return

        async def body() -> AsyncIterator[bytes]:
            while True:
                message = await receive()
                if message["type"] == "http.disconnect":
                    return
                yield message.get("body", b"")
                if not message.get("more_body"):
                    return

        headers = [(k, v) for k, v in scope["headers"] if k.decode().lower() not in _SKIP]
        url = httpx.URL(path=scope["path"], query=scope.get("query_string", b""))
        request = self.client.build_request(scope["method"], url, headers=headers, content=body())
        try:
            response = await self.client.send(request, stream=True)
        except httpx.HTTPError as exc:
            error = UpstreamUnavailable(f"The {self.name} service is unreachable: {exc}")
            await error_response(error)(scope, receive, send)
            return
        try:
            out = [(k.encode(), v.encode()) for k, v in response.headers.items() if k.lower() not in _SKIP]
            await send({"type": "http.response.start", "status": response.status_code, "headers": out})
            async for chunk in response.aiter_raw():
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        finally:
            await response.aclose()

    async def ready(self) -> tuple[bool, str]:
        try:
            resp = await self.client.get("/ready", timeout=5)
        except httpx.HTTPError as exc:
            return False, f"unreachable: {exc}"
        return resp.status_code == 200, "ready" if resp.status_code == 200 else f"HTTP {resp.status_code}"

    async def aclose(self) -> None:
        await self.client.aclose()
