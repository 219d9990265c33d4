"""Helpers the routers share."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncGenerator, Awaitable, Callable
from typing import TypeVar

from fastapi import Request
from starlette.types import Message, Send

T = TypeVar("T")


async def cancel_on_disconnect(request: Request, work: Awaitable[T]) -> T:
    """Await `work`, cancelling it if the client goes away first.

    FastAPI does not cancel a non-streaming handler when its client disconnects;
    without this, an abandoned request would keep the engine busy to the end.
    """
    task = asyncio.ensure_future(work)

    async def watch() -> None:
        while True:
            message = await request.receive()
            if message["type"] == "http.disconnect":
                task.cancel()
                return

    watcher = asyncio.create_task(watch())
    try:
        return await task
    finally:
        watcher.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await watcher


async def peeked(source: AsyncGenerator[T, None]) -> AsyncGenerator[T, None]:
    """Pull `source`'s first item now (its errors raise here, before a response starts) and return a
    generator of all items: a stream refused by admission control becomes an HTTP status, not a cut."""
    try:
        first = await anext(source)
    except StopAsyncIteration:
        return source
    except BaseException:
        await source.aclose()
        raise

    async def chained() -> AsyncGenerator[T, None]:
        async with contextlib.aclosing(source):
            yield first
            async for item in source:
                yield item

    return chained()


class ResponseWatch:
    """A `send` for pure ASGI middleware (not BaseHTTPMiddleware, so streams and disconnects pass through):
    passes every message on, calls `on_start` with the response's start message, and keeps its status
    (500 until then, the status of an app that raised before answering)."""

    def __init__(self, send: Send, on_start: Callable[[Message], None]):
        self._send, self._on_start = send, on_start
        self.status = 500

    async def send(self, message: Message) -> None:
        if message["type"] == "http.response.start":
            self.status = message["status"]
            self._on_start(message)
        await self._send(message)
