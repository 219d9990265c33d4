"""`POST /rag/agent` through a small FastAPI app in-process."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest
from fastapi import FastAPI, Request

from services.common.errors import install_error_handlers
from services.rag.agent import make_agent_router
from tests.unit.test_agent_doubles import MemoryKB, ScriptedChatModel, react_action


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


BODY = {"collection": "geo", "query": "Where was the designer of the Eiffel Tower born?", "top_k": 1}
SCRIPT = [
    react_action("search_knowledge_base", "Eiffel Tower designed"),
    react_action("calculator", "1889 - 1832"),
    "Thought: enough\nFinal Answer: Gustave Eiffel's company [1], he was 57 in 1889.",
]


@pytest.mark.asyncio
async def test_stream_sends_typed_events_in_order() -> None:
    response = await post(build(ScriptedChatModel(replies=list(SCRIPT))), {**BODY, "stream": True})
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/event-stream")
    events = sse_events(response.text)
    kinds = [e["type"] for e in events]
    assert kinds[:7] == ["thought", "tool_call", "tool_result", "thought", "tool_call", "tool_result", "thought"]
    assert set(kinds[7:-2]) == {"delta"} and kinds[-2:] == ["citations", "done"]
    assert events[1] == {
        "type": "tool_call",
        "turn": 1,
        "id": events[1]["id"],
        "tool": "search_knowledge_base",
        "arguments": {"query": "Eiffel Tower designed"},
    }
    assert events[5]["observation"] == "1889 - 1832 = 57"
    assert [c["number"] for c in events[-2]["citations"]] == [1]
    assert events[-1]["stopped_reason"] == "answer"
    assert "".join(e["text"] for e in events if e["type"] == "delta") == events[-1]["answer"]


@pytest.mark.asyncio
async def test_json_answer_with_trace() -> None:
    response = await post(build(ScriptedChatModel(replies=list(SCRIPT))), BODY)
    assert response.status_code == 200
    body = response.json()
    assert body["stopped_reason"] == "answer" and body["answer"].startswith("Gustave")
    assert [s["tool"] for s in body["steps"]] == ["search_knowledge_base", "calculator"]
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
    app = build(ScriptedChatModel(replies=["Final Answer: x"], fail_on_call=1))
    response = await post(app, {**BODY, "stream": True})
    assert response.status_code == 503
    assert "connection refused" in response.json()["error"]["message"]


@pytest.mark.asyncio
async def test_chat_model_failure_mid_stream_is_an_error_event() -> None:
    app = build(ScriptedChatModel(replies=list(SCRIPT), fail_on_call=2))
    response = await post(app, {**BODY, "stream": True})
    assert response.status_code == 200
    events = sse_events(response.text)
    assert [e["type"] for e in events] == ["thought", "tool_call", "tool_result", "error"]
    assert events[-1]["code"] == "upstream_unavailable" and "connection refused" in events[-1]["message"]


@pytest.mark.asyncio
async def test_loop_bounds_reach_the_client() -> None:
    looping = ScriptedChatModel(replies=[react_action("search_knowledge_base", "Eiffel")], repeat_last=True)
    response = await post(build(looping), {**BODY, "max_steps": 2, "stream": True})
    events = sse_events(response.text)
    assert events[-1]["type"] == "done" and events[-1]["stopped_reason"] == "max_steps"
    assert [e["type"] for e in events].count("tool_result") == 2
