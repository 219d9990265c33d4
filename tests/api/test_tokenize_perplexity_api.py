"""`/tokenize`, `/detokenize`, `/version`, `prompt_logprobs` and `/v1/perplexity` in-process (transformers engine,
tiny random Llama): counts agree with chat, logprobs agree with the model's own forward pass, bad input is a 400."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.api.test_generation_api import assert_openai_error
from tests.conftest import TINY

pytestmark = pytest.mark.asyncio(loop_scope="session")

MESSAGES = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "What is the capital of France?"}]
TOOLS = [{"type": "function", "function": {"name": "lookup", "parameters": {"type": "object", "properties": {}}}}]


async def post(client: httpx.AsyncClient, path: str, body: dict[str, Any]) -> dict[str, Any]:
    r = await client.post(path, json=body)
    assert r.status_code == 200, r.text
    return dict(r.json())


@pytest.mark.parametrize("tools", [None, TOOLS])
async def test_tokenize_messages_counts_what_chat_reports(tiny_client: httpx.AsyncClient, tools: Any) -> None:
    extra = {"tools": tools} if tools else {}
    tok = await post(tiny_client, "/tokenize", {"model": TINY, "messages": MESSAGES, **extra})
    chat = await post(
        tiny_client, "/v1/chat/completions", {"model": TINY, "messages": MESSAGES, "max_tokens": 1, **extra}
    )
    assert tok["count"] == len(tok["tokens"]) == chat["usage"]["prompt_tokens"]
    assert tok["max_model_len"] == 512
    text = (await post(tiny_client, "/detokenize", {"model": TINY, "tokens": tok["tokens"]}))["prompt"]
    assert text.endswith("<|im_start|>assistant\n") and "What is the capital of France?" in text
    # without the generation prompt, the assistant turn is not opened
    bare = await post(tiny_client, "/tokenize", {"messages": MESSAGES, "add_generation_prompt": False, **extra})
    assert bare["tokens"] == tok["tokens"][: bare["count"]] and bare["count"] < tok["count"]


async def test_chat_continues_a_started_assistant_reply(tiny_client: httpx.AsyncClient) -> None:
    """vLLM's `continue_final_message` on chat: the prompt ends inside the assistant's reply, which the
    model continues (the agent starts a calculator step this way); `add_generation_prompt: false` opens no turn."""
    started = [*MESSAGES, {"role": "assistant", "content": "Thought: I need"}]
    options = {"continue_final_message": True, "add_generation_prompt": False}
    tok = await post(tiny_client, "/tokenize", {"messages": started, **options})
    text = (await post(tiny_client, "/detokenize", {"tokens": tok["tokens"]}))["prompt"]
    assert text.endswith("<|im_start|>assistant\nThought: I need")
    body = {"model": TINY, "messages": started, "max_tokens": 6, "temperature": 0, **options}
    chat = await post(tiny_client, "/v1/chat/completions", body)
    assert chat["usage"]["prompt_tokens"] == tok["count"]
    # the reply is what the model writes after that exact text, and it holds the continuation only
    plain = {"model": TINY, "prompt": tok["tokens"], "max_tokens": 6, "temperature": 0}
    completion = await post(tiny_client, "/v1/completions", plain)
    assert chat["choices"][0]["message"]["content"] == completion["choices"][0]["text"]
    bare = await post(tiny_client, "/tokenize", {"messages": MESSAGES, "add_generation_prompt": False})
    closed = {"model": TINY, "messages": MESSAGES, "max_tokens": 1, "add_generation_prompt": False}
    assert (await post(tiny_client, "/v1/chat/completions", closed))["usage"]["prompt_tokens"] == bare["count"]


async def test_tokenize_prompt_round_trips(tiny_client: httpx.AsyncClient) -> None:
    prompt = "Héllo wörld, 42 tokens… maybe"
    tok = await post(tiny_client, "/tokenize", {"prompt": prompt, "return_token_strs": True})
    assert len(tok["token_strs"]) == tok["count"]
    assert (await post(tiny_client, "/detokenize", {"tokens": tok["tokens"]}))["prompt"] == prompt
    completion = await post(tiny_client, "/v1/completions", {"model": TINY, "prompt": prompt, "max_tokens": 1})
    assert completion["usage"]["prompt_tokens"] == tok["count"]


async def test_version(tiny_client: httpx.AsyncClient) -> None:
    v = (await tiny_client.get("/version")).json()
    assert v["engine"] == "transformers" and v["version"] and v["engine_version"]


@pytest.mark.parametrize(
    ("path", "body", "param"),
    [
        ("/tokenize", {}, None),
        ("/tokenize", {"prompt": "a", "messages": MESSAGES}, None),
        ("/tokenize", {"messages": []}, "messages"),
        ("/tokenize", {"prompt": "a", "model": "nope"}, "model"),
        ("/tokenize", {"messages": MESSAGES, "continue_final_message": True, "add_generation_prompt": True}, None),
        ("/detokenize", {"tokens": [10**9]}, "tokens"),
        ("/detokenize", {"tokens": [-1]}, "tokens.0"),
        ("/detokenize", {"tokens": "abc"}, "tokens"),
        ("/v1/perplexity", {"model": TINY, "input": []}, "input.items"),
        ("/v1/perplexity", {"model": TINY, "input": ""}, "input.text"),
        ("/v1/perplexity", {"model": TINY, "input": "Hi"}, "input"),  # one token: nothing to score
        ("/v1/perplexity", {"model": TINY, "input": ["x y"] * 65}, "input.items"),
        ("/v1/perplexity", {"model": TINY, "input": "word " * 600}, "input"),
        ("/v1/perplexity", {"model": TINY, "input": "a b", "top_logprobs": 21}, "top_logprobs"),
        ("/v1/perplexity", {"model": "nope", "input": "a b"}, "model"),
        ("/v1/completions", {"model": TINY, "prompt": "a b", "prompt_logprobs": 21}, "prompt_logprobs"),
        ("/v1/completions", {"model": TINY, "prompt": "a b", "prompt_logprobs": 1, "stream": True}, None),
        ("/v1/chat/completions", {"model": TINY, "messages": MESSAGES, "prompt_logprobs": -1}, "prompt_logprobs"),
        ("/v1/chat/completions", {"model": TINY, "messages": MESSAGES, "continue_final_message": True}, None),
        ("/v1/chat/completions", {"model": TINY, "messages": [*MESSAGES, {"role": "assistant", "content": "It"}],
                                  "continue_final_message": True, "add_generation_prompt": True}, None),
    ],
)
async def test_bad_requests(tiny_client: httpx.AsyncClient, path: str, body: dict[str, Any], param: str | None) -> None:
    r = await tiny_client.post(path, json=body)
    assert_openai_error(r, 404 if body.get("model") == "nope" else 400, param=param)


def _reference_logprobs(model_dir: Path, ids: list[int]) -> list[tuple[float, int]]:
    """The tiny model's own forward pass, outside the engine: (logprob, rank) of each token given the ones before."""
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    with torch.no_grad():
        logits = model(torch.tensor([ids])).logits[0].float()
    logprobs = torch.log_softmax(logits[:-1], dim=-1)
    return [(float(logprobs[i, t]), int((logprobs[i] > logprobs[i, t]).sum()) + 1) for i, t in enumerate(ids[1:])]


async def test_prompt_logprobs_match_the_model(tiny_client: httpx.AsyncClient, tiny_model_dir: Path) -> None:
    prompt = "The capital of France is Paris, and"
    ids = (await post(tiny_client, "/tokenize", {"prompt": prompt, "add_special_tokens": False}))["tokens"]
    body = {"model": TINY, "prompt": prompt, "max_tokens": 1, "prompt_logprobs": 2}
    out = (await post(tiny_client, "/v1/completions", body))["prompt_logprobs"]
    assert out[0] is None and len(out) == len(ids)
    reference = _reference_logprobs(tiny_model_dir, ids)
    for position, token, (logprob, rank) in zip(out[1:], ids[1:], reference, strict=True):
        own = position[str(token)]
        assert abs(own["logprob"] - logprob) < 1e-4 and own["rank"] == rank
        top = sorted((v for v in position.values() if v["rank"] <= 2), key=lambda v: v["rank"])
        assert [v["rank"] for v in top] == [1, 2] and top[0]["logprob"] >= max(top[1]["logprob"], own["logprob"]) - 1e-6
    chat = await post(
        tiny_client,
        "/v1/chat/completions",
        {"model": TINY, "messages": MESSAGES, "max_tokens": 1, "prompt_logprobs": 0},
    )
    assert chat["prompt_logprobs"][0] is None
    assert len(chat["prompt_logprobs"]) == chat["usage"]["prompt_tokens"]
    assert all(len(p) == 1 for p in chat["prompt_logprobs"][1:])  # 0 alternatives: the prompt's own token only


async def test_perplexity_is_what_prompt_logprobs_give(tiny_client: httpx.AsyncClient) -> None:
    texts = ["The cat sat on the mat.", "A much longer sentence, so that the two inputs are padded in one batch."]
    result = await post(tiny_client, "/v1/perplexity", {"model": TINY, "input": texts, "add_special_tokens": False})
    assert result["object"] == "list" and [d["index"] for d in result["data"]] == [0, 1]
    for text, data in zip(texts, result["data"], strict=True):
        lp = (await post(tiny_client, "/v1/completions", {"model": TINY, "prompt": text, "max_tokens": 1,
                                                          "prompt_logprobs": 0}))["prompt_logprobs"]  # fmt: skip
        ids = (await post(tiny_client, "/tokenize", {"prompt": text, "add_special_tokens": False}))["tokens"]
        own = [position[str(t)]["logprob"] for position, t in zip(lp[1:], ids[1:], strict=True)]
        assert data["token_logprobs"][0] is None and len(data["tokens"]) == len(ids)
        assert all(abs(a - b) < 1e-4 for a, b in zip(data["token_logprobs"][1:], own, strict=True))
        nll = -sum(own) / len(own)
        assert abs(data["nll"] - nll) < 1e-4 and abs(data["logprob"] + nll * len(own)) < 1e-3
        assert abs(math.log(data["perplexity"]) - nll) < 1e-4
    assert result["usage"]["prompt_tokens"] == sum(len(d["tokens"]) for d in result["data"])
    # scored alone, each text gets the same figures as in the batch
    alone = await post(tiny_client, "/v1/perplexity", {"model": TINY, "input": texts[1], "add_special_tokens": False})
    assert abs(alone["data"][0]["nll"] - result["data"][1]["nll"]) < 1e-4


async def test_perplexity_top_logprobs(tiny_client: httpx.AsyncClient) -> None:
    result = await post(tiny_client, "/v1/perplexity", {"model": TINY, "input": "one two three", "top_logprobs": 3})
    top = result["data"][0]["top_logprobs"]
    assert top[0] is None and all(len(t) == 3 for t in top[1:])


async def test_seed_bounds(tiny_client: httpx.AsyncClient) -> None:
    body = {"model": TINY, "messages": MESSAGES, "max_tokens": 2}
    for seed in (2**63, -(2**63) - 1, 2**64):
        assert_openai_error(await tiny_client.post("/v1/chat/completions", json={**body, "seed": seed}), 400, "seed")
    # the largest seed with n > 1: seed + i wraps inside int64 instead of overflowing
    r = await tiny_client.post("/v1/chat/completions", json={**body, "seed": 2**63 - 1, "n": 2, "temperature": 1})
    assert r.status_code == 200, r.text
