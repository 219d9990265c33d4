"""How the orchestrator reaches the generation service: one interface, in-process or over HTTP.

Both take the generation service's own request model and return its typed response or chunks,
so a prompt built here runs the same against the engine in this process and against a remote
service. In-process calls go to the serving layer itself and pass its objects through (nothing
is encoded to SSE and parsed back); over HTTP the SSE lines are parsed once, at that edge.
"""

from __future__ import annotations

import json
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from typing import Any, Protocol

import httpx
from httpx_sse import EventSource, ServerSentEvent, SSEError

from services.common.errors import NotReady, UpstreamUnavailable, status_of_error_event
from services.common.upstream import NO_RETRY, Retry, call, send, upstream_error
from services.generation.protocol import ChatCompletionChunk, ChatCompletionRequest, ChatCompletionResponse
from services.generation.serving import GenerationService


class Generator(Protocol):
    async def models(self) -> list[str]:
        """Served model names, default first."""
        ...

    async def chat(self, request: ChatCompletionRequest) -> ChatCompletionResponse:
        """A non-streaming chat completion (`request.stream` is ignored)."""
        ...

    def chat_stream(self, request: ChatCompletionRequest) -> AsyncGenerator[ChatCompletionChunk, None]:
        """The chunks of a streaming chat completion; a failure raises its domain error."""
        ...


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

    async def chat(self, request: ChatCompletionRequest) -> ChatCompletionResponse:
        result = await self._get().chat(request.model_copy(update={"stream": False}))
        if isinstance(result, AsyncIterator):  # pragma: no cover - stream is False
            raise TypeError("unexpected stream")
        return result

    async def chat_stream(self, request: ChatCompletionRequest) -> AsyncGenerator[ChatCompletionChunk, None]:
        result = await self._get().chat(request.model_copy(update={"stream": True}))
        if not isinstance(result, AsyncIterator):  # pragma: no cover - stream is True
            raise TypeError("expected a stream")
        try:
            async for chunk in result:
                yield chunk
        finally:
            aclose = getattr(result, "aclose", None)
            if aclose is not None:
                await aclose()


def _chunk(event: ServerSentEvent) -> ChatCompletionChunk | None:
    """The chunk of one SSE event (None for `[DONE]`); an error event raises its error."""
    if not event.data or event.data == "[DONE]":
        return None
    data: dict[str, Any] = json.loads(event.data)
    if "error" in data and "choices" not in data:
        raise upstream_error(status_of_error_event(data["error"]), data)
    return ChatCompletionChunk.model_validate(data)


def _body(request: ChatCompletionRequest, stream: bool) -> dict[str, Any]:
    return {**request.model_dump(mode="json", exclude_none=True), "stream": stream}


class HttpGenerator:
    """A generation service over HTTP (its OpenAI-compatible API).

    `retry` repeats listings, and chats the service refused (429, 503) before generating anything.
    """

    def __init__(self, client: httpx.AsyncClient, retry: Retry = NO_RETRY):
        self.client, self.retry = client, retry

    async def models(self) -> list[str]:
        listing = await call(self.client, "GET", "/v1/models", service="generation", retry=self.retry)
        return [m["id"] for m in listing["data"]]

    async def chat(self, request: ChatCompletionRequest) -> ChatCompletionResponse:
        answer = await call(
            self.client, "POST", "/v1/chat/completions", _body(request, False),
            service="generation", retry=self.retry, idempotent=False,
        )  # fmt: skip
        return ChatCompletionResponse.model_validate(answer)

    async def chat_stream(self, request: ChatCompletionRequest) -> AsyncGenerator[ChatCompletionChunk, None]:
        resp = await send(
            self.client, "POST", "/v1/chat/completions", _body(request, True),
            service="generation", retry=self.retry, idempotent=False,
        )  # fmt: skip
        try:
            async for event in EventSource(resp).aiter_sse():
                if (chunk := _chunk(event)) is not None:
                    yield chunk
        except (httpx.HTTPError, SSEError) as exc:
            raise UpstreamUnavailable(f"The generation service at {self.client.base_url} failed: {exc}") from exc
        finally:
            await resp.aclose()
