"""`/v1/responses` in-process (transformers engine, tiny random Llama): what the server sends is valid for
openai-python's own Responses types, and each request runs exactly the chat it stands for."""

from __future__ import annotations

import json
from typing import Any

import httpx
import jsonschema
import pytest
from openai.types.responses import Response, ResponseStreamEvent
from pydantic import TypeAdapter

from tests.api.test_generation_api import assert_openai_error
from tests.conftest import TINY

pytestmark = pytest.mark.asyncio(loop_scope="session")

EVENT = TypeAdapter(ResponseStreamEvent)
GREEDY = {"model": TINY, "temperature": 0, "max_output_tokens": 6}
WEATHER = {
    "type": "function",
    "name": "get_weather",
    "description": "The weather in a city.",
    "parameters": {
        "type": "object",
        "properties": {"city": {"type": "string", "enum": ["Paris", "Rome"]}},
        "required": ["city"],
    },
}


def sse_events(text: str) -> list[dict[str, Any]]:
    """Each `event: <type>` / `data: <json>` block of a stream, its name checked against its data."""
    events = []
    for block in filter(None, text.split("\n\n")):
        lines = dict(line.split(": ", 1) for line in block.splitlines() if ": " in line)
        data = json.loads(lines["data"])
        assert lines["event"] == data["type"]
        events.append(data)
    return events


async def create(client: httpx.AsyncClient, **body: Any) -> dict[str, Any]:
    r = await client.post("/v1/responses", json={**GREEDY, **body})
    assert r.status_code == 200, r.text
    Response.model_validate(r.json())  # the SDK's own type
    return dict(r.json())


async def chat(client: httpx.AsyncClient, messages: list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
    body = {"model": TINY, "messages": messages, "temperature": 0, "max_tokens": 6, **extra}
    r = await client.post("/v1/chat/completions", json=body)
    assert r.status_code == 200, r.text
    return dict(r.json())


def output_text(response: dict[str, Any]) -> str:
    return "".join(part["text"] for item in response["output"] if item["type"] == "message" for part in item["content"])


async def test_plain_response_is_the_chat_answer(tiny_client: httpx.AsyncClient) -> None:
    resp = await create(tiny_client, input="Hello there", instructions="Be brief.")
    same = await chat(
        tiny_client, [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hello there"}]
    )
    assert resp["object"] == "response" and resp["id"].startswith("resp_") and resp["model"] == TINY
    assert output_text(resp) == same["choices"][0]["message"]["content"]
    usage = resp["usage"]
    assert usage["input_tokens"] == same["usage"]["prompt_tokens"]
    assert usage["output_tokens"] == same["usage"]["completion_tokens"]
    assert usage["total_tokens"] == usage["input_tokens"] + usage["output_tokens"]
    if same["choices"][0]["finish_reason"] == "length":
        assert resp["status"] == "incomplete" and resp["incomplete_details"] == {"reason": "max_output_tokens"}
    else:
        assert resp["status"] == "completed"
    assert resp["instructions"] == "Be brief." and resp["max_output_tokens"] == 6


async def test_stream_events_are_typed_and_add_up(tiny_client: httpx.AsyncClient) -> None:
    whole = await create(tiny_client, input="Hello there")
    r = await tiny_client.post("/v1/responses", json={**GREEDY, "input": "Hello there", "stream": True})
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
    events = sse_events(r.text)
    for event in events:
        EVENT.validate_python(event)
    assert [e["sequence_number"] for e in events] == list(range(len(events)))
    kinds = [e["type"] for e in events]
    assert kinds[:4] == ["response.created", "response.in_progress", "response.output_item.added",
                         "response.content_part.added"]  # fmt: skip
    assert kinds[-4:-1] == ["response.output_text.done", "response.content_part.done", "response.output_item.done"]
    assert kinds[-1] == ("response.incomplete" if whole["status"] == "incomplete" else "response.completed")
    deltas = "".join(e["delta"] for e in events if e["type"] == "response.output_text.delta")
    done = next(e for e in events if e["type"] == "response.output_text.done")
    final = events[-1]["response"]
    assert deltas == done["text"] == output_text(final) == output_text(whole)
    assert final["usage"] == whole["usage"]
    item_id = events[2]["item"]["id"]
    assert {e["item_id"] for e in events if "item_id" in e} == {item_id} == {final["output"][0]["id"]}
    # the streamed response is stored like a whole one
    stored = (await tiny_client.get(f"/v1/responses/{final['id']}")).json()
    assert output_text(stored) == deltas


async def test_previous_response_id_continues_the_conversation(tiny_client: httpx.AsyncClient) -> None:
    first = await create(tiny_client, input="Hello there", instructions="Be brief.")
    second = await create(tiny_client, input="And then?", previous_response_id=first["id"])
    assert second["previous_response_id"] == first["id"]
    # The instructions are not carried over (OpenAI's rule); the first answer is.
    seen = [
        {"role": "user", "content": "Hello there"},
        {"role": "assistant", "content": output_text(first)},
        {"role": "user", "content": "And then?"},
    ]
    same = await chat(tiny_client, seen)
    assert second["usage"]["input_tokens"] == same["usage"]["prompt_tokens"]
    assert output_text(second) == same["choices"][0]["message"]["content"]


async def test_function_call_round_trip(tiny_client: httpx.AsyncClient) -> None:
    asked = {"role": "user", "content": "What is the weather in Paris?"}
    called = await create(tiny_client, input=[asked], tools=[WEATHER], tool_choice="required", max_output_tokens=40)
    calls = [item for item in called["output"] if item["type"] == "function_call"]
    assert len(calls) == 1 and calls[0]["name"] == "get_weather", called["output"]
    assert json.loads(calls[0]["arguments"])["city"] in {"Paris", "Rome"}
    assert called["tools"][0]["name"] == "get_weather" and called["tool_choice"] == "required"

    result = {"type": "function_call_output", "call_id": calls[0]["call_id"], "output": "18 C and sunny"}
    answered = await create(tiny_client, input=[asked, calls[0], result], tools=[WEATHER])
    assert answered["output"][0]["type"] == "message"
    # It ran the chat with the call and its result as the assistant and tool turns.
    call_id, function = calls[0]["call_id"], {"name": "get_weather", "arguments": calls[0]["arguments"]}
    turns = [
        asked,
        {"role": "assistant", "tool_calls": [{"id": call_id, "type": "function", "function": function}]},
        {"role": "tool", "tool_call_id": call_id, "content": "18 C and sunny"},
    ]
    chat_tools = [{"type": "function", "function": {k: v for k, v in WEATHER.items() if k != "type"}}]
    same = await chat(tiny_client, turns, tools=chat_tools)
    assert answered["usage"]["input_tokens"] == same["usage"]["prompt_tokens"]

    # The same call streamed: added, arguments delta and done, item done.
    r = await tiny_client.post(
        "/v1/responses",
        json={**GREEDY, "input": [asked], "tools": [WEATHER], "tool_choice": "required", "max_output_tokens": 40,
              "stream": True},
    )  # fmt: skip
    events = sse_events(r.text)
    for event in events:
        EVENT.validate_python(event)
    kinds = [e["type"] for e in events]
    assert "response.function_call_arguments.delta" in kinds and "response.function_call_arguments.done" in kinds
    done = next(e for e in events if e["type"] == "response.function_call_arguments.done")
    assert done["arguments"] == calls[0]["arguments"]
    assert events[-1]["response"]["output"][-1]["type"] == "function_call"


async def test_named_tool_choice(tiny_client: httpx.AsyncClient) -> None:
    resp = await create(
        tiny_client, input="Weather?", tools=[WEATHER], tool_choice={"type": "function", "name": "get_weather"},
        max_output_tokens=40,
    )  # fmt: skip
    assert resp["output"][-1]["type"] == "function_call"
    assert resp["tool_choice"] == {"type": "function", "name": "get_weather"}


async def test_text_format_json_schema_gives_valid_json(tiny_client: httpx.AsyncClient) -> None:
    schema = {
        "type": "object",
        "properties": {"answer": {"type": "string", "enum": ["yes", "no"]}, "sure": {"type": "boolean"}},
        "required": ["answer", "sure"],
        "additionalProperties": False,
    }
    fmt = {"type": "json_schema", "name": "verdict", "schema": schema, "strict": True}
    resp = await create(tiny_client, input="Is Paris in France?", text={"format": fmt}, max_output_tokens=40)
    jsonschema.validate(json.loads(output_text(resp)), schema)
    assert resp["text"]["format"]["name"] == "verdict"


async def test_store_get_delete(tiny_client: httpx.AsyncClient) -> None:
    resp = await create(tiny_client, input="Hello there")
    got = await tiny_client.get(f"/v1/responses/{resp['id']}")
    assert got.status_code == 200 and got.json() == resp
    deleted = await tiny_client.delete(f"/v1/responses/{resp['id']}")
    assert deleted.json() == {"id": resp["id"], "object": "response", "deleted": True}
    err = assert_openai_error(await tiny_client.get(f"/v1/responses/{resp['id']}"), 404)
    assert err["code"] == "response_not_found"
    assert_openai_error(await tiny_client.delete(f"/v1/responses/{resp['id']}"), 404)

    unstored = await create(tiny_client, input="Hello there", store=False)
    assert_openai_error(await tiny_client.get(f"/v1/responses/{unstored['id']}"), 404)
    r = await tiny_client.post("/v1/responses", json={**GREEDY, "input": "x", "previous_response_id": unstored["id"]})
    assert_openai_error(r, 404, param="previous_response_id")


@pytest.mark.parametrize(
    ("body", "status", "param"),
    [
        ({"input": []}, 400, "input"),
        ({"input": ""}, 400, "input"),
        ({"input": [{"type": "image_generation_call", "id": "x"}]}, 400, "input.items.0"),
        ({"input": [{"role": "user", "content": [{"type": "input_image", "image_url": "http://x"}]}]}, 400, "input"),
        ({"input": [{"type": "reasoning", "summary": []}]}, 400, "input"),
        ({"tools": [{"type": "web_search"}]}, 400, "tools.0"),
        ({"tools": [WEATHER], "tool_choice": {"type": "function", "name": "other"}}, 400, None),
        ({"tool_choice": "required"}, 400, None),
        ({"text": {"format": {"type": "json_schema", "name": "x"}}}, 400, "text.format.json_schema.schema"),
        ({"max_output_tokens": 10**6}, 400, "max_output_tokens"),
        ({"max_output_tokens": 0}, 400, "max_output_tokens"),
        ({"temperature": 3}, 400, "temperature"),
        ({"seed": 2**64}, 400, "seed"),
        ({"background": True}, 400, "background"),
        ({"truncation": "auto"}, 400, "truncation"),
        ({"metadata": {str(i): "v" for i in range(17)}}, 400, "metadata"),
        ({"model": "nope"}, 404, "model"),
        ({"previous_response_id": "resp_nope"}, 404, "previous_response_id"),
    ],
)
async def test_bad_responses_requests(
    tiny_client: httpx.AsyncClient, body: dict[str, Any], status: int, param: str | None
) -> None:
    r = await tiny_client.post("/v1/responses", json={**GREEDY, "input": "Hello", **body})
    err = assert_openai_error(r, status)
    if param is not None:
        assert (err["param"] or "").startswith(param), err


async def test_context_overflow_names_the_input(tiny_client: httpx.AsyncClient) -> None:
    r = await tiny_client.post("/v1/responses", json={**GREEDY, "input": "word " * 2000})
    err = assert_openai_error(r, 400, param="input")
    assert err["code"] == "context_length_exceeded"
