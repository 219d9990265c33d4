"""int8 on the transformers engine: ours (`INFERAG_GEN_QUANTIZATION=int8`) against torchao and optimum-quanto.

Loads SmolLM2-135M-Instruct (the packaged default) the way the engine does (`load_causal_lm`) in
float32 and bfloat16, then with each int8 weight-only implementation over both activation dtypes,
and measures in this process, greedy: decode tokens/s at one stream (`generate` of 48 tokens minus a
1-token call, median of 3), prefill tokens/s of a 1,500-token prompt, and greedy next-token agreement
with float32 on 256 held-out tokens of course text. Ratios are against float32 measured in the
same run. torchao and optimum-quanto are not dependencies of the stack: `make quant-libs` installs
them into a cache folder (`QUANT_LIBS_DIR`, default ~/.cache/inferag/quant-libs) that this script
adds to its path; a library that is not there is skipped with a message.

    .venv/bin/python bench/quant.py          # about 15 minutes on 2 cores
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from services.generation.weights.quantize import load_causal_lm, quantize_int8  # noqa: E402
from tests.servers import REPO_ROOT  # noqa: E402
from tests.tiny_models import smollm2_path  # noqa: E402

QUANT_LIBS_DIR = Path(os.environ.get("QUANT_LIBS_DIR") or Path.home() / ".cache" / "inferag" / "quant-libs")
COURSE = REPO_ROOT / "datasets" / "course" / "course.txt"
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


def torchao_int8(model: Any) -> None:
    from torchao.quantization import Int8WeightOnlyConfig, quantize_

    quantize_(model, Int8WeightOnlyConfig())


def quanto_int8(model: Any) -> None:
    from optimum.quanto import freeze, qint8, quantize

    quantize(model, weights=qint8)
    freeze(model)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tokens", type=int, default=48, help="decoded tokens per measurement")
    args = ap.parse_args()
    if QUANT_LIBS_DIR.is_dir():
        sys.path.append(str(QUANT_LIBS_DIR))  # after the environment's own packages
    from transformers import AutoTokenizer

    path = smollm2_path()
    tokenizer = AutoTokenizer.from_pretrained(path)
    text = COURSE.read_text()
    held_out = tokenizer(text[20000:30000], return_tensors="pt")["input_ids"][:, :256]
    long = tokenizer(text[:12000], return_tensors="pt")["input_ids"][:, :1500]
    chat = [{"role": "user", "content": "Explain what a vector database is."}]
    prompt: Any = tokenizer.apply_chat_template(chat, add_generation_prompt=True, return_tensors="pt", return_dict=True)
    prompt_ids: Any = prompt["input_ids"]

    def decode_rate(model: Any) -> float:
        model.generate(prompt_ids, max_new_tokens=4, min_new_tokens=4, do_sample=False)  # warm-up
        rates = []
        for _ in range(3):
            began = time.perf_counter()
            model.generate(prompt_ids, max_new_tokens=args.tokens, min_new_tokens=args.tokens, do_sample=False)
            whole = time.perf_counter() - began
            began = time.perf_counter()
            model.generate(prompt_ids, max_new_tokens=1, do_sample=False)
            first = time.perf_counter() - began
            rates.append((args.tokens - 1) / (whole - first))
        return statistics.median(rates)

    def prefill_rate(model: Any) -> float:
        model(long[:, :64])
        return long.shape[1] / min(timed(lambda: model(long)) for _ in range(2))

    def timed(fn: Callable[[], Any]) -> float:
        began = time.perf_counter()
        fn()
        return time.perf_counter() - began

    variants: list[tuple[str, str, Callable[[Any], Any] | None]] = [
        ("float32", "float32", None), ("bfloat16", "bfloat16", None),
        ("ours int8", "float32", quantize_int8), ("ours int8", "bfloat16", quantize_int8),
    ]  # fmt: skip
    libraries = (("torchao int8", "torchao", torchao_int8), ("quanto int8", "optimum.quanto", quanto_int8))
    for name, module, apply in libraries:
        if importlib.util.find_spec(module.split(".")[0]) is None:
            print(f"{name}: skipped ({module} not installed: `make quant-libs` puts it in {QUANT_LIBS_DIR})")
            continue
        variants += [(name, "float32", apply), (name, "bfloat16", apply)]
    rows: list[dict[str, Any]] = []
    reference: torch.Tensor | None = None
    with torch.inference_mode():
        for label, dtype, fn in variants:
            model = load_causal_lm(path, dtype=DTYPES[dtype])  # in eval mode
            if fn is not None:
                fn(model)
            predictions = model(held_out).logits[0].argmax(-1)
            reference = predictions if reference is None else reference
            agree = float((predictions == reference).float().mean())
            row = {"variant": label, "activations": dtype, "decode": decode_rate(model),
                   "prefill": prefill_rate(model), "agree": agree}  # fmt: skip
            rows.append(row)
            print(f"  {label:13} {dtype:9} decode {row['decode']:5.1f} tok/s, prefill {row['prefill']:6.1f} tok/s, "
                  f"agreement {row['agree']:.3f}", flush=True)  # fmt: skip
            del model
    base = rows[0]
    print(f"\nSmolLM2-135M-Instruct, {os.cpu_count()} CPUs, {torch.get_num_threads()} threads, torch "
          f"{torch.__version__}; ratios against float32")  # fmt: skip
    print(f"{'weights':14} {'activations':11} {'decode@1 tok/s':>15} {'x fp32':>7} {'prefill tok/s':>14} "
          f"{'x fp32':>7} {'agreement':>10}")  # fmt: skip
    for r in rows:
        print(f"{r['variant']:14} {r['activations']:11} {r['decode']:>15.1f} {r['decode'] / base['decode']:>7.2f} "
              f"{r['prefill']:>14.1f} {r['prefill'] / base['prefill']:>7.2f} {r['agree']:>10.3f}")  # fmt: skip


if __name__ == "__main__":
    main()
