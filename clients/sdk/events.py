"""Typed events of the streaming routes (`/rag/query` and `/rag/agent` with `"stream": true`).

Each SSE event is `event: <type>` plus a JSON object with the same `"type"`; `parse_event`
turns it into one of the models below (an `UnknownEvent` for a type this SDK does not know,
so an older SDK keeps working against a newer stack).
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterable, Iterator
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError

from services.rag.protocol import Citation, Usage


class _Event(BaseModel):
    model_config = ConfigDict(extra="allow")


class RetrievalEvent(_Event):
    """First event of a query: the query used for retrieval and the sources given to the model."""

    type: Literal["retrieval"] = "retrieval"
    query: str = ""
    sources: list[Citation] = Field(default_factory=list)


class DeltaEvent(_Event):
    """A piece of the answer's text."""

    type: Literal["delta"] = "delta"
    text: str = ""


class CitationsEvent(_Event):
    """The sources the answer cites, after the last delta."""

    type: Literal["citations"] = "citations"
    citations: list[Citation] = Field(default_factory=list)


class DoneEvent(_Event):
    """Last event: token usage, stage timings (seconds or ms, as the stack reports them) and finish reason."""

    type: Literal["done"] = "done"
    usage: Usage | None = None
    timings: dict[str, float] = Field(default_factory=dict)
    finish_reason: str | None = None


class ErrorEvent(_Event):
    """A failure after the stream started; the iterators raise it as an `InferagError`."""

    type: Literal["error"] = "error"
    error: dict[str, Any] = Field(default_factory=dict)


class ThoughtEvent(_Event):
    """Agent: the model's reasoning before a step."""

    type: Literal["thought"] = "thought"
    text: str | None = None


class ToolCallEvent(_Event):
    """Agent: a tool the model decided to call."""

    type: Literal["tool_call"] = "tool_call"
    name: str | None = None
    arguments: Any = None


class ToolResultEvent(_Event):
    """Agent: what the tool returned."""

    type: Literal["tool_result"] = "tool_result"
    name: str | None = None


class UnknownEvent(_Event):
    """An event type this SDK does not know; its fields are kept as extras."""

    type: str


QueryEvent = Annotated[
    RetrievalEvent | DeltaEvent | CitationsEvent | DoneEvent | ErrorEvent, Field(discriminator="type")
]
AgentEvent = Annotated[
    ThoughtEvent
    | ToolCallEvent
    | ToolResultEvent
    | RetrievalEvent
    | DeltaEvent
    | CitationsEvent
    | DoneEvent
    | ErrorEvent,
    Field(discriminator="type"),
]
Event = (
    RetrievalEvent
    | DeltaEvent
    | CitationsEvent
    | DoneEvent
    | ErrorEvent
    | ThoughtEvent
    | ToolCallEvent
    | ToolResultEvent
    | UnknownEvent
)

_ANY_EVENT: TypeAdapter[Any] = TypeAdapter(AgentEvent)


def parse_event(name: str | None, data: str) -> Event:
    """One SSE event (its `event:` name and `data:` text) as a typed model."""
    payload = json.loads(data)  # a `data: [DONE]` terminator is filtered out by the callers
    if not isinstance(payload, dict):
        payload = {"value": payload}
    payload.setdefault("type", name or "message")
    try:
        event: Event = _ANY_EVENT.validate_python(payload)
    except ValidationError:
        return UnknownEvent.model_validate(payload)
    return event


class SSEDecoder:
    """Turns the lines of a `text/event-stream` into (event name, data) pairs; shared by the sync and async clients."""

    def __init__(self) -> None:
        self._name: str | None = None
        self._data: list[str] = []

    def feed(self, line: str) -> tuple[str | None, str] | None:
        """One line in (without its newline); a complete event out at each blank line."""
        if not line:
            if not self._data:
                self._name = None
                return None
            out = (self._name, "\n".join(self._data))
            self._name, self._data = None, []
            return out
        if line.startswith(":"):
            return None
        field, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if field == "event":
            self._name = value
        elif field == "data":
            self._data.append(value)
        return None

    def events(self, lines: Iterable[str]) -> Iterator[tuple[str | None, str]]:
        for line in lines:
            out = self.feed(line)
            if out is not None:
                yield out
        last = self.feed("")
        if last is not None:
            yield last

    async def aevents(self, lines: AsyncIterator[str]) -> AsyncIterator[tuple[str | None, str]]:
        async for line in lines:
            out = self.feed(line)
            if out is not None:
                yield out
        last = self.feed("")
        if last is not None:
            yield last
