"""`POST /rag/agent`: only turns `run_agent` into HTTP (JSON, or SSE events when `stream`)."""

from __future__ import annotations

import contextlib
import inspect
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from langchain_core.language_models import BaseChatModel

from inferag_protocol.agent import AgentEvent, AgentRequest, AgentResponse, ErrorEvent
from services.common.errors import error_for
from services.common.http import cancel_on_disconnect, peeked
from services.common.protocol import error_responses, sse_response_doc
from services.common.sse import sse_event, sse_response

from .kb import KnowledgeBase
from .serving import agent_response, run_agent

GetKB = Callable[[Request], KnowledgeBase | Awaitable[KnowledgeBase]]
GetChatModel = Callable[[Request], BaseChatModel | Awaitable[BaseChatModel]]

_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: sse_response_doc("The answer and trace, or with `stream: true` server-sent events, one JSON object each."),
    **error_responses(
        *(400, 401, 403, 404, 409, 413, 429, 503),
        e400="Invalid request (OpenAI error body), e.g. an unknown tool.",
        e429="Rate limited, or the chat model is over capacity.",
        e503="The chat model or knowledge base is unavailable.",
    ),
}


class AgentRoutes:
    """The route's dependencies, resolved per request from the app (the KB and the chat model)."""

    def __init__(
        self,
        get_kb: GetKB,
        get_chat_model: GetChatModel,
        **options: Any,
    ):
        """`options` go to `run_agent` (native_tools, time_limit_s, max_observation_chars, tool_time_limit_s,
        context_mode, context_tokens)."""
        self.get_kb, self.get_chat_model = get_kb, get_chat_model
        self.options: dict[str, Any] = options

    async def agent(self, body: AgentRequest, request: Request) -> Response:
        """Answer with tools (search, documents, calculator); `stream: true` sends typed events as SSE."""
        kb = await _resolve(self.get_kb(request))
        model = await _resolve(self.get_chat_model(request))
        if body.stream:
            # The first event is pulled before the response starts, so request errors (and chat model
            # errors before it) still come back as HTTP errors; a client gone meanwhile cancels the run.
            events = await cancel_on_disconnect(request, peeked(run_agent(body, kb, model, **self.options)))
            return sse_response(_encoded(events))
        result = await cancel_on_disconnect(request, agent_response(body, kb, model, **self.options))
        return JSONResponse(result.model_dump(exclude_none=True))


def make_agent_router(get_kb: GetKB, get_chat_model: GetChatModel, **options: Any) -> APIRouter:
    """A router with `POST /rag/agent`; `options` as for `run_agent` (`native_tools`: the engine parses tool
    calls, so protocol auto → native)."""
    routes = AgentRoutes(get_kb, get_chat_model, **options)
    router = APIRouter(tags=["rag"])
    router.add_api_route(
        "/rag/agent", routes.agent, methods=["POST"], response_model=AgentResponse, responses=_RESPONSES
    )
    return router


async def _resolve(value: Any) -> Any:
    return await value if inspect.isawaitable(value) else value


async def _encoded(events: AsyncGenerator[AgentEvent, None]) -> AsyncIterator[str]:
    """Typed events (`event: <type>`, JSON data with `type`), like /rag/query; a failure after the first
    byte is an `error` event, then the end."""
    async with contextlib.aclosing(events):
        try:
            async for event in events:
                yield sse_event(event.type, event)
        except Exception as exc:
            error = error_for(exc)[1]["error"]
            yield sse_event("error", ErrorEvent(message=error["message"], code=error["code"] or error["type"]))
