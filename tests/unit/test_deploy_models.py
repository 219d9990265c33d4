"""Several generation models in the deploy files: one Deployment per model in the chart, routed by the gateway."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.unit.test_deploy_files import KEY, compose_file, objects, render, resolved_environment

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
EXTRA = [
    {"name": "qwen", "servedModelName": "qwen2.5-1.5b-instruct", "model": "Qwen/Qwen2.5-1.5B-Instruct"},
    {"name": "smol-cpu", "servedModelName": "smol-cpu", "engine": "transformers", "image": "cpu", "gpus": 0,
     "persistence": {"enabled": False}},
]  # fmt: skip


def _env(deployment: dict[str, Any]) -> dict[str, Any]:
    return {e["name"]: e.get("value") for e in deployment["spec"]["template"]["spec"]["containers"][0]["env"]}


def test_chart_one_deployment_per_model(tmp_path: Path) -> None:
    rendered = render(
        tmp_path, {**KEY, "generation": {"extraModels": EXTRA}, "metrics": {"serviceMonitor": {"enabled": True}}}
    )
    deployments = objects(rendered, "Deployment")
    gens = {n: d for n, d in deployments.items() if n.startswith("prod-inferag-generation")}
    assert set(gens) == {"prod-inferag-generation", "prod-inferag-generation-qwen", "prod-inferag-generation-smol-cpu"}
    qwen, cpu = _env(gens["prod-inferag-generation-qwen"]), _env(gens["prod-inferag-generation-smol-cpu"])
    default = _env(gens["prod-inferag-generation"])
    assert qwen["INFERAG_GEN_MODEL"] == "Qwen/Qwen2.5-1.5B-Instruct"
    assert qwen["INFERAG_GEN_SERVED_MODEL_NAME"] == "qwen2.5-1.5b-instruct"
    assert qwen["INFERAG_GEN_ENGINE"] == default["INFERAG_GEN_ENGINE"] == "vllm"  # the default's settings inherited
    assert cpu["INFERAG_GEN_ENGINE"] == "transformers"
    cpu_pod = gens["prod-inferag-generation-smol-cpu"]["spec"]["template"]["spec"]
    assert "nvidia.com/gpu" not in cpu_pod["containers"][0]["resources"].get("limits", {})
    assert {v["name"]: v for v in cpu_pod["volumes"]}["data"] == {"name": "data", "emptyDir": {}}
    # each Deployment has its own selector and Service, and the default model its volume as before
    selectors = {n: d["spec"]["selector"]["matchLabels"]["app.kubernetes.io/component"] for n, d in gens.items()}
    assert len(set(selectors.values())) == 3
    services = objects(rendered, "Service")
    assert {"prod-inferag-generation-qwen", "prod-inferag-generation-smol-cpu"} <= set(services)
    assert set(objects(rendered, "PersistentVolumeClaim")) >= {"prod-inferag-generation-data",
                                                                "prod-inferag-generation-qwen-data"}  # fmt: skip
    gateway = _env(deployments["prod-inferag-gateway"])
    assert gateway["INFERAG_GENERATION_URL"] == "http://prod-inferag-generation:8000"
    assert gateway["INFERAG_GENERATION_URLS"] == (
        "qwen2.5-1.5b-instruct=http://prod-inferag-generation-qwen:8000,"
        "smol-cpu=http://prod-inferag-generation-smol-cpu:8000"
    )
    assert "prod-inferag-generation-qwen" in objects(rendered, "ServiceMonitor")
    # without extra models, nothing changes for the gateway
    plain = _env(objects(render(tmp_path / "plain", KEY), "Deployment")["prod-inferag-gateway"])
    assert "INFERAG_GENERATION_URLS" not in plain


def test_chart_refuses_an_extra_model_without_a_name(tmp_path: Path) -> None:
    pytest.importorskip("helm_python")
    with pytest.raises(Exception, match="servedModelName"):
        render(tmp_path, {**KEY, "generation": {"extraModels": [{"name": "x"}]}})


def test_compose_second_model_override() -> None:
    override = compose_file(DEPLOY / "compose.second-model.yml")["services"]
    second = override["generation-2"]
    assert second["environment"]["INFERAG_GEN_SERVED_MODEL_NAME"].startswith("${INFERAG_GEN2_SERVED_MODEL_NAME")
    assert set(override["gateway"]["depends_on"]) == {"generation-2"}
    env = resolved_environment("gateway", DEPLOY / "compose.second-model.yml")
    assert env["INFERAG_GENERATION_URLS"] == "qwen2.5-0.5b-instruct=http://generation-2:8000"
    assert resolved_environment("gateway")["INFERAG_GENERATION_URLS"] == ""
