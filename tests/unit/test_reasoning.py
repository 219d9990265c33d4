"""The `<think>` reasoning parser, and its wiring through chat and the Responses API.

The parser and the serving layer run on a scripted engine that emits `<think>…</think>` (a small model
that does so is not packaged); the same wiring on the real transformers engine is in
tests/api/test_reasoning_api.py.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from openai.types.responses import Response, ResponseStreamEvent
from prometheus_client import CollectorRegistry
from pydantic import TypeAdapter

from services.common.errors import EngineError
from services.generation.engines.base import EngineStats, GenerationChunk, ModelInfo, SamplingOptions
from services.generation.protocol import ChatCompletionRequest
from services.generation.reasoning import PARSERS, ReasoningParser, ReasoningSplitter, split_reasoning
from services.generation.responses.protocol import ResponsesRequest
from services.generation.responses.serving import ResponsesService
from services.generation.responses.store import ResponseStore
from services.generation.serving import GenerationService

THOUGHT = "<think>\nThe user asks for the capital of France. It is Paris.\n</think>\n\nParis."


@pytest.mark.parametrize(
    ("parser", "text", "reasoning", "content"),
    [
        ("think", THOUGHT, "\nThe user asks for the capital of France. It is Paris.\n", "Paris."),
        ("think", "Paris.", None, "Paris."),
        ("think", "  <think>cut short by the token lim", "cut short by the token lim", ""),
        ("think", "a < b and <thin", None, "a < b and <thin"),
        ("think", "before</think>after", None, "before</think>after"),
        ("deepseek_r1", "the template opened it</think>Paris.", "the template opened it", "Paris."),
        ("deepseek_r1", THOUGHT, "\nThe user asks for the capital of France. It is Paris.\n", "Paris."),
        ("deepseek_r1", "never closed", "never closed", ""),
        ("deepseek_r1", "", None, ""),
    ],
)
def test_split(parser: ReasoningParser, text: str, reasoning: str | None, content: str) -> None:
    assert split_reasoning(text, parser) == (reasoning, content)
    # streamed one character at a time, the tags never leak and the parts add up to the same
    splitter = ReasoningSplitter(parser)
    parts = [splitter.feed(ch) for ch in text] + [splitter.flush()]
    assert "".join(r for r, _ in parts) == (reasoning or "")
    assert "".join(c for _, c in parts) == content
    assert not any("<think>" in r or "</think>" in r for r, _ in parts)


class ScriptedEngine:
    """Emits fixed text pieces (or fails after the first), as an engine would."""

    supports_json_schema = False

    def __init__(self, pieces: list[str], fail: bool = False):
        self.info = ModelInfo(id="scripted", max_model_len=512, engine="scripted", root="-")
        self.pieces, self.fail = pieces, fail

    async def start(self) -> None: ...

    async def stop(self) -> None: ...

    async def generate(self, request_id: str, prompt: list[int], options: SamplingOptions) -> AsyncIterator[Any]:
        for k, piece in enumerate(self.pieces):
            if self.fail and k == 1:
                raise EngineError("the engine fell over")
            last = k == len(self.pieces) - 1
            yield GenerationChunk(piece, [k], finish_reason="stop" if last else None, prompt_tokens=len(prompt),
                                  completion_tokens=k + 1)  # fmt: skip
            await asyncio.sleep(0)

    async def abort(self, request_id: str) -> None: ...

    def stats(self) -> EngineStats:
        return EngineStats(running=0, waiting=0)


def service(tiny_model_dir: Path, pieces: list[str], parser: ReasoningParser | None, fail: bool = False) -> Any:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    engine = ScriptedEngine(pieces, fail)
    return GenerationService(engine, tokenizer, CollectorRegistry(), reasoning_parser=parser)  # type: ignore[arg-type]


PIECES = ["<th", "ink>\nThe user asks for the capital", " of France. It is Paris.\n</th", "ink>\n\nPar", "is."]
REASONING = "\nThe user asks for the capital of France. It is Paris.\n"
CHAT = {"model": "scripted", "messages": [{"role": "user", "content": "Capital of France?"}]}


@pytest.mark.asyncio
@pytest.mark.parametrize("parser", PARSERS)
async def test_chat_message_and_deltas(tiny_model_dir: Path, parser: ReasoningParser) -> None:
    svc = service(tiny_model_dir, PIECES, parser)
    whole = await svc.chat(ChatCompletionRequest.model_validate(CHAT))
    message = whole.choices[0].message
    assert message.content == "Paris."
    assert message.reasoning == message.reasoning_content == REASONING

    chunks = await svc.chat_chunks(ChatCompletionRequest.model_validate({**CHAT, "stream": True}))
    deltas = [c.choices[0].delta async for c in chunks if c.choices]
    assert "".join(d.reasoning or "" for d in deltas) == message.reasoning
    assert "".join(d.reasoning_content or "" for d in deltas) == message.reasoning
    assert "".join(d.content or "" for d in deltas) == "Paris."


@pytest.mark.asyncio
async def test_parser_off_keeps_the_tags(tiny_model_dir: Path) -> None:
    whole = await service(tiny_model_dir, PIECES, None).chat(ChatCompletionRequest.model_validate(CHAT))
    assert whole.choices[0].message.content == "".join(PIECES) and whole.choices[0].message.reasoning is None


@pytest.mark.asyncio
async def test_responses_reasoning_item(tiny_model_dir: Path) -> None:
    responses = ResponsesService(service(tiny_model_dir, PIECES, "think"), ResponseStore())
    req = {"model": "scripted", "input": "Capital of France?"}
    whole = await responses.create(ResponsesRequest.model_validate(req))
    body = whole.model_dump(mode="json")  # type: ignore[union-attr]
    Response.model_validate(body)
    assert [item["type"] for item in body["output"]] == ["reasoning", "message"]
    assert body["output"][0]["content"][0] == {"type": "reasoning_text", "text": REASONING}
    assert body["output"][1]["content"][0]["text"] == "Paris."

    stream = await responses.create(ResponsesRequest.model_validate({**req, "stream": True}))
    events = [e async for e in stream]  # type: ignore[union-attr]
    adapter = TypeAdapter(ResponseStreamEvent)
    for event in events:
        adapter.validate_python(event)
    kinds = [e["type"] for e in events]
    assert kinds.index("response.reasoning_text.done") < kinds.index("response.output_text.delta")
    thought = "".join(e["delta"] for e in events if e["type"] == "response.reasoning_text.delta")
    assert thought == body["output"][0]["content"][0]["text"]
    assert events[-1]["response"]["output"][0]["type"] == "reasoning"


@pytest.mark.asyncio
async def test_stream_failure_is_an_error_event_and_nothing_is_stored(tiny_model_dir: Path) -> None:
    store = ResponseStore()
    responses = ResponsesService(service(tiny_model_dir, ["Hello", " world"], None, fail=True), store)
    stream = await responses.create(
        ResponsesRequest.model_validate({"model": "scripted", "input": "Hi", "stream": True})
    )
    events = [e async for e in stream]  # type: ignore[union-attr]
    assert [e["type"] for e in events[-2:]] == ["error", "response.failed"]
    assert events[-2]["code"] == "engine_error" and "fell over" in events[-2]["message"]
    assert events[-1]["response"]["status"] == "failed" and events[-1]["response"]["error"]["code"] == "server_error"
    TypeAdapter(ResponseStreamEvent).validate_python(events[-1])
    assert len(store) == 0
