"""Generation on CPU through the service: prefill and decode tokens/s, float32 vs bfloat16 vs `auto`.

Starts the generation service (transformers engine, SmolLM2-135M-Instruct, the packaged default) as a
process on loopback once per dtype and measures, over HTTP with streaming:

- prefill: a ~1,500-token prompt (five course-set passages, the size of a RAG prompt), `max_tokens=1`;
  prompt tokens / wall time of the request, median of 3;
- decode at 1 stream: tokens after the first / time from the first to the last token, median of 3;
- decode at 16 streams: 16 requests at once, all completion tokens / wall time (prefills included).

`auto` is what the service picks on this CPU (bfloat16 only with AMX-BF16 or AVX512-BF16); where that is one
of the other two columns the figures are that column's, not a third run. Also prints bfloat16's greedy
next-token agreement with float32 on held-out text (quality), and a llama.cpp column on the packaged
GGUF (same prompt, greedy, streamed, in-process) where `make llama-cpp` has built llama-cpp-python into
its cache folder (`LLAMA_CPP_DIR`, default ~/.cache/inferag/llama-cpp-python), skipped with a message
otherwise.

    .venv/bin/python bench/cpu.py             # ~5 minutes on 2 cores
    .venv/bin/python bench/cpu.py --quick     # fewer tokens
    .venv/bin/python bench/cpu.py --threads 1 # where another job holds a core (2 threads then wait on it)
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import json
import os
import statistics
import sys
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.generation import stream_chat as request  # noqa: E402
from services.common.cpu import cpu_auto_dtype, cpu_flags  # noqa: E402
from services.generation.models import packaged_gguf  # noqa: E402
from tests.servers import REPO_ROOT, running  # noqa: E402
from tests.tiny_models import smollm2_path  # noqa: E402

MODEL = "smollm2"
COURSE = REPO_ROOT / "datasets" / "course" / "course.txt"
SHORT = "Explain what a vector database is."
LLAMA_CPP_DIR = Path(os.environ.get("LLAMA_CPP_DIR") or Path.home() / ".cache" / "inferag" / "llama-cpp-python")


def long_prompt(tokens: int) -> str:
    """About `tokens` tokens (SmolLM2's tokenizer) of course text, after a one-line instruction."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(smollm2_path())
    ids = tokenizer(COURSE.read_text())["input_ids"][: tokens - 30]  # the chat template adds ~30
    return "Summarize these sources.\n\n" + tokenizer.decode(ids)


async def measure(base: str, prefill_tokens: int, max_tokens: int) -> dict[str, float]:
    async with httpx.AsyncClient(base_url=base, timeout=900) as client:
        await request(client, SHORT, 4)  # warm-up
        prompt = long_prompt(prefill_tokens)
        prefill = []
        for _ in range(3):
            start, _, end, p, _ = await request(client, prompt, 1)
            prefill.append(p / (end - start))
        one = []
        for _ in range(3):
            start, first, end, _, n = await request(client, SHORT, max_tokens)
            one.append((n - 1) / (end - first))
        start = time.perf_counter()
        results = await asyncio.gather(*[request(client, f"{SHORT} ({i})", max_tokens) for i in range(16)])
        wall = time.perf_counter() - start
    return {
        "prompt_tokens": p,
        "prefill_tok_s": statistics.median(prefill),
        "decode_1_tok_s": statistics.median(one),
        "decode_16_tok_s": sum(r[4] for r in results) / wall,
    }


def agreement(tokens: int, threads: int | None) -> float:
    """Greedy next-token agreement of bfloat16 with float32 (SmolLM2, held-out course text)."""
    import torch
    from transformers import AutoTokenizer

    from services.generation.weights.quantize import load_causal_lm

    if threads:
        torch.set_num_threads(threads)

    path = smollm2_path()
    ids = AutoTokenizer.from_pretrained(path)(long_prompt(tokens), return_tensors="pt")["input_ids"][:, :tokens]
    with torch.inference_mode():
        preds = [load_causal_lm(path, dtype=d)(ids).logits[0].argmax(-1) for d in (torch.float32, torch.bfloat16)]
    return float((preds[0] == preds[1]).float().mean())


def llama_cpp(max_tokens: int, threads: int | None) -> float | None:
    """llama.cpp's decode tokens/s at one stream on the packaged GGUF, or None where it is not built."""
    if LLAMA_CPP_DIR.is_dir() and str(LLAMA_CPP_DIR) not in sys.path:
        sys.path.append(str(LLAMA_CPP_DIR))  # after the environment's own packages
    if importlib.util.find_spec("llama_cpp") is None:
        return None
    from llama_cpp import Llama  # type: ignore[import-not-found]

    llm = Llama(model_path=str(packaged_gguf()), n_ctx=2048, n_threads=threads or os.cpu_count() or 1, verbose=False)
    messages = [{"role": "user", "content": SHORT}]
    rates = []
    for _ in range(3):
        start, first, n = time.perf_counter(), None, 0
        for _chunk in llm.create_chat_completion(messages, max_tokens=max_tokens, temperature=0, stream=True):
            first = first or time.perf_counter()
            n += 1
        rates.append((n - 1) / (time.perf_counter() - (first or start)))
    return statistics.median(rates)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--prefill-tokens", type=int, default=1500)
    ap.add_argument("--threads", type=int, help="INFERAG_GEN_NUM_THREADS (default: the service's, torch's choice)")
    args = ap.parse_args()
    max_tokens = 32 if args.quick else 64
    auto = cpu_auto_dtype()
    common = {
        "INFERAG_GEN_ENGINE": "transformers",
        "INFERAG_GEN_MODEL": smollm2_path(),
        "INFERAG_GEN_SERVED_MODEL_NAME": MODEL,
        "INFERAG_GEN_MAX_MODEL_LEN": "2048",
        "INFERAG_GEN_MAX_BATCH_SIZE": "16",
        "INFERAG_GEN_LOG_LEVEL": "warning",
    }
    if args.threads:
        common["INFERAG_GEN_NUM_THREADS"] = str(args.threads)
    report: dict[str, dict[str, float]] = {}
    for dtype in ("float32", "bfloat16", "auto"):
        if dtype == "auto" and auto in report:
            continue
        with running("services.generation.app", {**common, "INFERAG_GEN_DTYPE": dtype}, timeout=900) as base:
            served = httpx.get(base + "/v1/models").json()["data"][0]["details"]["dtype"]
            report[served if dtype == "auto" else dtype] = asyncio.run(measure(base, args.prefill_tokens, max_tokens))
            assert dtype == "auto" or served == dtype, (dtype, served)
    report["auto"] = report[auto]
    agree = agreement(256, args.threads)
    llama = llama_cpp(max_tokens, args.threads)

    flags = sorted(cpu_flags() & {"avx2", "avx512f", "avx512_bf16", "amx_bf16"})
    threads = args.threads or "torch's"
    print(f"\nSmolLM2-135M-Instruct, {os.cpu_count()} CPUs, {threads} threads, flags {' '.join(flags)}")
    print(
        f"auto -> {auto}; prefill prompt {int(report['float32']['prompt_tokens'])} tokens; {max_tokens} tokens/request"
    )
    print(f"{'dtype':10} {'prefill tok/s':>14} {'decode 1 tok/s':>15} {'decode 16 tok/s':>16}")
    for name in ("float32", "bfloat16", "auto"):
        r = report[name]
        label = name if name != "auto" else f"auto={auto}"
        print(f"{label:10} {r['prefill_tok_s']:>14.1f} {r['decode_1_tok_s']:>15.1f} {r['decode_16_tok_s']:>16.1f}")
    f32, bf16, dflt = report["float32"], report["bfloat16"], report["auto"]
    ratios = {
        "prefill bf16/fp32": bf16["prefill_tok_s"] / f32["prefill_tok_s"],
        "decode@1 bf16/fp32": bf16["decode_1_tok_s"] / f32["decode_1_tok_s"],
        "decode@16 bf16/fp32": bf16["decode_16_tok_s"] / f32["decode_16_tok_s"],
        "default decode 16 streams / 1 stream (goal >= 5)": dflt["decode_16_tok_s"] / dflt["decode_1_tok_s"],
        "bf16 greedy next-token agreement with fp32 (256 tokens)": agree,
    }
    if llama is None:
        print(f"llama.cpp: skipped (not built here: `make llama-cpp` builds llama-cpp-python into {LLAMA_CPP_DIR})")
    else:
        print(f"llama.cpp (packaged GGUF) decode 1 tok/s {llama:.1f}")
        ratios["default decode@1 / llama.cpp (goal >= 1)"] = dflt["decode_1_tok_s"] / llama
    print()
    for k, v in ratios.items():
        print(f"{k:58} {v:6.2f}")
    out = REPO_ROOT / ".bench"
    out.mkdir(exist_ok=True)
    (out / "cpu.json").write_text(json.dumps({"auto": auto, "results": report, "llama_cpp": llama, "ratios": ratios}))


if __name__ == "__main__":
    main()
