"""The offline `weights` CLI: merge, quantize, inspect, finetune (tiny random Llama)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from typer.testing import CliRunner

from services.generation.weights.cli import app
from tests.unit.test_weights_merge import lora_deltas, make_adapter

runner = CliRunner()


def test_merge_then_inspect(tiny_model_dir: Path, tmp_path: Path) -> None:
    from transformers import AutoModelForCausalLM

    a1 = make_adapter(tiny_model_dir, tmp_path / "a1", r=4, alpha=8, seed=1)
    a2 = make_adapter(tiny_model_dir, tmp_path / "a2", r=4, alpha=4, seed=2)
    out = tmp_path / "merged"
    r = runner.invoke(app, ["merge", str(tiny_model_dir), "--adapter", f"{a1}:0.5", "-a", str(a2), "--out", str(out)])
    assert r.exit_code == 0, r.output
    merged: Any = AutoModelForCausalLM.from_pretrained(str(out), dtype=torch.float32)
    base: Any = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir), dtype=torch.float32)
    d1, d2 = lora_deltas(a1), lora_deltas(a2)
    name = next(iter(d1))
    torch.testing.assert_close(merged.get_submodule(name).weight,
                               base.get_submodule(name).weight + 0.5 * d1[name] + d2[name], atol=1e-5, rtol=0)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".tmp-")]

    again = runner.invoke(app, ["merge", str(tiny_model_dir), "-a", str(a1), "--out", str(out)])
    assert again.exit_code == 1 and "--force" in again.output

    r = runner.invoke(app, ["inspect", str(out), "--json"])
    assert r.exit_code == 0, r.output
    info = json.loads(r.output)
    assert info["kind"] == "model" and info["quantization"] is None
    assert [a["weight"] for a in info["merged"]["adapters"]] == [0.5, 1.0]
    assert info["parameters"] == sum(p.numel() for p in base.parameters())  # tied weights stored once
    assert runner.invoke(app, ["inspect", str(a1)]).exit_code == 0


def test_quantize_int8_and_inspect(tiny_model_dir: Path, tmp_path: Path) -> None:
    from services.generation.weights.quantize import load_causal_lm

    out = tmp_path / "int8"
    r = runner.invoke(app, ["quantize", str(tiny_model_dir), "--method", "int8", "--out", str(out)])
    assert r.exit_code == 0, r.output
    assert "of fp32" in r.output
    model = load_causal_lm(str(out))
    assert model(input_ids=torch.tensor([[1, 2, 3]])).logits.shape[-1] == model.config.vocab_size
    assert (out / "tokenizer.json").is_file()
    info = json.loads(runner.invoke(app, ["inspect", str(out), "--json"]).output)
    assert info["quantization"] == "int8" and "I8" in info["parameters_by_dtype"]

    r = runner.invoke(app, ["quantize", str(tiny_model_dir), "--method", "bnb-4bit", "--out", str(tmp_path / "x")])
    assert r.exit_code == 1 and "load time" in r.output


def test_finetune_command(tiny_model_dir: Path, tmp_path: Path) -> None:
    data = tmp_path / "d.jsonl"
    rows = [{"messages": [{"role": "user", "content": f"Q{i}?"}, {"role": "assistant", "content": f"A{i}."}]}
            for i in range(6)]
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "adapter"
    r = runner.invoke(app, ["finetune", str(data), "--base", str(tiny_model_dir), "--out", str(out), "--r", "2",
                            "--alpha", "4", "--max-steps", "2", "--batch-size", "2", "--val-fraction", "0.34",
                            "--threads", "1"])
    assert r.exit_code == 0, r.output
    assert "held-out loss" in r.output and (out / "adapter_model.safetensors").is_file()
