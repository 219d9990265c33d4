"""Several generation models behind the gateway: the settings and which service answers which model."""

from __future__ import annotations

from pathlib import Path

import pytest

from services.gateway.models import ModelRouter, load_models_file, request_model
from services.gateway.settings import GatewaySettings


def test_urls_from_pairs_json_and_a_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("INFERAG_GENERATION_URLS", "qwen=http://qwen:8000, tiny=http://tiny:8000")
    monkeypatch.setenv("INFERAG_GEN_EXTRA_MODELS", '{"small": "/models/small"}')
    settings = GatewaySettings()
    assert settings.generation_urls == {"qwen": "http://qwen:8000", "tiny": "http://tiny:8000"}
    assert settings.gen_extra_models == {"small": "/models/small"}
    models = tmp_path / "models.yaml"
    models.write_text("models:\n  llama: http://llama:8000\n  qwen: http://old-qwen:8000\n")
    settings = GatewaySettings(models_file=models)
    # the variable wins over the file for a name in both
    assert settings.model_urls() == {"llama": "http://llama:8000", "qwen": "http://qwen:8000",
                                     "tiny": "http://tiny:8000"}  # fmt: skip
    models.write_text('[{"name": "a", "url": "http://a"}]')
    assert load_models_file(models) == {"a": "http://a"}


@pytest.mark.parametrize("value", ["qwen", "=http://x", "a=", "{not json"])
def test_bad_urls_are_refused(value: str) -> None:
    with pytest.raises(ValueError):
        GatewaySettings(generation_urls=value)


def test_bad_models_file(tmp_path: Path) -> None:
    path = tmp_path / "m.yaml"
    path.write_text("- 3\n")
    with pytest.raises(ValueError, match="mapping"):
        load_models_file(path)
    with pytest.raises(ValueError):
        load_models_file(tmp_path / "missing.yaml")


def test_router() -> None:
    one = ModelRouter({"smol": "generation"})
    assert one.service_for("smol") == "generation"
    assert one.service_for("other") == "generation"  # one service: it answers unknown names itself
    assert one.service_for(None) == "generation"
    several = ModelRouter({"smol": "generation", "tiny": "generation:tiny"})
    assert several.services == ["generation", "generation:tiny"]
    assert several.service_for("tiny") == "generation:tiny"
    assert several.service_for(None) == "generation"
    assert several.service_for("other") is None
    with pytest.raises(ValueError):
        ModelRouter({"rag:kb": "generation:x"})


def test_request_model() -> None:
    assert request_model(b'{"model": "m", "x": 1}') == "m"
    assert request_model(b'{"model": 3}') is None
    assert request_model(b"[1]") is None and request_model(b"{nope") is None
