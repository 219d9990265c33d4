"""The startup pipeline as the app calls it: validate the quantization first, merge (cached), describe."""

from __future__ import annotations

import inspect
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from services.generation.models import PACKAGED_ADAPTERS, PACKAGED_DEFAULT
from services.generation.settings import GenerationSettings
from services.generation.weights import merge as M
from services.generation.weights.errors import UnsupportedQuantization, WeightsError
from services.generation.weights.startup import prepare_served_weights, served_adapters
from tests.unit.test_weights_merge import make_adapter


@pytest.fixture(scope="module")
def adapter(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path) -> Path:
    return make_adapter(tiny_model_dir, tmp_path_factory.mktemp("adapter") / "a", r=4, alpha=8, seed=5).resolve()


def test_served_weights_without_adapters(tiny_model_dir: Path, tmp_path: Path) -> None:
    served = prepare_served_weights(model="tiny", model_path=str(tiny_model_dir), adapters=None, quantization="int8",
                                    engine="transformers", cache_dir=tmp_path, has_cuda=False)
    assert served.path == str(tiny_model_dir) and served.quantization == "int8"
    assert served.details() == {"base": "tiny", "adapters": [], "default_adapter": None, "quantization": "int8",
                                "weights_cache_hit": None}


def test_served_weights_with_adapter_cached(tiny_model_dir: Path, adapter: Path, tmp_path: Path) -> None:
    kwargs = {"model": "tiny", "model_path": str(tiny_model_dir), "adapters": f"{adapter}:0.5",
              "quantization": "fp8_per_channel", "engine": "vllm", "cache_dir": tmp_path, "has_cuda": False}
    first = prepare_served_weights(**kwargs)  # type: ignore[arg-type]
    assert first.path.startswith(str(tmp_path)) and first.quantization == "fp8_per_channel"
    runs = M.merges_run
    second = prepare_served_weights(**kwargs)  # type: ignore[arg-type]
    assert second.path == first.path and M.merges_run == runs
    details = second.details()
    assert details["adapters"] == [{"path": str(adapter), "weight": 0.5}]
    assert details["quantization"] == "fp8_per_channel" and details["weights_cache_hit"] is True


def test_unsupported_quantization_fails_before_merging(tiny_model_dir: Path, adapter: Path, tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    def no_merge(*args: object, **kwargs: object) -> None:
        raise AssertionError("must refuse before merging")

    monkeypatch.setattr(M, "merge_adapters", no_merge)
    cases = [("transformers", "bnb-4bit", "needs a CUDA GPU"), ("vllm", "bitsandbytes", "bitsandbytes"),
             ("vllm", "awq", "LoRA-merged model"), ("vllm", "int8", "transformers-engine method")]
    for engine, method, message in cases:
        with pytest.raises(UnsupportedQuantization, match=message):
            prepare_served_weights(model="tiny", model_path=str(tiny_model_dir), adapters=[str(adapter)],
                                   quantization=method, engine=engine, cache_dir=tmp_path, has_cuda=False)


@pytest.mark.asyncio(loop_scope="session")
async def test_app_refuses_bnb_on_cpu_at_startup(tiny_model_dir: Path) -> None:
    import torch

    from services.generation.app import load_service

    if torch.cuda.is_available():
        pytest.skip("has CUDA")
    settings = GenerationSettings(model=str(tiny_model_dir), engine="transformers", quantization="bnb-4bit")
    with pytest.raises(UnsupportedQuantization, match="needs a CUDA GPU"):
        await load_service(settings, CollectorRegistry())


@pytest.mark.asyncio(loop_scope="session")
async def test_app_serves_merged_int8_and_reports_it(tiny_model_dir: Path, adapter: Path, tmp_path: Path) -> None:
    from services.generation.app import load_service
    from services.generation.engines.transformers_engine import TransformersEngine
    from services.generation.weights.quantize import Int8Linear

    assert "quantization" in inspect.signature(TransformersEngine).parameters
    settings = GenerationSettings(model=str(tiny_model_dir), engine="transformers", quantization="int8",
                                  adapters=f"{adapter}:0.5", served_model_name="tiny",
                                  weights_cache_dir=tmp_path)
    service = await load_service(settings, CollectorRegistry())
    try:
        card = service.models().data[0]
        assert card.details is not None
        assert card.details["base"] == str(tiny_model_dir)
        assert card.details["adapters"] == [{"path": str(adapter), "weight": 0.5}]
        assert card.details["quantization"] == "int8"
        model = service.engine._model  # type: ignore[attr-defined]
        assert any(isinstance(m, Int8Linear) for m in model.modules())
    finally:
        await service.engine.stop()


GROUNDED = PACKAGED_ADAPTERS["grounded-smollm2"]


def test_packaged_model_gets_the_grounded_adapter_unless_told_otherwise(adapter: Path) -> None:
    spec = M.AdapterSpec(str(GROUNDED))
    assert served_adapters(PACKAGED_DEFAULT, None, "grounded-smollm2") == ([spec], "grounded-smollm2")
    assert served_adapters(PACKAGED_DEFAULT, None, "none") == ([], None)
    assert served_adapters(PACKAGED_DEFAULT, "", "grounded-smollm2") == ([spec], "grounded-smollm2")
    # the user's adapters replace it; its name keeps it among them
    assert served_adapters(PACKAGED_DEFAULT, f"{adapter}:0.5", "grounded-smollm2") == (
        [M.AdapterSpec(str(adapter), 0.5)], None)  # fmt: skip
    assert served_adapters(PACKAGED_DEFAULT, f"grounded-smollm2:0.8,{adapter}", "grounded-smollm2") == (
        [M.AdapterSpec(str(GROUNDED), 0.8), M.AdapterSpec(str(adapter))], None)  # fmt: skip
    # any other model (a folder, a hub id, even the converted copy of the default) is served as given
    assert served_adapters("/models/smollm2-135m-instruct", None, "grounded-smollm2") == ([], None)


def test_default_adapter_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    from pydantic import ValidationError

    assert GenerationSettings().default_adapter == "grounded-smollm2"  # on by default: it beats the plain model
    monkeypatch.setenv("INFERAG_GEN_DEFAULT_ADAPTER", "none")
    assert GenerationSettings().default_adapter == "none"
    monkeypatch.setenv("INFERAG_GEN_DEFAULT_ADAPTER", "Grounded-SmolLM2")
    assert GenerationSettings().default_adapter == "grounded-smollm2"
    with pytest.raises(ValidationError, match="unknown packaged adapter 'nope'"):
        GenerationSettings(default_adapter="nope")


def test_missing_packaged_adapter_is_a_clear_error(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setitem(PACKAGED_ADAPTERS, "grounded-smollm2", tmp_path / "gone")
    with pytest.raises(WeightsError, match="INFERAG_GEN_DEFAULT_ADAPTER=none"):
        served_adapters(PACKAGED_DEFAULT, None, "grounded-smollm2")


def test_committed_adapter_is_a_small_lora_for_smollm2() -> None:
    """The adapter in the package: a peft LoRA of a few MB whose shapes fit SmolLM2-135M (576 wide, 30 layers)."""
    import json

    from safetensors import safe_open

    config = json.loads((GROUNDED / "adapter_config.json").read_text())
    weights = GROUNDED / "adapter_model.safetensors"
    assert config["peft_type"] == "LORA" and config["r"] <= 32
    assert weights.stat().st_size < 16 * 2**20
    dims = {"q_proj": (576, 576), "k_proj": (576, 192), "v_proj": (576, 192), "o_proj": (576, 576),
            "gate_proj": (576, 1536), "up_proj": (576, 1536), "down_proj": (1536, 576)}  # fmt: skip
    layers = set()
    with safe_open(str(weights), framework="pt") as f:
        for name in f.keys():  # noqa: SIM118 - safe_open is not a dict
            module = next(m for m in dims if f".{m}." in name)
            layers.add(int(name.split(".layers.")[1].split(".")[0]))
            shape = f.get_slice(name).get_shape()
            d_in, d_out = dims[module]
            assert shape == ([config["r"], d_in] if "lora_A" in name else [d_out, config["r"]]), (name, shape)
    assert layers == set(range(30))
    trained = json.loads((GROUNDED / "train_result.json").read_text())
    assert trained["best_val_loss"] < trained["initial_val_loss"]


@pytest.mark.asyncio(loop_scope="session")
@pytest.mark.parametrize("default_adapter", ["grounded-smollm2", "none"])
async def test_app_merges_the_packaged_adapter_into_the_packaged_model_unless_off(
    default_adapter: str, tiny_model_dir: Path, adapter: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The app's wiring: nothing configured, the packaged default model is served merged with the packaged
    adapter (a tiny model and a tiny adapter stand in for them); INFERAG_GEN_DEFAULT_ADAPTER=none serves it plain."""
    import services.generation.app as app_module

    monkeypatch.setattr(app_module, "resolve_model", lambda model, data_dir: str(tiny_model_dir))
    monkeypatch.setitem(PACKAGED_ADAPTERS, "grounded-smollm2", adapter)
    monkeypatch.setenv("INFERAG_GEN_DEFAULT_ADAPTER", default_adapter)
    settings = GenerationSettings(engine="transformers", weights_cache_dir=tmp_path)
    assert settings.model == PACKAGED_DEFAULT
    service = await app_module.load_service(settings, CollectorRegistry())
    try:
        details = service.models().data[0].details
        assert details is not None
        if default_adapter == "none":
            assert details["adapters"] == [] and details["default_adapter"] is None
        else:
            assert details["adapters"] == [{"path": str(adapter), "weight": 1.0}]
            assert details["default_adapter"] == "grounded-smollm2"
    finally:
        await service.engine.stop()
