"""Generation benchmark: our service on vLLM vs vLLM's own OpenAI server, and transformers batching.

Same model, prompts and sampling for both servers; each is started as its own
process on loopback, measured, then stopped. Prints throughput (completion
tokens/s over all streams) and time to first token p50/p99, with ratios ours/theirs,
then the transformers engine's aggregate tokens/s at 8 concurrent streams over 1.

    .venv/bin/python bench/generation.py            # full run (a few minutes on 2 cores)
    .venv/bin/python bench/generation.py --quick    # fewer requests
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
from httpx_sse import EventSource

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.servers import REPO_ROOT, free_port, running  # noqa: E402
from tests.tiny_models import smollm2_path  # noqa: E402

MODEL = "smollm2"
PROMPTS = [
    "Explain what a vector database is.",
    "Write a short poem about the sea.",
    "List three uses of Python in science.",
    "What is the difference between a list and a tuple?",
    "Describe the water cycle in simple words.",
    "Give me a recipe for pancakes.",
    "Why is the sky blue?",
    "Summarize the plot of Romeo and Juliet.",
]


@dataclass
class Result:
    tokens_per_s: float
    ttft_p50_ms: float
    ttft_p99_ms: float
    requests: int


async def stream_chat(client: httpx.AsyncClient, content: str, max_tokens: int) -> tuple[float, float, float, int, int]:
    """One streamed chat of exactly `max_tokens` tokens: (start, first token, end, prompt tokens, completion
    tokens), times from perf_counter."""
    body = {
        "model": MODEL, "messages": [{"role": "user", "content": content}], "max_tokens": max_tokens,
        "temperature": 0, "ignore_eos": True, "stream": True, "stream_options": {"include_usage": True},
    }  # fmt: skip
    start = time.perf_counter()
    first = None
    usage: dict[str, int] = {}
    async with client.stream("POST", "/v1/chat/completions", json=body) as r:
        r.raise_for_status()
        async for sse in EventSource(r).aiter_sse():
            if sse.data == "[DONE]":
                continue
            chunk = json.loads(sse.data)
            if first is None and chunk.get("choices") and chunk["choices"][0]["delta"].get("content"):
                first = time.perf_counter()
            usage = chunk.get("usage") or usage
    end = time.perf_counter()
    return start, first or end, end, usage.get("prompt_tokens", 0), usage.get("completion_tokens", 0)


async def one_stream(client: httpx.AsyncClient, prompt: str, max_tokens: int) -> tuple[float, int]:
    """(time to first token, completion tokens) of one streamed chat."""
    start, first, _, _, tokens = await stream_chat(client, prompt, max_tokens)
    return first - start, tokens


async def workload(base: str, concurrency: int, per_stream: int, max_tokens: int) -> Result:
    async with httpx.AsyncClient(base_url=base, timeout=600) as client:
        await one_stream(client, PROMPTS[0], 4)  # warm-up
        ttfts: list[float] = []
        total = 0

        async def worker(w: int) -> None:
            nonlocal total
            for i in range(per_stream):
                ttft, tokens = await one_stream(client, PROMPTS[(w + i) % len(PROMPTS)], max_tokens)
                ttfts.append(ttft)
                total += tokens

        start = time.perf_counter()
        await asyncio.gather(*[worker(w) for w in range(concurrency)])
        elapsed = time.perf_counter() - start
    ttfts.sort()
    p99 = ttfts[min(len(ttfts) - 1, round(0.99 * (len(ttfts) - 1)))]
    return Result(total / elapsed, statistics.median(ttfts) * 1e3, p99 * 1e3, len(ttfts))


def run_levels(base: str, levels: list[int], per_stream: dict[int, int], max_tokens: int) -> dict[int, Result]:
    return {c: asyncio.run(workload(base, c, per_stream[c], max_tokens)) for c in levels}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--kv-cache-gib", type=float, default=1.0)
    ap.add_argument("--skip-vllm", action="store_true")
    args = ap.parse_args()
    model = smollm2_path()
    per_stream = {1: 3 if args.quick else 8, 8: 1 if args.quick else 2, 16: 1 if args.quick else 2}
    common = {
        "INFERAG_GEN_MODEL": model,
        "INFERAG_GEN_SERVED_MODEL_NAME": MODEL,
        "INFERAG_GEN_MAX_MODEL_LEN": "2048",
        "INFERAG_GEN_LOG_LEVEL": "warning",
    }
    report: dict[str, dict[int, Result]] = {}

    if not args.skip_vllm:
        env = {
            **common, "INFERAG_GEN_ENGINE": "vllm", "INFERAG_GEN_KV_CACHE_GIB": str(args.kv_cache_gib),
            "INFERAG_GEN_MAX_BATCH_SIZE": "32",
        }  # fmt: skip
        with running("services.generation.app", env, timeout=900) as base:
            report["ours (vllm engine)"] = run_levels(base, [1, 16], per_stream, args.max_tokens)
        port = free_port()
        theirs = [
            sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", model,
            "--served-model-name", MODEL, "--max-model-len", "2048", "--enforce-eager",
            "--host", "127.0.0.1", "--port", str(port), "--max-num-seqs", "32",
            "--kv-cache-memory-bytes", str(int(args.kv_cache_gib * 2**30)),
        ]  # fmt: skip
        with running(theirs, {}, port=port, ready_path="/health", timeout=900) as base:
            report["vLLM api_server"] = run_levels(base, [1, 16], per_stream, args.max_tokens)

    env = {**common, "INFERAG_GEN_ENGINE": "transformers"}
    with running("services.generation.app", env, timeout=900) as base:
        report["ours (transformers engine)"] = run_levels(base, [1, 8], per_stream, args.max_tokens)

    print(f"\nmodel SmolLM2-135M-Instruct, {args.max_tokens} tokens per request, greedy, {os.cpu_count()} CPUs")
    print(f"{'server':30} {'streams':>7} {'req':>4} {'tok/s':>8} {'TTFT p50 ms':>12} {'TTFT p99 ms':>12}")
    for name, levels in report.items():
        for c, r in levels.items():
            print(
                f"{name:30} {c:>7} {r.requests:>4} {r.tokens_per_s:>8.1f} {r.ttft_p50_ms:>12.1f} {r.ttft_p99_ms:>12.1f}"
            )
    ratios: dict[str, float] = {}
    if "vLLM api_server" in report:
        ours, theirs_r = report["ours (vllm engine)"], report["vLLM api_server"]
        for c in (1, 16):
            ratios[f"throughput ours/vllm @{c}"] = ours[c].tokens_per_s / theirs_r[c].tokens_per_s
            ratios[f"ttft p50 ours/vllm @{c}"] = ours[c].ttft_p50_ms / theirs_r[c].ttft_p50_ms
    tf = report["ours (transformers engine)"]
    ratios["transformers tok/s 8 streams / 1 stream"] = tf[8].tokens_per_s / tf[1].tokens_per_s
    print()
    for k, v in ratios.items():
        print(f"{k:45} {v:6.2f}")
    out = REPO_ROOT / ".bench"
    out.mkdir(exist_ok=True)
    (out / "generation.json").write_text(
        json.dumps(
            {"results": {k: {c: vars(r) for c, r in v.items()} for k, v in report.items()}, "ratios": ratios}, indent=1
        )
    )


if __name__ == "__main__":
    main()
