"""Server-sent events in OpenAI's wire format: `data: <json>\\n\\n`, `data: [DONE]` last."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

from pydantic import BaseModel
from sse_starlette import EventSourceResponse

from .errors import sse_error

DONE = "data: [DONE]\n\n"


def sse_data(payload: BaseModel | dict[str, Any]) -> str:
    if isinstance(payload, BaseModel):
        text = payload.model_dump_json(exclude_none=True)
    else:
        text = json.dumps(payload, separators=(",", ":"))
    return f"data: {text}\n\n"


async def openai_stream(chunks: AsyncIterator[BaseModel | dict[str, Any]]) -> AsyncIterator[str]:
    """Typed chunks as OpenAI's SSE: `data: <json>` each, `data: [DONE]` last; a failure after the
    first chunk (headers sent) is an error event, then the end."""
    try:
        async for chunk in chunks:
            yield sse_data(chunk)
    except Exception as exc:
        yield sse_error(exc)
    finally:
        aclose = getattr(chunks, "aclose", None)
        if aclose is not None:
            await aclose()
    yield DONE


def sse_response(events: AsyncIterator[str]) -> EventSourceResponse:
    """Stream pre-encoded SSE strings with sse-starlette.

    sse-starlette watches for the client's disconnect and closes the iterator,
    which is what aborts the request in the engine (the serving layer's
    `finally`); it also sends keep-alive comments that OpenAI clients ignore.
    """

    async def encoded() -> AsyncIterator[bytes]:
        try:
            async for event in events:
                yield event.encode()
        finally:
            # Close the inner generator now, not whenever it is collected.
            aclose = getattr(events, "aclose", None)
            if aclose is not None:
                await aclose()

    return EventSourceResponse(encoded(), sep="\n", headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


def sse_event(type_: str, payload: BaseModel | dict[str, Any]) -> str:
    """A typed event (`event: <type>`) whose JSON data also carries `"type"`, for clients that ignore names."""
    data = payload.model_dump(mode="json", exclude_none=True) if isinstance(payload, BaseModel) else dict(payload)
    data = {"type": type_, **data}
    return f"event: {type_}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n"


async def typed_events(events: AsyncIterator[Any]) -> AsyncIterator[str]:
    """Typed event models (each with a `type`) as `sse_event`s."""
    try:
        async for event in events:
            yield sse_event(event.type, event)
    finally:
        aclose = getattr(events, "aclose", None)
        if aclose is not None:
            await aclose()
