"""The startup pipeline as the app calls it: validate the quantization first, merge (cached), describe."""

from __future__ import annotations

import inspect
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from services.generation.settings import GenerationSettings
from services.generation.weights import merge as M
from services.generation.weights.errors import UnsupportedQuantization
from services.generation.weights.startup import prepare_served_weights
from tests.unit.test_weights_merge import make_adapter


@pytest.fixture(scope="module")
def adapter(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path) -> Path:
    return make_adapter(tiny_model_dir, tmp_path_factory.mktemp("adapter") / "a", r=4, alpha=8, seed=5).resolve()


def test_served_weights_without_adapters(tiny_model_dir: Path, tmp_path: Path) -> None:
    served = prepare_served_weights(model="tiny", model_path=str(tiny_model_dir), adapters=None, quantization="int8",
                                    engine="transformers", cache_dir=tmp_path, has_cuda=False)
    assert served.path == str(tiny_model_dir) and served.quantization == "int8"
    assert served.details() == {"base": "tiny", "adapters": [], "quantization": "int8", "weights_cache_hit": None}


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
