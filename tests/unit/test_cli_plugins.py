"""One `inferag` command over two distributions: the client's owns the script, the server's commands plug in
through the `inferag.cli` entry-point group (tests/e2e/test_cli.py runs them; test_client_install.py checks a
client-only install has none of them)."""

from __future__ import annotations

import tomllib
from importlib import import_module
from pathlib import Path

import typer

ROOT = Path(__file__).resolve().parents[2]


def test_the_client_owns_the_script_and_the_server_plugs_in() -> None:
    client = tomllib.loads((ROOT / "clients" / "pyproject.toml").read_text())["project"]
    server = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert client["scripts"] == {"inferag": "inferag_client.cli:main"} and "scripts" not in server
    module, _, name = server["entry-points"]["inferag.cli"]["server"].partition(":")
    app = typer.Typer()
    getattr(import_module(module), name)(app)
    commands = {c.name or c.callback.__name__ for c in app.registered_commands if c.callback}
    commands |= {g.name for g in app.registered_groups}
    assert commands == {"eval", "serve", "weights"}
    from inferag_client.cli import collections_app

    assert "migrate" in {c.name for c in collections_app.registered_commands}
