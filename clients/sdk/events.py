"""Typed events of the streaming routes (`/rag/query` and `/rag/agent` with `"stream": true`).

Each SSE event is `event: <type>` plus a JSON object with the same `"type"`; `parse_query_event` /
`parse_agent_event` turn it into one of the models below (an `UnknownEvent` for a type this SDK does not know,
so an older SDK keeps working against a newer stack).
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterable, Iterator
from typing import Any

from pydantic import BaseModel, ConfigDict, TypeAdapter, ValidationError

from services.rag import protocol as rag_protocol
from services.rag.agent import protocol as agent_protocol


class _Event(BaseModel):
    model_config = ConfigDict(extra="allow")


# The query stream's events are the RAG route's own wire models.
RetrievalEvent = rag_protocol.RetrievalEvent
DeltaEvent = rag_protocol.DeltaEvent
CitationsEvent = rag_protocol.CitationsEvent
DoneEvent = rag_protocol.DoneEvent
ErrorEvent = rag_protocol.ErrorEvent


class UnknownEvent(_Event):
    """An event type this SDK does not know; its fields are kept as extras."""

    type: str


QueryEvent = rag_protocol.QueryEvent
# The agent's events are the agent route's own wire models.
AgentEvent = agent_protocol.AgentEvent
ThoughtEvent = agent_protocol.ThoughtEvent
ToolCallEvent = agent_protocol.ToolCallEvent
ToolResultEvent = agent_protocol.ToolResultEvent
AgentDeltaEvent = agent_protocol.DeltaEvent
AgentCitationsEvent = agent_protocol.CitationsEvent
AgentDoneEvent = agent_protocol.DoneEvent
AgentErrorEvent = agent_protocol.ErrorEvent

# What the streams yield (match on `event.type`).
QueryStreamEvent = RetrievalEvent | DeltaEvent | CitationsEvent | DoneEvent | ErrorEvent | UnknownEvent
AgentStreamEvent = (
    ThoughtEvent
    | ToolCallEvent
    | ToolResultEvent
    | AgentDeltaEvent
    | AgentCitationsEvent
    | AgentDoneEvent
    | AgentErrorEvent
    | UnknownEvent
)

_QUERY: TypeAdapter[Any] = TypeAdapter(QueryEvent)
_AGENT: TypeAdapter[Any] = TypeAdapter(AgentEvent)


def _parse(adapter: TypeAdapter[Any], name: str | None, data: str) -> Any:
    payload = json.loads(data)  # a `data: [DONE]` terminator is filtered out by the callers
    if not isinstance(payload, dict):
        payload = {"value": payload}
    payload.setdefault("type", name or "message")
    try:
        return adapter.validate_python(payload)
    except ValidationError:
        return UnknownEvent.model_validate(payload)


def parse_query_event(name: str | None, data: str) -> QueryStreamEvent:
    """One SSE event of `/rag/query` (its `event:` name and `data:` text) as a typed model."""
    event: QueryStreamEvent = _parse(_QUERY, name, data)
    return event


def parse_agent_event(name: str | None, data: str) -> AgentStreamEvent:
    """One SSE event of `/rag/agent` as the agent protocol's typed model."""
    event: AgentStreamEvent = _parse(_AGENT, name, data)
    return event


def error_of(event: Any) -> dict[str, Any] | None:
    """The OpenAI error body of an `error` event (either route's shape), None for any other event."""
    if getattr(event, "type", None) != "error":
        return None
    error = getattr(event, "error", None)
    if isinstance(error, dict):
        return {"error": error}
    message = getattr(event, "message", None) or "stream failed"
    return {
        "error": {"message": message, "type": "internal_error", "param": None, "code": getattr(event, "code", None)}
    }


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
