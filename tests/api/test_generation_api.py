"""The generation API in-process (transformers engine, tiny random Llama): shapes and the bad-input catalogue."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import TINY

pytestmark = pytest.mark.asyncio(loop_scope="session")

USER = [{"role": "user", "content": "Hello there"}]


def assert_openai_error(resp: httpx.Response, status: int, param: str | None = None) -> dict[str, Any]:
    assert resp.status_code == status, resp.text
    body = resp.json()
    assert set(body) == {"error"}, body
    err = body["error"]
    assert set(err) == {"message", "type", "param", "code"}
    assert err["message"]
    if param is not None:
        assert err["param"] == param, err
    return dict(err)


async def test_chat_completion_shape(tiny_client: httpx.AsyncClient) -> None:
    r = await tiny_client.post(
        "/v1/chat/completions", json={"model": TINY, "messages": USER, "max_tokens": 5, "temperature": 0}
    )
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["object"] == "chat.completion"
    assert body["choices"][0]["message"]["role"] == "assistant"
    assert body["choices"][0]["finish_reason"] in {"stop", "length"}
    usage = body["usage"]
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
    assert 1 <= usage["completion_tokens"] <= 5


async def test_v1_chat_alias_same_as_chat_completions(tiny_client: httpx.AsyncClient) -> None:
    req = {"model": TINY, "messages": USER, "max_tokens": 6, "temperature": 0}
    a = (await tiny_client.post("/v1/chat/completions", json=req)).json()
    b = (await tiny_client.post("/v1/chat", json=req)).json()
    assert a["choices"][0]["message"] == b["choices"][0]["message"]
    assert a["usage"] == b["usage"]


async def test_n_and_seed(tiny_client: httpx.AsyncClient) -> None:
    req = {"model": TINY, "messages": USER, "max_tokens": 8, "n": 3, "seed": 7, "temperature": 1.0}
    a = (await tiny_client.post("/v1/chat/completions", json=req)).json()
    b = (await tiny_client.post("/v1/chat/completions", json=req)).json()
    assert [c["index"] for c in a["choices"]] == [0, 1, 2]
    assert [c["message"]["content"] for c in a["choices"]] == [c["message"]["content"] for c in b["choices"]]
    other = (await tiny_client.post("/v1/chat/completions", json={**req, "seed": 8})).json()
    assert [c["message"]["content"] for c in other["choices"]] != [c["message"]["content"] for c in a["choices"]]
    assert a["usage"]["completion_tokens"] <= 3 * 8


async def test_logprobs(tiny_client: httpx.AsyncClient) -> None:
    r = await tiny_client.post(
        "/v1/chat/completions",
        json={"model": TINY, "messages": USER, "max_tokens": 4, "temperature": 0, "logprobs": True, "top_logprobs": 3},
    )
    content = r.json()["choices"][0]["logprobs"]["content"]
    assert 1 <= len(content) <= 4
    for item in content:
        assert len(item["top_logprobs"]) == 3
        # greedy: the sampled token is the most likely one
        assert item["logprob"] == pytest.approx(item["top_logprobs"][0]["logprob"], abs=1e-5)
        assert item["logprob"] <= 0


async def test_stream_chunks_usage_and_done(tiny_client: httpx.AsyncClient) -> None:
    req = {
        "model": TINY, "messages": USER, "max_tokens": 5, "temperature": 0,
        "stream": True, "stream_options": {"include_usage": True},
    }  # fmt: skip
    events = []
    async with tiny_client.stream("POST", "/v1/chat/completions", json=req) as r:
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        async for line in r.aiter_lines():
            if line.startswith("data: "):
                events.append(line[6:])
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["completion_tokens"] >= 1
    finals = [c for c in chunks if c["choices"] and c["choices"][0].get("finish_reason")]
    assert len(finals) == 1
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks if c["choices"])
    full = (await tiny_client.post("/v1/chat/completions", json={**req, "stream": False})).json()
    assert text == full["choices"][0]["message"]["content"]


async def test_completions_and_echo(tiny_client: httpx.AsyncClient) -> None:
    r = await tiny_client.post(
        "/v1/completions", json={"model": TINY, "prompt": "Once upon a time", "max_tokens": 4, "echo": True}
    )
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["object"] == "text_completion"
    assert body["choices"][0]["text"].startswith("Once upon a time")


async def test_models(tiny_client: httpx.AsyncClient) -> None:
    body = (await tiny_client.get("/v1/models")).json()
    assert body["object"] == "list"
    card = body["data"][0]
    assert card["id"] == TINY and card["max_model_len"] == 512 and card["engine"] == "transformers"


async def test_health_ready_metrics(tiny_client: httpx.AsyncClient) -> None:
    assert (await tiny_client.get("/health")).json() == {"status": "ok"}
    assert (await tiny_client.get("/ready")).status_code == 200
    text = (await tiny_client.get("/metrics")).text
    for name in (
        "inferag_generation_requests_total",
        "inferag_generation_time_to_first_token_seconds",
        "inferag_generation_tokens_total",
        "inferag_generation_requests_running",
        "inferag_generation_requests_waiting",
        "inferag_http_requests_total",
    ):
        assert name in text, name


async def test_json_object_response_format(tiny_client: httpx.AsyncClient) -> None:
    r = await tiny_client.post(
        "/v1/chat/completions",
        json={
            "model": TINY, "messages": USER, "max_tokens": 200, "temperature": 0,
            "response_format": {
                "type": "json_schema",
                "json_schema": {"name": "x", "schema": {
                    "type": "object", "properties": {"a": {"type": "boolean"}, "b": {"enum": ["x", "y"]}},
                    "required": ["a", "b"],
                    "additionalProperties": False,
                }},
            },
        },
    )  # fmt: skip
    assert r.status_code == 200, r.text
    choice = r.json()["choices"][0]
    assert choice["finish_reason"] == "stop"
    data = json.loads(choice["message"]["content"])
    assert isinstance(data["a"], bool) and data["b"] in {"x", "y"}


async def test_forced_tool_call(tiny_client: httpx.AsyncClient) -> None:
    tool = {
        "type": "function",
        "function": {
            "name": "get_weather",
            "parameters": {
                "type": "object", "properties": {"city": {"type": "string", "maxLength": 12}},
                "required": ["city"], "additionalProperties": False,
            },
        },
    }  # fmt: skip
    r = await tiny_client.post(
        "/v1/chat/completions",
        json={
            "model": TINY, "messages": USER, "max_tokens": 120, "temperature": 0, "tools": [tool],
            "tool_choice": {"type": "function", "function": {"name": "get_weather"}},
        },
    )  # fmt: skip
    assert r.status_code == 200, r.text
    choice = r.json()["choices"][0]
    assert choice["finish_reason"] == "tool_calls"
    call = choice["message"]["tool_calls"][0]
    assert call["function"]["name"] == "get_weather"
    assert "city" in json.loads(call["function"]["arguments"])


# ---------------------------------------------------------------- bad input

BAD_REQUESTS = [
    ("empty messages", {"messages": []}, "messages"),
    ("bad role", {"messages": [{"role": "wizard", "content": "hi"}]}, None),
    ("no content", {"messages": [{"role": "user"}]}, None),
    ("temperature", {"temperature": 5}, "temperature"),
    ("negative temperature", {"temperature": -0.1}, "temperature"),
    ("top_p zero", {"top_p": 0}, "top_p"),
    ("max_tokens zero", {"max_tokens": 0}, "max_tokens"),
    ("n zero", {"n": 0}, "n"),
    ("presence penalty", {"presence_penalty": 3}, "presence_penalty"),
    ("top_logprobs without logprobs", {"top_logprobs": 3}, None),
    ("top_logprobs too many", {"logprobs": True, "top_logprobs": 50}, "top_logprobs"),
    ("tool_choice unknown", {"tools": [], "tool_choice": {"type": "function", "function": {"name": "x"}}}, None),
    ("max_tokens string", {"max_tokens": "many"}, "max_tokens"),
]


@pytest.mark.parametrize(("name", "patch", "param"), BAD_REQUESTS, ids=[b[0] for b in BAD_REQUESTS])
async def test_bad_chat_requests(
    tiny_client: httpx.AsyncClient, name: str, patch: dict[str, Any], param: str | None
) -> None:
    req = {"model": TINY, "messages": USER, **patch}
    err = assert_openai_error(await tiny_client.post("/v1/chat/completions", json=req), 400, param)
    assert err["type"] == "invalid_request_error"


async def test_unknown_model_404(tiny_client: httpx.AsyncClient) -> None:
    r = await tiny_client.post("/v1/chat/completions", json={"model": "gpt-17", "messages": USER})
    err = assert_openai_error(r, 404, "model")
    assert err["code"] == "model_not_found"
    r = await tiny_client.post("/v1/completions", json={"model": "gpt-17", "prompt": "x"})
    assert_openai_error(r, 404, "model")


async def test_max_tokens_beyond_context(tiny_client: httpx.AsyncClient) -> None:
    r = await tiny_client.post("/v1/chat/completions", json={"model": TINY, "messages": USER, "max_tokens": 100_000})
    err = assert_openai_error(r, 400, "max_tokens")
    assert err["code"] == "context_length_exceeded"
    long_prompt = [{"role": "user", "content": "word " * 2000}]
    r = await tiny_client.post("/v1/chat/completions", json={"model": TINY, "messages": long_prompt})
    assert assert_openai_error(r, 400, "messages")["code"] == "context_length_exceeded"


async def test_malformed_json(tiny_client: httpx.AsyncClient) -> None:
    r = await tiny_client.post(
        "/v1/chat/completions", content=b'{"model": "x", "messages": [', headers={"content-type": "application/json"}
    )
    assert assert_openai_error(r, 400)["code"] == "invalid_json"


async def test_missing_body_and_wrong_types(tiny_client: httpx.AsyncClient) -> None:
    assert_openai_error(await tiny_client.post("/v1/chat/completions", json={}), 400)
    assert_openai_error(await tiny_client.post("/v1/chat/completions", json=[1, 2]), 400)
    assert_openai_error(await tiny_client.post("/v1/completions", json={"model": TINY, "prompt": ""}), 400)
    r = await tiny_client.post("/v1/completions", json={"model": TINY, "prompt": [10**9]})
    assert_openai_error(r, 400, "prompt")


async def test_unknown_route_and_method(tiny_client: httpx.AsyncClient) -> None:
    assert_openai_error(await tiny_client.get("/v1/nothing"), 404)
    assert_openai_error(await tiny_client.get("/v1/chat/completions"), 405)


async def test_api_key_required_when_configured(tiny_model_dir: Path) -> None:
    from services.generation.app import build_app
    from tests.conftest import tiny_settings

    app = build_app(tiny_settings(tiny_model_dir, api_key="s3cret"))
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            assert (await client.get("/health")).status_code == 200
            err = assert_openai_error(await client.get("/v1/models"), 401)
            assert err["type"] == "authentication_error"
            wrong = {"Authorization": "Bearer nope"}
            assert_openai_error(await client.post("/v1/chat/completions", json={}, headers=wrong), 401)
            for _ in range(300):
                if (await client.get("/ready")).status_code == 200:
                    break
                await asyncio.sleep(0.1)
            ok = await client.get("/v1/models", headers={"Authorization": "Bearer s3cret"})
            assert ok.status_code == 200
