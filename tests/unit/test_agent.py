"""The agent's control flow with a scripted chat model and an in-memory knowledge base."""

from __future__ import annotations

import time
from typing import Any

import pytest
from langchain_core.messages import AIMessage, BaseMessage, HumanMessage, SystemMessage, ToolMessage
from pydantic import ValidationError

from services.common.errors import InvalidRequest, UpstreamUnavailable
from services.rag.agent import (
    AgentRequest,
    CitationsEvent,
    DeltaEvent,
    DoneEvent,
    ErrorEvent,
    ThoughtEvent,
    ToolCallEvent,
    ToolResultEvent,
    agent_response,
    run_agent,
)
from tests.unit.test_agent_doubles import MemoryKB, ScriptedChatModel, react_action, tool_call


def request(**overrides: Any) -> AgentRequest:
    values: dict[str, Any] = {"collection": "geo", "query": "Where was the designer of the Eiffel Tower born?"}
    return AgentRequest(**{**values, **overrides})


async def events_of(req: AgentRequest, model: ScriptedChatModel, kb: MemoryKB | None = None, **options: Any) -> list:
    return [e async for e in run_agent(req, kb or MemoryKB(), model, **options)]


def of_type(events: list, kind: type) -> list:
    return [e for e in events if isinstance(e, kind)]


def text_of(message: BaseMessage) -> str:
    return str(message.content)


TWO_HOP: dict[str, list[AIMessage | str]] = {
    "react": [
        react_action("search_knowledge_base", {"query": "Eiffel Tower designed"}, "First find who designed it."),
        react_action("search_knowledge_base", "Gustave Eiffel born", "Now where he was born."),
        "Thought: Both facts found.\nFinal Answer: It was designed by Gustave Eiffel's company [1]; he was born "
        "in Dijon [2]. See also [9].",
    ],
    "native": [
        tool_call("search_knowledge_base", {"query": "Eiffel Tower designed"}, "First find who designed it."),
        tool_call("search_knowledge_base", {"query": "Gustave Eiffel born"}, "Now where he was born."),
        "It was designed by Gustave Eiffel's company [1]; he was born in Dijon [2]. See also [9].",
    ],
}


@pytest.mark.asyncio
@pytest.mark.parametrize("protocol", ["react", "native"])
async def test_two_hop_question_searches_twice_and_cites_both_hops(protocol: str) -> None:
    kb = MemoryKB()
    model = ScriptedChatModel(replies=list(TWO_HOP[protocol]))
    events = await events_of(request(top_k=1, protocol=protocol), model, kb)

    assert [q for q, _, _ in kb.searches] == ["Eiffel Tower designed", "Gustave Eiffel born"]
    results = of_type(events, ToolResultEvent)
    assert [r.observation for r in results] == [
        "[1] (eiffel) " + kb.documents["geo"]["eiffel"][0],
        "[2] (eiffel-bio) " + kb.documents["geo"]["eiffel-bio"][0],
    ]
    # The observation reached the model, fenced as data.
    second_call = model.calls[1]
    assert "<data>\n[1] (eiffel)" in text_of(second_call[-1])
    assert isinstance(second_call[-1], ToolMessage if protocol == "native" else HumanMessage)

    citations = of_type(events, CitationsEvent)[0].citations
    assert [(c.number, c.doc_id, c.collection) for c in citations] == [(1, "eiffel", "geo"), (2, "eiffel-bio", "geo")]
    assert citations[1].text == kb.documents["geo"]["eiffel-bio"][0]
    done = events[-1]
    assert isinstance(done, DoneEvent) and done.stopped_reason == "answer"
    assert done.invalid_citations == [9]
    assert "".join(e.text for e in of_type(events, DeltaEvent)) == done.answer
    assert done.answer is not None and done.answer.startswith("It was designed")
    assert done.usage.completion_tokens == 9 and done.timings.model_calls == 3
    assert done.protocol == protocol

    kinds = [e.type for e in events]
    assert kinds[:6] == ["thought", "tool_call", "tool_result", "thought", "tool_call", "tool_result"]
    assert kinds[-2:] == ["citations", "done"]
    assert set(kinds[6:-2]) <= {"thought", "delta"}


@pytest.mark.asyncio
async def test_collected_response_has_the_trace() -> None:
    model = ScriptedChatModel(replies=list(TWO_HOP["react"]))
    result = await agent_response(request(top_k=1), MemoryKB(), model)
    assert result.stopped_reason == "answer"
    assert [s.tool for s in result.steps] == ["search_knowledge_base", "search_knowledge_base"]
    assert result.steps[0].thought == "First find who designed it."
    assert result.steps[1].arguments == {"query": "Gustave Eiffel born"}
    assert result.steps[1].observation is not None and "[2] (eiffel-bio)" in result.steps[1].observation
    assert all(s.duration_ms is not None and s.duration_ms >= 0 for s in result.steps)
    assert [c.number for c in result.citations] == [1, 2] and result.invalid_citations == [9]


@pytest.mark.asyncio
async def test_react_streams_the_final_answer_in_pieces_and_sends_stop_sequences() -> None:
    model = ScriptedChatModel(replies=["Thought: I can answer.\nFinal Answer: Paris is the capital of France."])
    events = await events_of(request(), model)
    deltas = of_type(events, DeltaEvent)
    assert len(deltas) > 2
    assert "".join(d.text for d in deltas) == "Paris is the capital of France."
    assert events[0] == ThoughtEvent(turn=1, text="I can answer.")
    assert "\nObservation:" in model.kwargs[0]["stop"]


@pytest.mark.asyncio
async def test_a_hallucinated_observation_is_cut_before_parsing() -> None:
    reply = react_action("search_knowledge_base", "Paris inhabitants") + "\nObservation: made up\nFinal Answer: no"
    model = ScriptedChatModel(replies=[reply, "Final Answer: 2.1 million [1]."])
    events = await events_of(request(), model)
    assert [e.tool for e in of_type(events, ToolCallEvent)] == ["search_knowledge_base"]
    assert "made up" not in text_of(model.calls[1][-2])
    assert events[-1].answer == "2.1 million [1]."


@pytest.mark.asyncio
@pytest.mark.parametrize("protocol", ["react", "native"])
async def test_calculator_result_is_used(protocol: str) -> None:
    if protocol == "react":
        replies: list[AIMessage | str] = [
            react_action("search_knowledge_base", {"query": "Paris Lyon inhabitants"}),
            react_action("calculator", "2.1 - 0.5", "Subtract."),
            "Thought: done\nFinal Answer: Paris has 1.6 million more inhabitants than Lyon [1][2].",
        ]
    else:
        replies = [
            tool_call("search_knowledge_base", {"query": "Paris Lyon inhabitants"}),
            tool_call("calculator", {"expression": "2.1 - 0.5"}, "Subtract."),
            "Paris has 1.6 million more inhabitants than Lyon [1][2].",
        ]
    model = ScriptedChatModel(replies=replies)
    events = await events_of(request(top_k=2, protocol=protocol), model)
    calc = [r for r in of_type(events, ToolResultEvent) if r.tool == "calculator"][0]
    assert calc.observation == "2.1 - 0.5 = 1.6" and not calc.error
    assert "2.1 - 0.5 = 1.6" in text_of(model.calls[2][-1])
    assert [c.doc_id for c in of_type(events, CitationsEvent)[0].citations] == ["paris", "paris"]
    assert events[-1].stopped_reason == "answer"


@pytest.mark.asyncio
async def test_calculator_errors_are_observations() -> None:
    model = ScriptedChatModel(
        replies=[
            react_action("calculator", "__import__('os').system('echo hi')"),
            react_action("calculator", "1/0"),
            "Final Answer: I cannot compute that.",
        ]
    )
    events = await events_of(request(), model)
    results = of_type(events, ToolResultEvent)
    assert [r.error for r in results] == [True, True]
    assert results[0].observation.startswith("Error: only numbers")
    assert results[1].observation == "Error: division by zero"
    assert events[-1].stopped_reason == "answer"


@pytest.mark.asyncio
@pytest.mark.parametrize("protocol", ["react", "native"])
async def test_max_steps_stops_a_looping_model(protocol: str) -> None:
    loop: AIMessage | str = (
        react_action("search_knowledge_base", "Eiffel")
        if protocol == "react"
        else tool_call("search_knowledge_base", {"query": "Eiffel"})
    )
    model = ScriptedChatModel(replies=[loop], repeat_last=True)
    kb = MemoryKB()
    events = await events_of(request(max_steps=3, protocol=protocol), model, kb)
    assert len(kb.searches) == 3 and len(model.calls) == 4
    assert "no tool calls left" in text_of(model.calls[3][-1])
    done = events[-1]
    assert isinstance(done, DoneEvent)
    assert done.stopped_reason == "max_steps" and done.answer is None
    assert done.message is not None and "max_steps=3" in done.message
    assert not of_type(events, DeltaEvent) and not of_type(events, CitationsEvent)


@pytest.mark.asyncio
async def test_malformed_reply_is_corrected_once() -> None:
    model = ScriptedChatModel(
        replies=[
            "Thought: I will think about it some more.",
            react_action("search_knowledge_base", "Eiffel born"),
            "Action: search the web\nAction Input: Eiffel",
            "Final Answer: Dijon [1].",
        ]
    )
    events = await events_of(request(top_k=1), model)
    correction = text_of(model.calls[1][-1])
    assert correction.startswith("Your last reply was not in the format")
    assert "neither an Action nor a Final Answer" in correction
    assert "not a tool" in text_of(model.calls[3][-1])
    assert not of_type(events, ErrorEvent)
    assert events[-1].stopped_reason == "answer" and events[-1].answer == "Dijon [1]."


@pytest.mark.asyncio
@pytest.mark.parametrize("protocol", ["react", "native"])
async def test_malformed_twice_ends_with_an_error_event(protocol: str) -> None:
    if protocol == "react":
        replies: list[AIMessage | str] = ["Thought: hmm", "Action: browse_web\nAction Input: {}"]
    else:
        replies = [tool_call("browse_web", {"url": "x"}), tool_call("calculator", {"formula": 3})]
    model = ScriptedChatModel(replies=replies)
    events = await events_of(request(protocol=protocol), model)
    assert len(model.calls) == 2
    assert [e.type for e in events] == ["error", "done"]
    error, done = events
    assert error.code == "malformed_output" and "twice in a row" in error.message
    assert done.stopped_reason == "error" and done.message == error.message
    result = await agent_response(request(protocol=protocol), MemoryKB(), ScriptedChatModel(replies=list(replies)))
    assert result.stopped_reason == "error" and result.error == error.message and result.answer is None


@pytest.mark.asyncio
@pytest.mark.parametrize("protocol", ["react", "native"])
async def test_planted_instructions_in_a_document_call_no_tools(protocol: str) -> None:
    first: AIMessage | str = (
        react_action("search_knowledge_base", "tower museum open")
        if protocol == "react"
        else tool_call("search_knowledge_base", {"query": "tower museum open"})
    )
    answer = "The museum is open daily from 9 to 18 [1]."
    model = ScriptedChatModel(replies=[first, answer if protocol == "native" else f"Final Answer: {answer}"])
    kb = MemoryKB()
    events = await events_of(request(top_k=1, protocol=protocol), model, kb)

    assert [e.tool for e in of_type(events, ToolCallEvent)] == ["search_knowledge_base"]
    assert kb.fetched == [] and len(kb.searches) == 1
    observation = of_type(events, ToolResultEvent)[0].observation
    assert "Action: get_document" in " ".join(observation.split()) or "get_document" in observation
    # The same system prompt and tool list on every turn; the planted fence does not close ours.
    assert model.calls[1][0] == model.calls[0][0] and isinstance(model.calls[0][0], SystemMessage)
    assert model.kwargs[1].get("tools") == model.kwargs[0].get("tools")
    if protocol == "native":
        assert [t["function"]["name"] for t in model.kwargs[0]["tools"]] == [
            "calculator",
            "get_document",
            "list_collections",
            "search_knowledge_base",
        ]
    fed = text_of(model.calls[1][-1])
    assert fed.count("</data>") == 1 and fed.rstrip().endswith("</data>")
    done = events[-1]
    assert done.stopped_reason == "answer" and done.answer == answer


@pytest.mark.asyncio
async def test_time_limit_stops_a_slow_model() -> None:
    model = ScriptedChatModel(replies=[react_action("search_knowledge_base", "Eiffel")], repeat_last=True, delay_s=0.3)
    started = time.perf_counter()
    events = await events_of(request(), model, time_limit_s=0.5)
    assert time.perf_counter() - started < 1.5
    done = events[-1]
    assert isinstance(done, DoneEvent) and done.stopped_reason == "time_limit"
    assert done.message is not None and "time limit" in done.message


@pytest.mark.asyncio
async def test_observations_are_capped() -> None:
    model = ScriptedChatModel(replies=[react_action("get_document", {"doc_id": "long"}), "Final Answer: words."])
    events = await events_of(request(collections=["notes"]), model, max_observation_chars=300)
    result = of_type(events, ToolResultEvent)[0]
    assert result.truncated and len(result.observation) < 360
    assert len(text_of(model.calls[1][-1])) < 500


@pytest.mark.asyncio
async def test_document_and_collection_tools() -> None:
    model = ScriptedChatModel(
        replies=[
            react_action("list_collections", "none"),
            react_action("get_document", "paris"),
            react_action("get_document", {"doc_id": "nope"}),
            "Final Answer: Lyon had 0.5 million [2].",
        ]
    )
    events = await events_of(request(), model)
    listed, document, missing = (r.observation for r in of_type(events, ToolResultEvent))
    assert "geo: 5 documents, 6 chunks (searched by default)" in listed and "notes:" in listed
    assert document.splitlines()[1:] == [
        "[1] Paris had 2.1 million inhabitants in 2020.",
        "[2] Lyon had 0.5 million inhabitants in 2020.",
    ]
    assert missing == "Error: No document 'nope' in geo."
    assert [(c.number, c.doc_id) for c in of_type(events, CitationsEvent)[0].citations] == [(2, "paris")]


@pytest.mark.asyncio
async def test_tools_outside_the_request_subset_are_not_available() -> None:
    model = ScriptedChatModel(replies=[react_action("search_knowledge_base", "x"), react_action("get_document", "x")])
    events = await events_of(request(tools=["calculator"]), model)
    assert "Action: the tool to use, one of [calculator]" in text_of(model.calls[0][0])
    assert events[-1].stopped_reason == "error"


@pytest.mark.asyncio
async def test_request_errors_raise_before_the_first_event() -> None:
    with pytest.raises(InvalidRequest) as info:
        await events_of(request(tools=["calculator", "shell"]), ScriptedChatModel(replies=[]))
    assert info.value.param == "tools" and "shell" in info.value.message
    with pytest.raises(UpstreamUnavailable, match="connection refused"):
        await events_of(request(), ScriptedChatModel(replies=["Final Answer: x"], fail_on_call=1))


def test_request_validation() -> None:
    with pytest.raises(ValidationError, match="exactly one"):
        AgentRequest(collection="geo", query="q", messages=[{"role": "user", "content": "q"}])
    with pytest.raises(ValidationError, match="collection"):
        AgentRequest(query="q")
    with pytest.raises(ValidationError):
        AgentRequest(collection="geo", query="q", max_steps=21)
    with pytest.raises(ValidationError):
        AgentRequest.model_validate({"collection": "geo", "query": "q", "unknown": 1})
    req = AgentRequest(collection="a", collections=["b", "a"], messages=[{"role": "user", "content": "q"}])
    assert req.target_collections() == ["a", "b"]


@pytest.mark.asyncio
async def test_messages_become_the_conversation() -> None:
    model = ScriptedChatModel(replies=["Final Answer: ok"])
    messages = [
        {"role": "system", "content": "Answer in French."},
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello"},
        {"role": "user", "content": "Capital?"},
    ]
    await events_of(AgentRequest(collection="geo", messages=messages), model)
    sent = model.calls[0]
    assert [type(m) for m in sent] == [SystemMessage, HumanMessage, AIMessage, HumanMessage]
    assert text_of(sent[0]).endswith("Answer in French.")
