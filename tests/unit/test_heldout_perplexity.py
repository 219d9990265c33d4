"""`inferag weights finetune`'s held-out perplexity, before and after: the serving path's figure equals the
models' own forward passes (the base, and the base with the adapter merged by peft)."""

from __future__ import annotations

import json
import math
from pathlib import Path

from typer.testing import CliRunner

from services.generation.weights.cli import app
from services.generation.weights.finetune import train_lora
from services.generation.weights.heldout import heldout_perplexity, heldout_texts


def _reference(model: object, tokenizer: object, texts: list[str]) -> float:
    import torch

    nll, tokens = 0.0, 0
    with torch.no_grad():
        for text in texts:
            ids = tokenizer.encode(text, add_special_tokens=False)  # type: ignore[attr-defined]
            logits = model(torch.tensor([ids])).logits[0].float()  # type: ignore[operator]
            logprobs = torch.log_softmax(logits[:-1], dim=-1)
            nll -= float(logprobs.gather(1, torch.tensor(ids[1:])[:, None]).sum())
            tokens += len(ids) - 1
    return math.exp(nll / tokens)


def test_before_and_after_are_the_models_own(tiny_model_dir: Path, tmp_path: Path) -> None:
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    data = tmp_path / "d.jsonl"
    rows = [{"messages": [{"role": "user", "content": f"Q {i}?"}, {"role": "assistant", "content": f"Answer {i}."}]}
            for i in range(8)]  # fmt: skip
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    adapter = tmp_path / "adapter"
    train_lora(str(tiny_model_dir), data, adapter, r=2, alpha=4, lr=5e-2, max_steps=3, batch_size=2,
               val_fraction=0.25, num_threads=1)  # fmt: skip
    report = heldout_perplexity(str(tiny_model_dir), adapter, data, cache_dir=tmp_path / "weights", val_fraction=0.25,
                                num_threads=1)  # fmt: skip

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    texts = heldout_texts(tokenizer, data, 0.25, 0)
    assert report.texts == len(texts) == 2 and report.skipped == 0
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).eval()
    assert math.isclose(report.before, _reference(base, tokenizer, texts), rel_tol=1e-4)
    merged = PeftModel.from_pretrained(base, str(adapter)).merge_and_unload().eval()
    assert math.isclose(report.after, _reference(merged, tokenizer, texts), rel_tol=1e-4)
    assert not math.isclose(report.before, report.after, rel_tol=1e-3)


def test_finetune_command_reports_it(tiny_model_dir: Path, tmp_path: Path) -> None:
    data = tmp_path / "d.jsonl"
    rows = [{"messages": [{"role": "user", "content": f"Q{i}?"}, {"role": "assistant", "content": f"A{i}."}]}
            for i in range(6)]  # fmt: skip
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    args = ["finetune", str(data), "--base", str(tiny_model_dir), "--out", str(tmp_path / "a"), "--r", "2",
            "--alpha", "4", "--max-steps", "1", "--batch-size", "2", "--val-fraction", "0.34", "--threads", "1",
            "--data-dir", str(tmp_path)]  # fmt: skip
    r = CliRunner().invoke(app, args)
    assert r.exit_code == 0, r.output
    assert "held-out perplexity" in r.output and "2 conversations" in r.output
    r = CliRunner().invoke(app, [*args, "--no-perplexity", "--out", str(tmp_path / "b")])
    assert r.exit_code == 0 and "held-out perplexity" not in r.output
