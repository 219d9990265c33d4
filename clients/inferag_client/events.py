"""Typed events of the streaming routes (`/rag/query` and `/rag/agent` with `"stream": true`).

Each SSE event (read with httpx-sse) is `event: <type>` plus a JSON object with the same `"type"`;
`parse_query_event` / `parse_agent_event` turn it into one of the models below (an `UnknownEvent` for a type
this SDK does not know, so an older SDK keeps working against a newer stack).
"""

from __future__ import annotations

import json
from typing import Any

from pydantic import BaseModel, ConfigDict, TypeAdapter, ValidationError

from inferag_protocol import agent as agent_protocol
from inferag_protocol import rag as rag_protocol


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
