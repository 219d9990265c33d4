"""Quantization after the merge: int8 for the transformers engine, and what each engine refuses on this device."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest
import torch

from services.generation.weights import quantize as Q
from services.generation.weights.errors import UnsupportedQuantization
from services.generation.weights.quantize import (
    Int8Linear,
    check_transformers_quantization,
    check_vllm_quantization,
    linear_fp32_bytes,
    linear_weight_bytes,
    load_causal_lm,
    quantize_int8,
)

# A held-out English text (no calibration is involved; it is simply text the check never saw before).
HELD_OUT = (
    "The history of the bicycle begins in the early nineteenth century, when inventors in Europe experimented "
    "with two-wheeled machines pushed along by the rider's feet. Pedals attached to the front wheel appeared in "
    "the 1860s, and the chain-driven safety bicycle, with two wheels of equal size, followed in the 1880s. "
    "Pneumatic tyres made riding far more comfortable, and within a decade cycling clubs had spread across many "
    "countries. Today bicycles are used for commuting, sport and recreation, and cities build dedicated lanes to "
    "keep riders safe from motor traffic. Maintenance is simple: keep the chain clean and oiled, check the tyre "
    "pressure every week, and make sure the brakes respond firmly before every ride."
)

# vLLM 0.32's method names (vllm.model_executor.layers.quantization.QUANTIZATION_METHODS), so these
# checks run without importing vLLM; test_known_methods_match_installed_vllm keeps them honest.
VLLM_032 = [
    "awq", "auto_awq", "fp8", "fbgemm_fp8", "fp_quant", "modelopt", "modelopt_fp4", "modelopt_mxfp8",
    "modelopt_mixed", "auto_gptq", "gptq", "gptq_marlin", "awq_marlin", "humming", "compressed-tensors",
    "experts_int8", "quark", "moe_wna16", "torchao", "inc", "mxfp4", "gpt_oss_mxfp4", "deepseek_v4_fp8",
    "online", "fp8_per_tensor", "fp8_per_block", "fp8_per_channel", "int8_per_channel_weight_only",
    "nvfp4_per_token", "mxfp8",
]


@pytest.fixture(scope="module")
def smollm2_dir() -> str:
    from tests.tiny_models import smollm2_path

    return smollm2_path()


def test_int8_linear_matches_dequantized_weights() -> None:
    torch.manual_seed(0)
    lin = torch.nn.Linear(64, 48)
    q = Int8Linear.from_linear(lin)
    assert q.weight.dtype == torch.int8 and q.weight_scale.shape == (48,)
    # per-channel rounding error is at most half a step
    err = (q.dequantize() - lin.weight).abs()
    assert bool((err <= q.weight_scale[:, None] / 2 + 1e-7).all())
    for rows in (1, 2, 5, 40):  # the int8 kernel path (few rows) and the dequantize path agree
        x = torch.randn(rows, 64)
        torch.testing.assert_close(q(x), torch.nn.functional.linear(x, q.dequantize(), lin.bias), atol=1e-4, rtol=1e-4)
    x = torch.randn(2, 3, 64)
    assert q(x).shape == (2, 3, 48)


def test_int8_tiny_model_save_and_reload(tiny_model_dir: Path, tmp_path: Path) -> None:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir), dtype=torch.float32).eval()
    ids = torch.randint(0, model.config.vocab_size, (2, 12), generator=torch.Generator().manual_seed(3))
    fp32_bytes = linear_fp32_bytes(model)
    names = quantize_int8(model)
    assert len(names) == 2 * 7 and "lm_head" not in names
    assert model.lm_head.weight is model.model.embed_tokens.weight  # tied head kept, still shared
    assert linear_weight_bytes(model) <= 0.30 * fp32_bytes
    with torch.no_grad():
        expected = model(input_ids=ids).logits
    Q.save_int8(model, tmp_path / "q", names)
    assert not (tmp_path / "q" / "model.safetensors").exists()  # plain from_pretrained can't misread int8
    for loaded in (Q.load_int8(tmp_path / "q"), load_causal_lm(str(tmp_path / "q"), quantization="int8")):
        assert isinstance(loaded.model.layers[0].mlp.down_proj, Int8Linear)
        assert loaded.lm_head.weight is loaded.model.embed_tokens.weight
        with torch.no_grad():
            torch.testing.assert_close(loaded(input_ids=ids).logits, expected, atol=0, rtol=0)
    with pytest.raises(UnsupportedQuantization, match="already quantized"):
        load_causal_lm(str(tmp_path / "q"), quantization="bnb-4bit")


def test_load_causal_lm_int8_on_the_fly(tiny_model_dir: Path) -> None:
    model = load_causal_lm(str(tiny_model_dir), quantization="int8")
    assert sum(isinstance(m, Int8Linear) for m in model.modules()) == 14
    assert not model.training
    plain = load_causal_lm(str(tiny_model_dir), quantization=None)
    assert not any(isinstance(m, Int8Linear) for m in plain.modules())


@pytest.mark.slow
def test_int8_smollm2_size_and_greedy_agreement(smollm2_dir: str) -> None:
    """Linear weights <= 30% of their fp32 bytes; greedy next token agrees with fp32 on >= 90% of positions."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(smollm2_dir)
    ids = tok(HELD_OUT, return_tensors="pt").input_ids
    model = AutoModelForCausalLM.from_pretrained(smollm2_dir, dtype=torch.float32).eval()
    with torch.no_grad():
        reference = model(input_ids=ids).logits.argmax(-1)
    fp32 = linear_fp32_bytes(model)
    assert linear_weight_bytes(model) == fp32
    t0 = time.perf_counter()
    quantize_int8(model)
    ratio = linear_weight_bytes(model) / fp32
    with torch.no_grad():
        got = model(input_ids=ids).logits.argmax(-1)
    agreement = float((got == reference).float().mean())
    print(f"int8: linear bytes {ratio:.1%} of fp32, greedy agreement {agreement:.1%} over {ids.shape[1]} "
          f"positions ({time.perf_counter() - t0:.1f}s)")
    assert ratio <= 0.30
    assert agreement >= 0.90


def test_transformers_methods() -> None:
    assert check_transformers_quantization(None) is None
    assert check_transformers_quantization("none") is None
    assert check_transformers_quantization("INT8", has_cuda=False) == "int8"
    with pytest.raises(UnsupportedQuantization, match="needs a CUDA GPU"):
        check_transformers_quantization("bnb-4bit", has_cuda=False)
    with pytest.raises(UnsupportedQuantization, match="vLLM method"):
        check_transformers_quantization("fp8_per_channel", has_cuda=False)
    with pytest.raises(UnsupportedQuantization, match="supports: int8"):
        check_transformers_quantization("int3", has_cuda=False)


def _vllm(method: str | None, **kw: Any) -> str | None:
    kw.setdefault("has_cuda", False)
    return check_vllm_quantization(method, known_methods=VLLM_032, vllm_version="0.32.0", **kw)


def _quantized_folder(tmp_path: Path, method: str) -> str:
    folder = tmp_path / method
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"quantization_config": {"quant_method": method}}))
    return str(folder)


def test_vllm_methods_on_cpu(tiny_model_dir: Path, tmp_path: Path) -> None:
    plain = str(tiny_model_dir)
    assert _vllm(None) is None
    assert _vllm("fp8_per_channel", model_path=plain) == "fp8_per_channel"
    assert _vllm("fp8-per-channel", model_path=plain, has_adapters=True) == "fp8_per_channel"
    # "fp8" only loads fp8 checkpoints in vLLM 0.32; on an unquantized one it means online per-tensor fp8.
    assert _vllm("fp8", model_path=plain) == "fp8_per_tensor"
    assert _vllm("fp8", model_path=_quantized_folder(tmp_path, "fp8")) == "fp8"
    assert _vllm("awq", model_path=_quantized_folder(tmp_path, "awq")) == "awq"
    assert _vllm("gptq", model_path=_quantized_folder(tmp_path, "gptq")) == "gptq"
    ct = _quantized_folder(tmp_path, "compressed-tensors")
    assert _vllm("compressed-tensors", model_path=ct) == "compressed-tensors"

    with pytest.raises(UnsupportedQuantization, match="bitsandbytes was removed"):
        _vllm("bitsandbytes", model_path=plain)
    with pytest.raises(UnsupportedQuantization, match="is not quantized.*fp8_per_channel"):
        _vllm("awq", model_path=plain)
    with pytest.raises(UnsupportedQuantization, match="LoRA-merged model"):
        _vllm("gptq", model_path=plain, has_adapters=True)
    with pytest.raises(UnsupportedQuantization, match="can't be merged into a awq-quantized base"):
        _vllm("awq", model_path=str(tmp_path / "awq"), has_adapters=True)
    with pytest.raises(UnsupportedQuantization, match="needs a CUDA GPU"):
        _vllm("mxfp8", model_path=plain)
    with pytest.raises(UnsupportedQuantization, match="needs a CUDA GPU"):
        _vllm("nvfp4_per_token", model_path=plain)
    with pytest.raises(UnsupportedQuantization, match="transformers-engine method"):
        _vllm("int8", model_path=plain)
    with pytest.raises(UnsupportedQuantization, match="no quantization method 'int3'"):
        _vllm("int3", model_path=plain)


def test_vllm_methods_with_cuda(tiny_model_dir: Path) -> None:
    plain = str(tiny_model_dir)
    assert _vllm("mxfp8", model_path=plain, has_cuda=True) == "mxfp8"
    assert _vllm("fp8_per_block", model_path=plain, has_cuda=True) == "fp8_per_block"
    with pytest.raises(UnsupportedQuantization, match="bitsandbytes"):
        _vllm("bitsandbytes", model_path=plain, has_cuda=True)


def test_vllm_refuses_inferag_int8_folder(tiny_model_dir: Path, tmp_path: Path) -> None:
    model = load_causal_lm(str(tiny_model_dir), quantization="int8")
    names = [n for n, m in model.named_modules() if isinstance(m, Int8Linear)]
    Q.save_int8(model, tmp_path / "q", names)
    with pytest.raises(UnsupportedQuantization, match="only the transformers engine"):
        _vllm("fp8_per_channel", model_path=str(tmp_path / "q"))


@pytest.mark.vllm
@pytest.mark.slow
def test_known_methods_match_installed_vllm() -> None:
    pytest.importorskip("vllm")
    version, known = Q.vllm_known_methods()
    assert known is not None
    if version == "0.32.0":
        assert sorted(known) == sorted(VLLM_032)
    assert "fp8_per_channel" in known and "bitsandbytes" not in known
