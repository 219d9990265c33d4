"""The started stack (`python -m services.gateway.app`, transformers engine) with three generation models and the
clients people point at it: the official `openai` SDK's Responses API, LangChain's `ChatOpenAI` on it,
tokenize/perplexity, and routing by `model`.

Models: the packaged SmolLM2 (the default, in-process), a tiny random Llama in-process
(`INFERAG_GEN_EXTRA_MODELS`) and another in its own generation service (`INFERAG_GENERATION_URLS`).
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterator
from pathlib import Path

import httpx
import jsonschema
import openai
import pytest
from pydantic import BaseModel

from tests.e2e.openai_sdk_checks import check_responses
from tests.e2e.stack import stack, write_docs
from tests.e2e.test_transformers_server import metric

pytestmark = pytest.mark.slow

SMOL = "smollm2-135m-instruct"
LOCAL, REMOTE = "tiny-local", "tiny"  # `tiny` is the name the tiny_server fixture serves
WEATHER = {
    "type": "function",
    "name": "get_weather",
    "description": "Get the current weather in a city.",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
}


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path, tiny_server: str) -> Iterator[str]:
    folder = tmp_path_factory.mktemp("responses-stack")
    with stack(
        folder,
        INFERAG_GEN_EXTRA_MODELS=f"{LOCAL}={tiny_model_dir}",
        INFERAG_GENERATION_URLS=f"{REMOTE}={tiny_server}",
        INFERAG_GEN_MAX_MODEL_LEN="2048",
    ) as base:
        docs = write_docs(folder / "docs")
        for path in docs.values():
            with path.open("rb") as f:
                r = httpx.post(f"{base}/rag/collections/docs/documents", files={"files": (path.name, f)}, timeout=120)
                assert r.status_code == 200, r.text
        yield base


@pytest.fixture(scope="module")
def client(gateway: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=gateway + "/v1", api_key="unused", max_retries=0)


def test_plain_and_streamed(gateway: str) -> None:
    check_responses(gateway, SMOL)


def test_function_tool_round_trip(client: openai.OpenAI, gateway: str) -> None:
    asked = {"role": "user", "content": "What is the weather like in Paris today?"}
    called = client.responses.create(
        model=SMOL, input=[asked], tools=[WEATHER], tool_choice="required", temperature=0, max_output_tokens=40
    )  # type: ignore[list-item]
    calls = [item for item in called.output if item.type == "function_call"]
    assert len(calls) == 1 and calls[0].name == "get_weather"
    assert json.loads(calls[0].arguments) == {"city": "Paris"}

    result = {"type": "function_call_output", "call_id": calls[0].call_id, "output": "18 degrees Celsius, sunny."}
    answered = client.responses.create(
        model=SMOL, input=[asked, calls[0], result], tools=[WEATHER], temperature=0, max_output_tokens=40
    )  # type: ignore[list-item]
    assert answered.status in {"completed", "incomplete"} and answered.output
    # The model saw the call as its own turn and the result as the tool's: the same prompt as this chat.
    turns = [
        asked,
        {"role": "assistant", "tool_calls": [{"id": calls[0].call_id, "type": "function",
                                              "function": {"name": "get_weather", "arguments": calls[0].arguments}}]},
        {"role": "tool", "tool_call_id": calls[0].call_id, "content": "18 degrees Celsius, sunny."},
    ]  # fmt: skip
    chat_tools = [{"type": "function", "function": {k: v for k, v in WEATHER.items() if k != "type"}}]
    tok = httpx.post(f"{gateway}/tokenize", json={"model": SMOL, "messages": turns, "tools": chat_tools}).json()
    assert answered.usage is not None and answered.usage.input_tokens == tok["count"]


def test_previous_response_id(client: openai.OpenAI) -> None:
    first = client.responses.create(model=SMOL, input="The secret number is 4713.", temperature=0,
                                    max_output_tokens=40)  # fmt: skip
    question = "What was the word or number I told you? Repeat it."
    second = client.responses.create(
        model=SMOL, input=question, previous_response_id=first.id, temperature=0, max_output_tokens=40
    )
    assert "4713" in second.output_text, second.output_text
    alone = client.responses.create(model=SMOL, input=question, temperature=0, max_output_tokens=40)
    assert "4713" not in alone.output_text
    assert client.responses.retrieve(first.id).output_text == first.output_text
    client.responses.delete(first.id)
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(first.id)
    with pytest.raises(openai.NotFoundError):
        client.responses.create(model=SMOL, input=question, previous_response_id=first.id)


def test_text_format_json_schema(client: openai.OpenAI) -> None:
    schema = {
        "type": "object",
        "properties": {"city": {"type": "string"}, "country": {"type": "string"}},
        "required": ["city", "country"],
        "additionalProperties": False,
    }
    r = client.responses.create(
        model=SMOL, input="Where is the Eiffel Tower? Answer in JSON.", temperature=0, max_output_tokens=40,
        text={"format": {"type": "json_schema", "name": "place", "schema": schema, "strict": True}},
    )  # fmt: skip
    place = json.loads(r.output_text)
    jsonschema.validate(place, schema)
    assert place["city"] == "Paris"

    class Place(BaseModel):
        city: str
        country: str

    parsed = client.responses.parse(model=SMOL, input="Where is the Eiffel Tower?", text_format=Place, temperature=0,
                                    max_output_tokens=40)  # fmt: skip
    assert isinstance(parsed.output_parsed, Place) and parsed.output_parsed.city
    obj = client.responses.create(model=SMOL, input="Give a JSON object describing Paris.", temperature=0,
                                  max_output_tokens=80, text={"format": {"type": "json_object"}})  # fmt: skip
    assert isinstance(json.loads(obj.output_text), dict)


def test_langchain_on_the_responses_api(gateway: str) -> None:
    from langchain_openai import ChatOpenAI

    llm = ChatOpenAI(model=SMOL, base_url=gateway + "/v1", api_key="unused", use_responses_api=True,  # type: ignore[arg-type]
                     temperature=0, max_tokens=16)  # fmt: skip
    question = "What is the capital of France? Answer in one word."
    answer = llm.invoke(question)
    assert "paris" in answer.text.lower(), answer
    assert answer.response_metadata.get("id", "").startswith("resp_")
    streamed = "".join(chunk.text for chunk in llm.stream(question))
    assert streamed == answer.text


def test_rag_model_sources_as_annotations(client: openai.OpenAI) -> None:
    question = "What does LoRA fine-tuning train?"
    r = client.responses.create(model="rag:docs", input=question, temperature=0, max_output_tokens=48)
    assert r.output_text
    notes = r.output[0].content[0].annotations  # type: ignore[union-attr]
    cited = [n.model_dump() for n in notes]
    assert all(n["type"] == "file_citation" and n["collection"] == "docs" for n in cited)
    assert all(0 <= n["index"] <= len(r.output_text) and n["filename"] for n in cited)
    # each cited source carries the sentence of it that supports the answer (a span of its text)
    for n in cited:
        quote, at = n["quote"], n["start"]
        assert quote["text"] and n["text"][quote["start"] - at : quote["end"] - at] == quote["text"], n
    if cited:  # a source's numbered marker is in the text, and its annotation sits right after it
        assert r.output_text[: cited[0]["index"]].endswith("]")
    streamed = client.responses.create(model="rag:docs", input=question, temperature=0, max_output_tokens=48,
                                       stream=True)  # fmt: skip
    events = list(streamed)
    final = events[-1].response  # type: ignore[union-attr]
    assert "".join(e.delta for e in events if e.type == "response.output_text.delta") == final.output_text
    added = [e.annotation for e in events if e.type == "response.output_text.annotation.added"]
    assert len(added) == len(final.output[0].content[0].annotations)  # type: ignore[union-attr]
    follow = client.responses.create(model="rag:docs", input="And what are they merged into?",
                                     previous_response_id=r.id, max_output_tokens=32)  # fmt: skip
    assert follow.previous_response_id == r.id and follow.output_text


def test_tokenize_counts_and_round_trip(gateway: str) -> None:
    messages = [{"role": "user", "content": "What is the capital of France?"}]
    tok = httpx.post(f"{gateway}/tokenize", json={"model": SMOL, "messages": messages}).json()
    chat = httpx.post(f"{gateway}/v1/chat/completions", json={"model": SMOL, "messages": messages, "max_tokens": 1})
    assert tok["count"] == chat.json()["usage"]["prompt_tokens"] and tok["max_model_len"] == 2048
    text = httpx.post(f"{gateway}/detokenize", json={"model": SMOL, "tokens": tok["tokens"]}).json()["prompt"]
    again = httpx.post(f"{gateway}/tokenize", json={"model": SMOL, "prompt": text, "add_special_tokens": False})
    assert again.json()["tokens"] == tok["tokens"]
    assert httpx.get(f"{gateway}/version").json()["engine"] == "transformers"


def test_perplexity_natural_below_shuffled(gateway: str) -> None:
    natural = "The cat sat on the mat and looked out of the window at the birds in the garden."
    words = natural.rstrip(".").split()
    random.Random(0).shuffle(words)
    shuffled = " ".join(words) + "."
    r = httpx.post(f"{gateway}/v1/perplexity", json={"model": SMOL, "input": [natural, shuffled]}, timeout=120)
    assert r.status_code == 200, r.text
    nat, shuf = r.json()["data"]
    assert nat["perplexity"] * 5 < shuf["perplexity"], (nat["perplexity"], shuf["perplexity"])
    # the same figure as prompt_logprobs on completions
    body = {"model": SMOL, "prompt": natural, "max_tokens": 1, "prompt_logprobs": 0}
    prompt_logprobs = httpx.post(f"{gateway}/v1/completions", json=body, timeout=120).json()["prompt_logprobs"]
    own = [next(iter(p.values()))["logprob"] for p in prompt_logprobs[1:]]
    assert abs(nat["nll"] + sum(own) / len(own)) < 1e-4


def _chat(gateway: str, model: str) -> httpx.Response:
    body = {"model": model, "messages": [{"role": "user", "content": "Hello"}], "max_tokens": 2}
    return httpx.post(f"{gateway}/v1/chat/completions", json=body, timeout=120)


def test_three_models_routed_by_model(client: openai.OpenAI, gateway: str, tiny_server: str) -> None:
    cards = {m.id: m for m in client.models.list().data}
    assert {SMOL, LOCAL, REMOTE, "all-minilm-l6-v2", "rag:docs"} <= set(cards)
    label = '{endpoint="chat",outcome="ok"}'
    for model in (SMOL, LOCAL, REMOTE):
        before = metric(tiny_server, "inferag_generation_requests_total", label)
        r = _chat(gateway, model)
        # 200 with this model: a service that serves this name answered (the others 404 it)
        assert r.status_code == 200 and r.json()["model"] == model, r.text
        # and only the remote model's requests reached the remote service
        assert metric(tiny_server, "inferag_generation_requests_total", label) == before + (model == REMOTE)
        assert httpx.post(f"{gateway}/tokenize", json={"model": model, "prompt": "hi"}).json()["count"] == 1
        created = client.responses.create(model=model, input="Hello", max_output_tokens=2)
        assert created.model == model
        # a stored response is found whichever service made it
        assert client.responses.retrieve(created.id).id == created.id
        client.responses.delete(created.id)
    err = _chat(gateway, "nope")
    assert err.status_code == 404 and err.json()["error"]["code"] == "model_not_found"
    assert all(name in err.json()["error"]["message"] for name in (SMOL, LOCAL, REMOTE))
    with pytest.raises(openai.NotFoundError):
        client.responses.create(model="nope", input="Hello")


def test_cli_perplexity(gateway: str, tmp_path: Path) -> None:
    from tests.e2e.test_cli import as_json, inferag

    natural = "The cat sat on the mat and looked out of the window at the birds in the garden."
    lines = [natural, " ".join(reversed(natural.split()))]
    path = tmp_path / "texts.txt"
    path.write_text("\n".join(lines) + "\n\n", encoding="utf-8")
    report = as_json(inferag(gateway, "perplexity", str(path), "--model", SMOL, "--json"))
    api = httpx.post(f"{gateway}/v1/perplexity", json={"model": SMOL, "input": lines}, timeout=120).json()["data"]
    assert [d["perplexity"] for d in report["data"]] == pytest.approx([d["perplexity"] for d in api], rel=1e-6)
    scored = sum(len(d["tokens"]) - 1 for d in api)
    assert report["overall"]["tokens"] == scored
    nll = sum(d["nll"] * (len(d["tokens"]) - 1) for d in api) / scored
    assert report["overall"]["nll"] == pytest.approx(nll, rel=1e-6)
    table = inferag(gateway, "perplexity", "-", "--model", SMOL, stdin=natural).stdout
    # the same request alone: in bfloat16 (`auto` on CPUs with native bf16) a text scored in a batch of two
    # differs from it scored alone in the last digits
    alone = httpx.post(f"{gateway}/v1/perplexity", json={"model": SMOL, "input": [natural]}, timeout=120).json()
    assert "overall" in table and f"{alone['data'][0]['perplexity']:.2f}" in table
    assert inferag(gateway, "perplexity", str(tmp_path / "missing.txt"), ok=False).returncode != 0
