"""Wire models of the agent route: the request, the typed stream events and the collected response."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, Field, model_validator

from .common import Strict

# The answer events are /rag/query's own: the agent sends its checked final answer as one delta.
from .rag import Citation, CitationsEvent, DeltaEvent, RetrievalMode

AgentProtocol = Literal["auto", "native", "react"]
# unsupported: no supported answer (the model said it does not know, or its answer cited no source it had
# seen, or stated a number no tool gave, again after one correction); the run answers "I don't know" with
# the sources it found.
StoppedReason = Literal["answer", "unsupported", "max_steps", "time_limit", "error"]


class AgentMessage(Strict):
    role: Literal["system", "user", "assistant"]
    content: Annotated[str, Field(max_length=100_000)]


class AgentRequest(Strict):
    """`POST /rag/agent`. Exactly one of `query` / `messages`; at least one collection."""

    collection: str | None = None
    collections: Annotated[list[str], Field(max_length=16)] | None = None
    query: Annotated[str, Field(min_length=1, max_length=20_000)] | None = None
    messages: Annotated[list[AgentMessage], Field(min_length=1, max_length=100)] | None = None
    tools: list[str] | None = Field(None, description="Subset of the registered tools; all of them when absent.")
    max_steps: Annotated[int, Field(ge=1, le=20)] = Field(6, description="The most model turns that call tools.")
    stream: bool = False
    protocol: AgentProtocol = Field(
        "auto",
        description="native: OpenAI tool calls; react: Thought/Action text; auto: native if the engine has them.",
    )
    top_k: Annotated[int, Field(ge=1, le=50)] = 5
    mode: RetrievalMode = Field("hybrid", description="How the search tool retrieves (graph modes need a graph).")
    max_tokens: Annotated[int, Field(ge=1, le=32_768)] | None = Field(None, description="Per model turn.")
    temperature: Annotated[float, Field(ge=0.0, le=2.0)] | None = None

    @model_validator(mode="after")
    def _checks(self) -> AgentRequest:
        if (self.query is None) == (self.messages is None):
            raise ValueError("give exactly one of 'query' and 'messages'")
        if self.messages is not None and self.messages[-1].role != "user":
            raise ValueError("the last message must be the user's")
        if not self.target_collections():
            raise ValueError("give 'collection' or 'collections'")
        return self

    def question(self) -> str:
        """The question the run answers: `query`, or the last user message."""
        return self.query if self.query is not None else (self.messages or [])[-1].content

    def target_collections(self) -> list[str]:
        names = ([self.collection] if self.collection else []) + list(self.collections or [])
        return list(dict.fromkeys(n for n in names if n))


class Step(BaseModel):
    """One tool call of the trace."""

    turn: int
    thought: str | None = None
    tool: str
    arguments: dict[str, Any]
    observation: str | None = None
    error: bool = False
    truncated: bool = False
    duration_ms: float | None = None


class AgentUsage(BaseModel):
    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0


class AgentTimings(BaseModel):
    total_ms: float = 0.0
    model_ms: float = 0.0
    tools_ms: float = 0.0
    model_calls: int = 0


# ------------------------------------------------------------------ events


class ThoughtEvent(BaseModel):
    type: Literal["thought"] = "thought"
    turn: int
    text: str


class ToolCallEvent(BaseModel):
    type: Literal["tool_call"] = "tool_call"
    turn: int
    id: str
    tool: str
    arguments: dict[str, Any]


class ToolResultEvent(BaseModel):
    type: Literal["tool_result"] = "tool_result"
    turn: int
    id: str
    tool: str
    observation: str
    error: bool = False
    truncated: bool = False
    duration_ms: float


class ErrorEvent(BaseModel):
    type: Literal["error"] = "error"
    message: str
    code: str | None = None


class DoneEvent(BaseModel):
    """Always the last event of a run that did not raise."""

    type: Literal["done"] = "done"
    stopped_reason: StoppedReason
    answer: str | None = None
    message: str | None = Field(None, description="Why the run stopped, when it was not an answer.")
    invalid_citations: list[int] = Field(default_factory=list, description="Cited numbers that name no source.")
    protocol: Literal["native", "react"]
    usage: AgentUsage
    timings: AgentTimings


AgentEvent = Annotated[
    ThoughtEvent | ToolCallEvent | ToolResultEvent | DeltaEvent | CitationsEvent | ErrorEvent | DoneEvent,
    Field(discriminator="type"),
]


class AgentResponse(BaseModel):
    """The non-streaming answer: the events of a run, collected."""

    object: Literal["rag.agent.result"] = "rag.agent.result"
    answer: str | None
    citations: list[Citation]
    steps: list[Step]
    stopped_reason: StoppedReason
    message: str | None = None
    error: str | None = None
    invalid_citations: list[int] = Field(default_factory=list)
    protocol: Literal["native", "react"]
    usage: AgentUsage
    timings: AgentTimings
