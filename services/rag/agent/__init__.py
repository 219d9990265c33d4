"""The RAG agent: a LangGraph tool loop over the knowledge base, native tool calls or ReAct text."""

from inferag_protocol.agent import (
    AgentEvent,
    AgentRequest,
    AgentResponse,
    Citation,
    CitationsEvent,
    DeltaEvent,
    DoneEvent,
    ErrorEvent,
    Step,
    ThoughtEvent,
    ToolCallEvent,
    ToolResultEvent,
)

from .kb import KnowledgeBase
from .router import AgentRoutes, make_agent_router
from .serving import agent_response, collect_response, run_agent
from .tools import REGISTRY, AgentTool, ToolContext

__all__ = [
    "REGISTRY",
    "AgentEvent",
    "AgentRequest",
    "AgentResponse",
    "AgentRoutes",
    "AgentTool",
    "Citation",
    "CitationsEvent",
    "DeltaEvent",
    "DoneEvent",
    "ErrorEvent",
    "KnowledgeBase",
    "Step",
    "ThoughtEvent",
    "ToolCallEvent",
    "ToolContext",
    "ToolResultEvent",
    "agent_response",
    "collect_response",
    "make_agent_router",
    "run_agent",
]
