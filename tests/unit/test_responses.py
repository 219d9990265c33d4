"""Pieces of the Responses API: the bounded store, input items as chat turns, `rag:` citation annotations."""

from __future__ import annotations

from typing import Any

import pytest

from inferag_protocol.rag import Citation, Quote
from services.generation.responses.protocol import OutputMessage, OutputText, ResponsesRequest, ResponsesResponse
from services.generation.responses.serving import FunctionCallOutput, input_messages, output_messages
from services.generation.responses.store import ResponseNotFound, ResponseStore
from services.rag.responses import citation_annotations


def response(text: str = "hi") -> ResponsesResponse:
    return ResponsesResponse(model="m", output=[OutputMessage(content=[OutputText(text=text)])])


def test_store_keeps_at_most_max_items_oldest_dropped_first() -> None:
    store = ResponseStore(max_items=3)
    kept = [response() for _ in range(5)]
    for r in kept:
        assert store.put(r, [])
    assert len(store) == 3
    for r in kept[:2]:
        with pytest.raises(ResponseNotFound):
            store.get(r.id)
    assert [store.get(r.id).response for r in kept[2:]] == kept[2:]


def test_store_keeps_at_most_max_bytes() -> None:
    one = response("x" * 1000)
    size = len(one.model_dump_json()) + len("[]")
    store = ResponseStore(max_items=100, max_bytes=size * 2 + 10)
    rs = [response("x" * 1000) for _ in range(4)]
    for r in rs:
        store.put(r, [])
    assert len(store) == 2 and store.bytes <= store.max_bytes
    assert not store.put(response("y" * 10_000), [])  # alone over the bound: not kept, nothing dropped
    assert len(store) == 2
    store.delete(rs[-1].id)
    assert len(store) == 1 and store.bytes == size
    assert not ResponseStore(max_items=0).put(response(), [])


def test_input_items_as_chat_turns() -> None:
    req = ResponsesRequest.model_validate(
        {"model": "m", "input": [
            {"role": "developer", "content": "Use tools."},
            {"role": "user", "content": [{"type": "input_text", "text": "Weather in "}, {"type": "input_text",
                                                                                        "text": "Paris?"}]},
            {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": "Let me check."}]},
            {"type": "function_call", "call_id": "c1", "name": "weather", "arguments": "{\"city\": \"Paris\"}"},
            {"type": "function_call", "call_id": "c2", "name": "time", "arguments": "{}"},
            {"type": "reasoning", "summary": [{"type": "summary_text", "text": "thinking"}]},
            {"type": "function_call_output", "call_id": "c1", "output": "18 C"},
            {"type": "function_call_output", "call_id": "c2", "output": [{"type": "input_text", "text": "noon"}]},
        ]}
    )  # fmt: skip
    calls = [
        {"id": "c1", "type": "function", "function": {"name": "weather", "arguments": '{"city": "Paris"}'}},
        {"id": "c2", "type": "function", "function": {"name": "time", "arguments": "{}"}},
    ]
    assert input_messages(req) == [
        {"role": "developer", "content": "Use tools."},
        {"role": "user", "content": "Weather in Paris?"},
        {"role": "assistant", "content": "Let me check.", "tool_calls": calls},
        {"role": "tool", "content": "18 C", "tool_call_id": "c1"},
        {"role": "tool", "content": "noon", "tool_call_id": "c2"},
    ]


def test_output_as_the_assistant_turn() -> None:
    items: list[Any] = [OutputMessage(content=[OutputText(text="Calling.")]),
                        FunctionCallOutput(call_id="c1", name="weather", arguments="{}")]  # fmt: skip
    assert output_messages(items) == [
        {"role": "assistant", "content": "Calling.",
         "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "weather", "arguments": "{}"}}]}
    ]  # fmt: skip
    assert output_messages([OutputMessage(content=[OutputText(text="")])]) == []


def test_citation_annotations_sit_after_their_first_marker() -> None:
    def cite(number: int) -> Citation:
        return Citation(number=number, id=f"chunk{number}", collection="kb", doc_id=f"doc{number}",
                        source=f"doc{number}.md", text="a t", start=0, end=3, score=0.5,
                        quote=Quote(text="t", start=2, end=3))  # fmt: skip

    text = "Paris is the capital [2]. It has the Eiffel Tower [1, 2]."
    notes = citation_annotations(text, [cite(1), cite(2)])
    assert [(n["file_id"], n["filename"], n["index"]) for n in notes] == [
        ("doc1", "doc1.md", text.index("[1, 2]") + 6),
        ("doc2", "doc2.md", text.index("[2]") + 3),
    ]
    assert notes[0]["type"] == "file_citation" and notes[0]["collection"] == "kb" and notes[0]["number"] == 1
    assert notes[0]["quote"] == {"text": "t", "start": 2, "end": 3}  # the quoted span the answer found
