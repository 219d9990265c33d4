"""How the orchestrator reaches the generation service: one interface, in-process or over HTTP.

Both take and return OpenAI chat-completion JSON (dicts), so a prompt built here runs
the same against the engine in this process and against a remote service. In-process
calls go to the serving layer itself (an ASGI transport would buffer a stream whole).
"""

from __future__ import annotations

import json
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from typing import Any, Protocol

import httpx

from services.common.errors import NotReady, UpstreamUnavailable
from services.common.upstream import NO_RETRY, Retry, call, send, upstream_error
from services.generation.protocol import ChatCompletionRequest
from services.generation.serving import GenerationService


class Generator(Protocol):
    async def models(self) -> list[str]:
        """Served model names, default first."""
        ...

    async def chat(self, body: dict[str, Any]) -> dict[str, Any]:
        """A non-streaming chat completion."""
        ...

    def chat_stream(self, body: dict[str, Any]) -> AsyncGenerator[dict[str, Any], None]:
        """The chunks of a streaming chat completion; an error event raises its domain error."""
        ...


def _chunk(line: str) -> dict[str, Any] | None:
    """The chunk of one SSE line (None for other lines and `[DONE]`); an error event raises its error."""
    if not line.startswith("data: ") or line == "data: [DONE]":
        return None
    chunk: dict[str, Any] = json.loads(line[6:])
    if "error" in chunk and "choices" not in chunk:
        status = {"rate_limit_error": 429, "invalid_request_error": 400}.get(chunk["error"].get("type"), 500)
        raise upstream_error(status, chunk)
    return chunk


class InProcessGenerator:
    """The generation service of this process (e.g. the gateway's), reached through its serving layer."""

    def __init__(self, service: Callable[[], GenerationService | None]):
        self._service = service

    def _get(self) -> GenerationService:
        service = self._service()
        if service is None:
            raise NotReady("The generation service is still loading.")
        return service

    async def models(self) -> list[str]:
        return [m.id for m in self._get().models().data]

    async def chat(self, body: dict[str, Any]) -> dict[str, Any]:
        result = await self._get().chat(ChatCompletionRequest.model_validate({**body, "stream": False}))
        if isinstance(result, AsyncIterator):  # pragma: no cover - stream is False
            raise TypeError("unexpected stream")
        return result.model_dump(mode="json", exclude_none=True)

    async def chat_stream(self, body: dict[str, Any]) -> AsyncGenerator[dict[str, Any], None]:
        result = await self._get().chat(ChatCompletionRequest.model_validate({**body, "stream": True}))
        if not isinstance(result, AsyncIterator):  # pragma: no cover - stream is True
            raise TypeError("expected a stream")
        try:
            async for event in result:
                for line in event.splitlines():
                    if (chunk := _chunk(line)) is not None:
                        yield chunk
        finally:
            aclose = getattr(result, "aclose", None)
            if aclose is not None:
                await aclose()


class HttpGenerator:
    """A generation service over HTTP (its OpenAI-compatible API).

    `retry` repeats listings, and chats the service refused (429, 503) before generating anything.
    """

    def __init__(self, client: httpx.AsyncClient, retry: Retry = NO_RETRY):
        self.client, self.retry = client, retry

    async def models(self) -> list[str]:
        listing = await call(self.client, "GET", "/v1/models", service="generation", retry=self.retry)
        return [m["id"] for m in listing["data"]]

    async def chat(self, body: dict[str, Any]) -> dict[str, Any]:
        return await call(
            self.client, "POST", "/v1/chat/completions", {**body, "stream": False},
            service="generation", retry=self.retry, idempotent=False,
        )  # fmt: skip

    async def chat_stream(self, body: dict[str, Any]) -> AsyncGenerator[dict[str, Any], None]:
        resp = await send(
            self.client, "POST", "/v1/chat/completions", {**body, "stream": True},
            service="generation", retry=self.retry, idempotent=False,
        )  # fmt: skip
        try:
            async for line in resp.aiter_lines():
                if (chunk := _chunk(line)) is not None:
                    yield chunk
        except httpx.HTTPError as exc:
            raise UpstreamUnavailable(f"The generation service at {self.client.base_url} failed: {exc}") from exc
        finally:
            await resp.aclose()
