"""INFERAG_GEN_REASONING_PARSER wired through the real transformers engine (tiny random Llama).

With `deepseek_r1` the template is taken to have opened `<think>`, so an output that never closes it is
all reasoning: the same greedy text the parser-off service gives as content must come back as
`reasoning` (chat, its stream, and the Responses `reasoning` item). The parser itself, on output that
does hold the tags, is tested in tests/unit/test_reasoning.py.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
import pytest_asyncio

from services.generation.app import build_app
from tests.conftest import TINY, tiny_settings

pytestmark = pytest.mark.asyncio(loop_scope="session")

BODY = {"model": TINY, "messages": [{"role": "user", "content": "Hello there"}], "max_tokens": 6, "temperature": 0}


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def thinking_client(tiny_model_dir: Path) -> AsyncIterator[httpx.AsyncClient]:
    app = build_app(tiny_settings(tiny_model_dir, reasoning_parser="deepseek_r1"))
    client = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t", timeout=60)
    async with app.router.lifespan_context(app), client as c:
        for _ in range(600):
            if (await c.get("/ready")).status_code == 200:
                break
            await asyncio.sleep(0.1)
        yield c


async def test_reasoning_on_the_real_engine(tiny_client: httpx.AsyncClient, thinking_client: httpx.AsyncClient) -> None:
    plain = (await tiny_client.post("/v1/chat/completions", json=BODY)).json()["choices"][0]["message"]
    assert plain["content"] and "reasoning" not in plain
    thought = (await thinking_client.post("/v1/chat/completions", json=BODY)).json()["choices"][0]["message"]
    assert thought["reasoning"] == thought["reasoning_content"] == plain["content"]
    assert thought["content"] == ""

    r = await thinking_client.post("/v1/chat/completions", json={**BODY, "stream": True})
    chunks = [json.loads(line[6:]) for line in r.text.splitlines() if line.startswith("data: {")]
    deltas = [c["choices"][0]["delta"] for c in chunks if c["choices"]]
    assert "".join(d.get("reasoning", "") for d in deltas) == plain["content"]
    assert "".join(d.get("reasoning_content", "") for d in deltas) == plain["content"]
    assert "".join(d.get("content", "") for d in deltas) == ""

    body = {"model": TINY, "input": "Hello there", "max_output_tokens": 6, "temperature": 0}
    resp = (await thinking_client.post("/v1/responses", json=body)).json()
    assert resp["output"][0]["type"] == "reasoning"
    assert resp["output"][0]["content"][0]["text"] == plain["content"]
