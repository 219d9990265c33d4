"""Runs an agent request: checks it, starts the graph, and turns its progress into typed events.

`run_agent` is the one path; the router streams its events as SSE and
`agent_response` collects them for a non-streaming answer.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncGenerator, AsyncIterator
from typing import Any, Literal

from langchain_core.language_models import BaseChatModel, LanguageModelInput
from langchain_core.messages import AIMessage, BaseMessage, HumanMessage, SystemMessage
from langchain_core.runnables import Runnable, RunnableConfig

from inferag_protocol.agent import (
    AgentEvent,
    AgentRequest,
    AgentResponse,
    AgentTimings,
    AgentUsage,
    CitationsEvent,
    DeltaEvent,
    DoneEvent,
    ErrorEvent,
    Step,
    ThoughtEvent,
    ToolCallEvent,
    ToolResultEvent,
)
from inferag_protocol.rag import ContextMode
from services.common.errors import InvalidRequest

from . import react
from .graph import AGENT_GRAPH, NATIVE_PROMPT, AgentState, RunContext
from .kb import KnowledgeBase
from .sources import SourceBook
from .tools import REGISTRY, AgentTool, ToolContext
from .tools.calculator import asks_to_compute


def select_tools(names: list[str] | None) -> dict[str, AgentTool]:
    """The request's tools, in registry order; InvalidRequest (param `tools`) for unknown names."""
    if names is None:
        return dict(REGISTRY)
    unknown = [n for n in names if n not in REGISTRY]
    if unknown:
        raise InvalidRequest(
            f"Unknown tool(s): {', '.join(unknown)}. Available: {', '.join(REGISTRY)}.",
            param="tools",
            code="invalid_value",
        )
    if not names:
        raise InvalidRequest("'tools' must name at least one tool.", param="tools", code="invalid_value")
    return {name: tool for name, tool in REGISTRY.items() if name in names}


def choose_protocol(requested: str, native_tools: bool) -> Literal["native", "react"]:
    """auto → native when the engine is known to parse tool calls (`native_tools`), else the ReAct text protocol."""
    if requested == "auto":
        return "native" if native_tools else "react"
    return "native" if requested == "native" else "react"


def initial_messages(request: AgentRequest, tools: dict[str, AgentTool], protocol: str) -> list[BaseMessage]:
    collections = request.target_collections()
    if protocol == "react":
        prompt = react.system_prompt(tools, collections)
    else:
        prompt = f"{NATIVE_PROMPT}\nSearches cover the collection(s): {', '.join(collections)}."
    conversation: list[BaseMessage] = []
    extra: list[str] = []
    if request.query is not None:
        conversation.append(HumanMessage(content=request.query))
    for message in request.messages or []:
        if message.role == "system":
            extra.append(message.content)  # one system message: several break some chat templates
        elif message.role == "user":
            conversation.append(HumanMessage(content=message.content))
        else:
            conversation.append(AIMessage(content=message.content))
    if extra:
        prompt += "\n\n" + "\n\n".join(extra)
    return [SystemMessage(content=prompt), *conversation]


async def run_agent(
    request: AgentRequest,
    kb: KnowledgeBase,
    chat_model: BaseChatModel,
    *,
    time_limit_s: float = 60.0,
    max_observation_chars: int = 4000,
    native_tools: bool = False,
    tool_time_limit_s: float = 10.0,
    context_mode: ContextMode = "chunks",
    context_tokens: int = 300,
) -> AsyncGenerator[AgentEvent, None]:
    """Run the agent and yield its events; the last one is `done` unless the chat model fails.

    Request errors raise before the first event; chat model failures raise domain
    errors (UpstreamUnavailable, Overloaded, ...); everything else ends in `done`.
    """
    tools = select_tools(request.tools)
    protocol = choose_protocol(request.protocol, native_tools)
    compute = "calculator" in tools and asks_to_compute(request.question())
    model: Runnable[LanguageModelInput, BaseMessage] = chat_model
    first_model: Runnable[LanguageModelInput, BaseMessage] | None = None
    compute_model: Runnable[LanguageModelInput, BaseMessage] | None = None
    if protocol == "native":
        schemas = [t.openai_schema() for t in tools.values()]
        try:
            model = chat_model.bind_tools(schemas)
            if react.SEARCH in tools:  # the first turn must search: a grammar-constrained forced call
                first_model = chat_model.bind_tools(schemas, tool_choice=react.SEARCH)
            if compute:  # a computed number is asked: the turn after the search is forced to compute
                compute_model = chat_model.bind_tools(schemas, tool_choice="calculator")
        except NotImplementedError:
            raise InvalidRequest(
                "protocol 'native' needs a chat model with tool calling; use 'react'.", param="protocol"
            ) from None
    kwargs: dict[str, Any] = {}
    if request.max_tokens is not None:
        kwargs["max_tokens"] = request.max_tokens
    if request.temperature is not None:
        kwargs["temperature"] = request.temperature
    sources = SourceBook()
    tool_context = ToolContext(
        kb, request.target_collections(), request.top_k, sources, max_observation_chars, context_mode, context_tokens
    )
    ctx = RunContext(
        model=model,
        protocol=protocol,
        tools=tools,
        tool_context=tool_context,
        max_steps=request.max_steps,
        max_observation_chars=max_observation_chars,
        question=request.question(),
        first_model=first_model,
        compute=compute,
        compute_model=compute_model,
        tool_time_limit_s=tool_time_limit_s,
        model_kwargs=kwargs,
    )
    state: AgentState = {
        "messages": initial_messages(request, tools, protocol),  # type: ignore[typeddict-item]
        "turn": 0,
        "steps": 0,
        "failures": 0,
        "checks": 0,
        "pending": [],
        "outcome": None,
    }
    started = time.perf_counter()
    deadline = asyncio.get_running_loop().time() + time_limit_s
    # Supersteps: a model and a tools node per step, a correction or two, the last reply.
    config: RunnableConfig = {"recursion_limit": 3 * request.max_steps + 10}
    parts = AGENT_GRAPH.astream(state, config, context=ctx, stream_mode=["custom", "values"], version="v2")
    outcome: str | None = None
    try:
        while True:
            try:
                async with asyncio.timeout_at(deadline) as limit:
                    part = await anext(parts)
            except StopAsyncIteration:
                break
            except TimeoutError:
                if not limit.expired():
                    raise
                outcome = "time_limit"
                break
            if part["type"] == "values":
                outcome = part["data"]["outcome"] or outcome
            elif part["type"] == "custom":
                yield part["data"]
    finally:
        aclose = getattr(parts, "aclose", None)  # a generator, typed as an iterator
        if aclose is not None:
            await aclose()

    ctx.timings.total_ms = round((time.perf_counter() - started) * 1000, 3)
    ctx.timings.model_ms = round(ctx.timings.model_ms, 3)
    ctx.timings.tools_ms = round(ctx.timings.tools_ms, 3)
    done: dict[str, Any] = {"protocol": protocol, "usage": ctx.usage, "timings": ctx.timings}
    if outcome in ("answer", "unsupported") and ctx.answer is not None:
        citations, invalid = await sources.cite(ctx.answer, kb.embed)
        yield CitationsEvent(citations=citations)
        yield DoneEvent(stopped_reason=outcome, answer=ctx.answer, invalid_citations=invalid, **done)
    elif outcome == "max_steps":
        message = f"Stopped after max_steps={request.max_steps} tool steps: the model still had no final answer."
        yield DoneEvent(stopped_reason="max_steps", message=message, **done)
    elif outcome == "time_limit":
        message = f"Stopped at the {time_limit_s:g} s time limit before a final answer."
        yield DoneEvent(stopped_reason="time_limit", message=message, **done)
    else:
        message = ctx.error or "The agent stopped without an answer."
        if ctx.error is None:
            yield ErrorEvent(message=message, code="agent_error")
        yield DoneEvent(stopped_reason="error", message=message, **done)


async def collect_response(events: AsyncIterator[AgentEvent]) -> AgentResponse:
    """The events of a run as one response (the trace has one step per tool call)."""
    thoughts: dict[int, str] = {}
    steps: dict[str, Step] = {}
    answer: list[str] = []
    citations: CitationsEvent | None = None
    error: str | None = None
    done: DoneEvent | None = None
    async for event in events:
        if isinstance(event, ThoughtEvent):
            thoughts[event.turn] = event.text
        elif isinstance(event, ToolCallEvent):
            steps[event.id] = Step(
                turn=event.turn, thought=thoughts.get(event.turn), tool=event.tool, arguments=event.arguments
            )
        elif isinstance(event, ToolResultEvent) and event.id in steps:
            step = steps[event.id]
            step.observation, step.error = event.observation, event.error
            step.truncated, step.duration_ms = event.truncated, event.duration_ms
        elif isinstance(event, DeltaEvent):
            answer.append(event.text)
        elif isinstance(event, CitationsEvent):
            citations = event
        elif isinstance(event, ErrorEvent):
            error = event.message
        elif isinstance(event, DoneEvent):
            done = event
    if done is None:
        raise RuntimeError("the agent's events ended without 'done'")
    return AgentResponse(
        answer=done.answer if done.stopped_reason in ("answer", "unsupported") else None,
        citations=citations.citations if citations else [],
        steps=list(steps.values()),
        stopped_reason=done.stopped_reason,
        message=done.message,
        error=error,
        invalid_citations=done.invalid_citations,
        protocol=done.protocol,
        usage=done.usage if done.usage else AgentUsage(),
        timings=done.timings if done.timings else AgentTimings(),
    )


async def agent_response(
    request: AgentRequest, kb: KnowledgeBase, chat_model: BaseChatModel, **options: Any
) -> AgentResponse:
    """Run the agent to the end (`options` as for `run_agent`)."""
    events = run_agent(request, kb, chat_model, **options)
    async with contextlib.aclosing(events):
        return await collect_response(events)
