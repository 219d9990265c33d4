"""`POST /rag/agent` through a small FastAPI app in-process."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from typing import Any

import httpx
import pytest
from fastapi import FastAPI, Request

from services.common.errors import install_error_handlers
from services.rag.agent import make_agent_router
from tests.unit.test_agent_doubles import MemoryKB, ScriptedChatModel, react_action, tool_call


def build(model: ScriptedChatModel, **options: Any) -> FastAPI:
    app = FastAPI()
    install_error_handlers(app)
    app.state.kb, app.state.model = MemoryKB(), model

    async def get_model(request: Request) -> ScriptedChatModel:  # an async getter works too
        model: ScriptedChatModel = request.app.state.model
        return model

    app.include_router(make_agent_router(lambda request: request.app.state.kb, get_model, **options))
    return app


async def post(app: FastAPI, body: dict[str, Any]) -> httpx.Response:
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test") as client:
        return await client.post("/rag/agent", json=body)


def sse_events(text: str) -> list[Any]:
    data = [line[len("data: ") :] for line in text.splitlines() if line.startswith("data: ")]
    assert data[-1] != "[DONE]" and "event: " in text
    return [json.loads(d) for d in data]


BODY = {"collection": "geo", "query": "How old was the designer of the Eiffel Tower when it was completed?", "top_k": 1}
SCRIPT = [
    react_action("search_knowledge_base", "Gustave Eiffel born"),
    react_action("calculator", "1889 - 1832"),
    "Thought: enough\nFinal Answer: Gustave Eiffel's company built it in 1889 [1]; he was born in 1832 [2], so he "
    "was 57.",
]


@pytest.mark.asyncio
async def test_stream_sends_typed_events_in_order() -> None:
    response = await post(build(ScriptedChatModel(replies=list(SCRIPT))), {**BODY, "stream": True})
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/event-stream")
    events = sse_events(response.text)
    kinds = [e["type"] for e in events]
    assert kinds == ["tool_call", "tool_result"] + ["thought", "tool_call", "tool_result"] * 2 + [
        "thought", "delta", "citations", "done"
    ]  # fmt: skip
    assert events[0] == {
        "type": "tool_call",
        "turn": 0,
        "id": events[0]["id"],
        "tool": "search_knowledge_base",
        "arguments": {"query": BODY["query"]},
    }
    assert events[7]["observation"] == "1889 - 1832 = 57"
    citations = events[-2]["citations"]
    assert [c["number"] for c in citations] == [1, 2]
    assert [c["quote"]["text"] for c in citations] == [
        "The Eiffel Tower in Paris was designed by the company of Gustave Eiffel and completed in 1889.",
        "Gustave Eiffel, the engineer, was born in Dijon in 1832.",
    ]
    assert events[-1]["stopped_reason"] == "answer"
    assert "".join(e["text"] for e in events if e["type"] == "delta") == events[-1]["answer"]


@pytest.mark.asyncio
async def test_json_answer_with_trace() -> None:
    response = await post(build(ScriptedChatModel(replies=list(SCRIPT))), BODY)
    assert response.status_code == 200
    body = response.json()
    assert body["stopped_reason"] == "answer" and body["answer"].startswith("Gustave")
    assert [s["tool"] for s in body["steps"]] == ["search_knowledge_base", "search_knowledge_base", "calculator"]
    assert body["citations"][0]["doc_id"] == "eiffel" and body["timings"]["model_calls"] == 3


@pytest.mark.asyncio
@pytest.mark.parametrize("stream", [False, True])
async def test_request_errors_are_openai_error_bodies(stream: bool) -> None:
    app = build(ScriptedChatModel(replies=[]))
    response = await post(app, {**BODY, "tools": ["calculator", "shell"], "stream": stream})
    assert response.status_code == 400
    assert response.json()["error"]["param"] == "tools"
    response = await post(app, {"collection": "geo", "stream": stream})
    assert response.status_code == 400 and response.json()["error"]["type"] == "invalid_request_error"


@pytest.mark.asyncio
async def test_chat_model_failure_before_the_first_event_is_an_http_error() -> None:
    # native: the first event comes after the first (forced) model turn
    app = build(ScriptedChatModel(replies=["x"], fail_on_call=1))
    response = await post(app, {**BODY, "stream": True, "protocol": "native"})
    assert response.status_code == 503
    assert "connection refused" in response.json()["error"]["message"]


@pytest.mark.asyncio
async def test_chat_model_failure_mid_stream_is_an_error_event() -> None:
    # ReAct: the agent's own search is streamed before the model's first turn, which fails
    app = build(ScriptedChatModel(replies=list(SCRIPT), fail_on_call=1))
    response = await post(app, {**BODY, "stream": True})
    assert response.status_code == 200
    events = sse_events(response.text)
    assert [e["type"] for e in events] == ["tool_call", "tool_result", "error"]
    assert events[-1]["code"] == "upstream_unavailable" and "connection refused" in events[-1]["message"]


@pytest.mark.asyncio
async def test_loop_bounds_reach_the_client() -> None:
    looping = ScriptedChatModel(replies=[react_action("search_knowledge_base", f"Eiffel {n}") for n in range(3)])
    response = await post(build(looping), {**BODY, "max_steps": 2, "stream": True})
    events = sse_events(response.text)
    assert events[-1]["type"] == "done" and events[-1]["stopped_reason"] == "max_steps"
    assert [e["type"] for e in events].count("tool_result") == 3  # the agent's own search and the model's two


@pytest.mark.asyncio
async def test_a_client_gone_during_the_first_model_turn_cancels_it() -> None:
    """native: the first event waits for the first model turn; a disconnect meanwhile must cancel it."""
    model = ScriptedChatModel(replies=[tool_call("search_knowledge_base", {"query": "Eiffel"})], delay_s=30)
    app = build(model)
    body = json.dumps({**BODY, "stream": True, "protocol": "native"}).encode()
    received = False

    async def receive() -> dict[str, Any]:
        nonlocal received
        if not received:
            received = True
            return {"type": "http.request", "body": body, "more_body": False}
        await asyncio.sleep(0.2)  # the client leaves while the model is still writing
        return {"type": "http.disconnect"}

    sent: list[dict[str, Any]] = []

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST", "scheme": "http",
             "path": "/rag/agent", "raw_path": b"/rag/agent", "query_string": b"", "root_path": "",
             "headers": [(b"content-type", b"application/json")], "client": ("t", 1), "server": ("t", 80)}  # fmt: skip
    started = time.perf_counter()
    with contextlib.suppress(asyncio.CancelledError):
        await asyncio.wait_for(app(scope, receive, send), timeout=10)
    assert time.perf_counter() - started < 5
    assert model.cancelled == [1]
