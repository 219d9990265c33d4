"""Static checks of the deploy files (no Docker engine runs here)."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]


def test_compose_services_have_healthchecks_and_pinned_images() -> None:
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    assert set(compose["services"]) == {"generation", "embeddings", "gateway"}
    for name, svc in compose["services"].items():
        assert "healthcheck" in svc, name
        assert re.search(r":\d+\.\d+\.\d+$", svc["image"]), f"{name}: image not pinned"
        assert svc["restart"] == "unless-stopped"


def test_every_compose_variable_is_in_env_example() -> None:
    used = set(re.findall(r"\$\{([A-Z0-9_]+)", (ROOT / "docker-compose.yml").read_text()))
    listed = {line.split("=", 1)[0] for line in (ROOT / ".env.example").read_text().splitlines() if "=" in line}
    assert used <= listed, used - listed


def test_dockerfiles_pin_bases_and_run_as_non_root() -> None:
    for name in ("Dockerfile", "Dockerfile.vllm"):
        text = (ROOT / "deploy" / name).read_text()
        for base in re.findall(r"^FROM (\S+)", text, re.M):
            assert ":" in base or base in {"base", "deps"}, base
        assert re.search(r"^USER inferag$", text, re.M), name
