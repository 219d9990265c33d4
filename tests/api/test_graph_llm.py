"""The LLM extractor against the generation service in this process: structured output keeps the schema's
property order (tiny model), and the packaged default model always returns JSON valid for the schema."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
import pytest_asyncio

from services.common.errors import EngineError
from services.generation.app import build_app
from services.generation.protocol import ChatCompletionRequest
from services.rag.chunking import Chunker, parse_chunking
from services.rag.generator import HttpGenerator
from services.rag.graph.llm import Extraction, LlmExtractor, schema
from tests.conftest import TINY, tiny_settings
from tests.embedding_models import minilm_path
from tests.tiny_models import smollm2_path

pytestmark = pytest.mark.asyncio(loop_scope="session")

ROOT = Path(__file__).resolve().parents[2]


async def _texts(n: int) -> list[str]:
    """n chunks as ingestion cuts them (the default chunker): half English (multihop), half French (the course)."""
    chunker = Chunker.for_model(minilm_path())
    params = parse_chunking(None)
    chunks: dict[str, list[str]] = {}
    for name, want in (("multihop", n // 2), ("course", n - n // 2)):
        lines = (ROOT / "datasets" / name / "corpus.jsonl").read_text(encoding="utf-8").splitlines()
        chunks[name] = []
        for line in lines:
            chunks[name] += [c.text for c in await chunker.chunk(json.loads(line)["text"], params)]
            if len(chunks[name]) >= want:
                break
        chunks[name] = chunks[name][:want]
    return chunks["multihop"] + chunks["course"]


async def test_structured_output_keeps_the_schema_property_order(tiny_client: httpx.AsyncClient) -> None:
    """The grammar writes properties as the schema lists them: a model fills an entity's name first."""
    body = LlmExtractor(HttpGenerator(tiny_client), lambda: asyncio.sleep(0, TINY), max_tokens=200).body(
        TINY, "Oriane Valcourt plays the violin in Medrin.", 2, 1)  # fmt: skip
    reply = (await tiny_client.post("/v1/chat/completions", json=body)).json()["choices"][0]
    content = json.loads(reply["message"]["content"])  # dicts keep the order the keys were written in
    assert list(content) == ["entities", "relations"]
    written = [list(e) for e in content["entities"]] + [list(r) for r in content["relations"]]
    assert written, content
    # sorted keys would write "description" first
    assert all(keys in (["name", "type", "description"], ["source", "target", "description"]) for keys in written)


async def test_the_extractor_sends_its_schema_over_http(tiny_client: httpx.AsyncClient) -> None:
    """The extractor's own path (HttpGenerator, as the RAG service calls a separate generation service) hands
    the generation service the schema it built, not an empty one (it once arrived as `schema_` and was dropped)."""
    sent: list[dict[str, object]] = []

    async def relay(request: httpx.Request) -> httpx.Response:
        sent.append(json.loads(request.content))
        upstream = await tiny_client.post(request.url.path, content=request.content, headers=request.headers)
        return httpx.Response(upstream.status_code, content=upstream.content, headers=upstream.headers)

    async with httpx.AsyncClient(transport=httpx.MockTransport(relay), base_url="http://generation") as client:
        extractor = LlmExtractor(HttpGenerator(client), lambda: asyncio.sleep(0, TINY), max_tokens=200)
        try:
            reply = await extractor.reply("Oriane Valcourt plays the violin in Medrin.")
        except EngineError as exc:  # a random model may not close its JSON in 200 tokens; it must not break schema
            assert "did not fit" in str(exc), exc
        else:
            assert isinstance(reply, Extraction)
    spec = sent[0]["response_format"]["json_schema"]  # type: ignore[index]
    assert spec["schema"] == schema(extractor.max_entities, extractor.max_relations), spec


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def smollm2_client() -> AsyncIterator[httpx.AsyncClient]:
    """The generation app on the packaged default model (SmolLM2-135M-Instruct), transformers engine."""
    app = build_app(tiny_settings(Path(smollm2_path()), served_model_name="smollm2", max_model_len=2048,
                                  num_threads=None))  # fmt: skip
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test", timeout=1800) as client:
            for _ in range(1800):
                if (await client.get("/ready")).status_code == 200:
                    break
                await asyncio.sleep(0.1)
            else:
                raise RuntimeError(f"app not ready: {app.state.load_error}")
            yield client


@pytest.mark.slow
async def test_default_model_always_returns_valid_graph_json(smollm2_client: httpx.AsyncClient) -> None:
    """50 chunks as ingestion cuts them, English and French, through the extractor's own requests and HTTP
    client: every reply parses against the schema (json_schema decoding), none is cut short, and most chunks
    yield entities (the graph is not empty)."""
    texts = await _texts(50)
    concurrency = 8
    extractor = LlmExtractor(HttpGenerator(smollm2_client), lambda: asyncio.sleep(0, "smollm2"),
                             concurrency=concurrency)  # fmt: skip
    gate = asyncio.Semaphore(concurrency)  # the extractor's own bound, for requests sent without its retry
    replies = []

    async def one(text: str) -> None:
        body = extractor.body("smollm2", text, extractor.max_entities, extractor.max_relations)
        async with gate:  # the extractor's generator and request, as `reply` sends it (without its retry)
            result = await extractor.generator.chat(ChatCompletionRequest.model_validate(body))
        choice = result.choices[0]
        assert choice.finish_reason == "stop", choice
        replies.append(Extraction.model_validate_json(choice.message.content or ""))  # raises if not valid

    await asyncio.gather(*(one(t) for t in texts))
    assert len(replies) == 50
    spec = schema(extractor.max_entities, extractor.max_relations)
    assert all(len(r.entities) <= spec["properties"]["entities"]["maxItems"] for r in replies)
    assert sum(1 for r in replies if r.entities) >= 45, [r.model_dump() for r in replies if not r.entities]
    graphs = await extractor.extract(texts[:4])  # and the extractor's own path, relations' ends kept as entities
    assert all(g.entities for g in graphs)
