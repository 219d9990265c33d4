"""LoRA merge at startup: the math, the weighted combination, the cache and its crash safety (tiny random Llama)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest
import torch

from services.generation.weights import merge as M
from services.generation.weights.errors import WeightsError
from services.generation.weights.merge import AdapterSpec, parse_adapters, prepare_weights

TARGETS = ["q_proj", "v_proj", "o_proj", "down_proj"]


def _load(path: str | Path) -> Any:
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.float32).eval()


def make_adapter(base: Path, out: Path, *, r: int, alpha: int, seed: int, targets: list[str] = TARGETS) -> Path:
    """A random LoRA adapter with B != 0 (init_lora_weights=False), saved in peft format."""
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(seed)
    model = get_peft_model(_load(base), LoraConfig(r=r, lora_alpha=alpha, target_modules=targets,
                                                   init_lora_weights=False))
    model.save_pretrained(str(out))
    return out


def lora_deltas(adapter: Path) -> dict[str, torch.Tensor]:
    """{module name in the base model: (alpha / r) * B @ A} straight from the adapter files."""
    from safetensors.torch import load_file

    cfg = json.loads((adapter / "adapter_config.json").read_text())
    state = load_file(str(adapter / "adapter_model.safetensors"))
    scale = cfg["lora_alpha"] / cfg["r"]
    deltas = {}
    for key, a in state.items():
        if ".lora_A." not in key:
            continue
        b = state[key.replace(".lora_A.", ".lora_B.")]
        module = key.split(".lora_A.")[0].removeprefix("base_model.model.")
        deltas[module] = scale * (b @ a)
    return deltas


@pytest.fixture(scope="module")
def base(tiny_model_dir: Path) -> Path:
    return tiny_model_dir


@pytest.fixture(scope="module")
def adapters(tmp_path_factory: pytest.TempPathFactory, base: Path) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("adapters")
    a1 = make_adapter(base, root / "a1", r=4, alpha=8, seed=1)
    # Different rank and targets: a "linear" combination could not even be built.
    a2 = make_adapter(base, root / "a2", r=2, alpha=16, seed=2, targets=["q_proj", "gate_proj"])
    return a1, a2


def test_merged_weights_equal_w_plus_scaled_ba(base: Path, adapters: tuple[Path, Path], tmp_path: Path) -> None:
    a1, _ = adapters
    prepared = prepare_weights(str(base), [AdapterSpec(str(a1))], tmp_path)
    merged, original = _load(prepared.path), _load(base)
    deltas = lora_deltas(a1)
    assert len(deltas) == 2 * len(TARGETS)  # every targeted layer of both decoder layers
    for name, delta in deltas.items():
        expected = original.get_submodule(name).weight + delta
        torch.testing.assert_close(merged.get_submodule(name).weight, expected, atol=1e-5, rtol=0)
    # untargeted layers untouched
    torch.testing.assert_close(merged.model.layers[0].self_attn.k_proj.weight,
                               original.model.layers[0].self_attn.k_proj.weight, atol=0, rtol=0)


def test_merged_logits_equal_unmerged_peft_model(base: Path, adapters: tuple[Path, Path], tmp_path: Path) -> None:
    from peft import PeftModel

    a1, _ = adapters
    prepared = prepare_weights(str(base), [AdapterSpec(str(a1))], tmp_path)
    peft_model = PeftModel.from_pretrained(_load(base), str(a1)).eval()
    merged = _load(prepared.path)
    gen = torch.Generator().manual_seed(1234)
    ids = torch.randint(0, merged.config.vocab_size, (3, 17), generator=gen)
    with torch.no_grad():
        expected = peft_model(input_ids=ids).logits
        got = merged(input_ids=ids).logits
    assert (expected - _load(base)(input_ids=ids).logits).abs().max() > 1e-2  # the adapter matters
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=0)


def test_two_weighted_adapters_merge_as_weighted_sum(base: Path, adapters: tuple[Path, Path], tmp_path: Path) -> None:
    a1, a2 = adapters
    w1, w2 = 0.7, -0.4
    prepared = prepare_weights(str(base), [AdapterSpec(str(a1), w1), AdapterSpec(str(a2), w2)], tmp_path)
    merged, original = _load(prepared.path), _load(base)
    d1, d2 = lora_deltas(a1), lora_deltas(a2)
    for name in sorted(set(d1) | set(d2)):
        expected = original.get_submodule(name).weight.clone()
        expected += w1 * d1.get(name, 0) + w2 * d2.get(name, 0)
        torch.testing.assert_close(merged.get_submodule(name).weight, expected, atol=1e-5, rtol=0)
    assert [a["weight"] for a in prepared.adapters] == [w1, w2]


def test_single_adapter_weight_scales_its_delta(base: Path, adapters: tuple[Path, Path], tmp_path: Path) -> None:
    a1, _ = adapters
    prepared = prepare_weights(str(base), [AdapterSpec(str(a1), 0.25)], tmp_path)
    merged, original = _load(prepared.path), _load(base)
    for name, delta in lora_deltas(a1).items():
        torch.testing.assert_close(merged.get_submodule(name).weight, original.get_submodule(name).weight
                                   + 0.25 * delta, atol=1e-5, rtol=0)


def test_no_adapters_serves_the_base_unchanged(base: Path, tmp_path: Path) -> None:
    prepared = prepare_weights(str(base), [], tmp_path)
    assert prepared.path == str(base) and not prepared.cache_hit and prepared.key is None
    assert not any(tmp_path.iterdir())


def test_cache_hit_runs_no_merge_and_changed_adapter_rebuilds(
    base: Path, adapters: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    adapter = Path(shutil.copytree(adapters[0], tmp_path / "adapter"))
    cache = tmp_path / "cache"
    first = prepare_weights(str(base), [AdapterSpec(str(adapter))], cache)
    assert not first.cache_hit
    assert (Path(first.path) / M.MARKER).is_file()
    for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja", "config.json"):
        assert (Path(first.path) / name).is_file(), name

    runs = M.merges_run

    def no_merge(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("a cache hit must not merge")

    monkeypatch.setattr(M, "merge_adapters", no_merge)
    second = prepare_weights(str(base), [AdapterSpec(str(adapter))], cache)
    assert second.cache_hit and second.path == first.path and second.key == first.key
    assert M.merges_run == runs
    monkeypatch.undo()

    # Another weight is another merge.
    weighted = prepare_weights(str(base), [AdapterSpec(str(adapter), 0.5)], cache)
    assert not weighted.cache_hit and weighted.key != first.key

    # Change the adapter file's content: new key, rebuilt, and the merge reflects the new weights.
    from safetensors.torch import load_file, save_file

    file = adapter / "adapter_model.safetensors"
    state = load_file(str(file))
    state = {k: v * 2 if ".lora_B." in k else v for k, v in state.items()}
    save_file(state, str(file))
    third = prepare_weights(str(base), [AdapterSpec(str(adapter))], cache)
    assert not third.cache_hit and third.key != first.key
    assert M.merges_run == runs + 2
    name, delta = next(iter(lora_deltas(adapter).items()))
    torch.testing.assert_close(_load(third.path).get_submodule(name).weight,
                               _load(base).get_submodule(name).weight + delta, atol=1e-5, rtol=0)


def test_interrupted_merge_leaves_no_loadable_cache(
    base: Path, adapters: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cache = tmp_path / "cache"
    specs = [AdapterSpec(str(adapters[0]))]

    def crash_midway(model: Any, out: Path) -> None:
        (out / "config.json").write_text(json.dumps(model.config.to_dict()))
        (out / "model.safetensors").write_bytes(b"half a file")
        raise KeyboardInterrupt("killed while writing")

    monkeypatch.setattr(M, "_write_model", crash_midway)
    with pytest.raises(KeyboardInterrupt):
        prepare_weights(str(base), specs, cache)
    monkeypatch.undo()
    key_dirs = [p for p in cache.iterdir() if p.is_dir()]
    assert key_dirs == []  # nothing at <key>, and the temporary folder is gone

    # A hard kill (no cleanup) leaves a temporary folder, and a copied-in folder may lack the marker:
    # neither is ever loaded; the next start removes both and merges again.
    runs = M.merges_run
    key = M.cache_key(M.base_identity(base), [M._adapter_record(s) for s in specs], "auto")
    stale_tmp = cache / f".tmp-{key}-crashed"
    stale_tmp.mkdir()
    (stale_tmp / "config.json").write_text("{}")
    unmarked = cache / key
    unmarked.mkdir()
    (unmarked / "config.json").write_text("{}")
    assert not M.is_valid_cache(unmarked, key)

    prepared = prepare_weights(str(base), specs, cache)
    assert not prepared.cache_hit and M.merges_run == runs + 1
    assert prepared.path == str(unmarked) and M.is_valid_cache(unmarked, key)
    assert not stale_tmp.exists()
    _load(prepared.path)  # complete and loadable


def test_parse_adapters() -> None:
    assert parse_adapters(None) == [] and parse_adapters("") == []
    assert parse_adapters("/a/b:0.5, /c ,") == [AdapterSpec("/a/b", 0.5), AdapterSpec("/c", 1.0)]
    assert parse_adapters(["x:-1", AdapterSpec("y", 2)]) == [AdapterSpec("x", -1.0), AdapterSpec("y", 2.0)]
    assert AdapterSpec.parse("C:/weird:path") == AdapterSpec("C:/weird:path")  # not a number: part of the path


def test_bad_inputs_are_refused_clearly(base: Path, tmp_path: Path) -> None:
    with pytest.raises(WeightsError, match="does not exist"):
        prepare_weights(str(base), [AdapterSpec(str(tmp_path / "missing"))], tmp_path / "c")
    (tmp_path / "empty").mkdir()
    with pytest.raises(WeightsError, match="not a peft LoRA adapter"):
        prepare_weights(str(base), [AdapterSpec(str(tmp_path / "empty"))], tmp_path / "c")
    quantized = Path(shutil.copytree(base, tmp_path / "awq-base"))
    cfg = json.loads((quantized / "config.json").read_text())
    cfg["quantization_config"] = {"quant_method": "awq", "bits": 4}
    (quantized / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(WeightsError, match="awq checkpoint"):
        prepare_weights(str(quantized), [AdapterSpec(str(tmp_path / "empty"))], tmp_path / "c")
