"""The client distribution installed alone: `pip install ./clients` in a fresh venv (no system site packages)
brings the SDK, the `inferag` client commands and the wire models without any of the server's heavy
dependencies, and the SDK tests (tests/e2e/test_sdk.py) pass from that venv against a started stack.

One venv for the module; pip's cache keeps the install to seconds after the first run.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.stack import stack
from tests.e2e.test_sdk import KEY, STACK_ENV

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
# The server's dependencies a client-only install must not bring (names as pip lists them, normalized).
LEFT_OUT = ("test_agent", "test_429_is_retried_with_backoff", "test_openai_package_against_the_stack")
SERVER_ONLY = re.compile(r"^(torch|fastapi|langchain.*|langgraph.*|qdrant-client|transformers)$")


def _run(args: list[str], cwd: Path | None = None, ok: bool = True, **env: str) -> subprocess.CompletedProcess[str]:
    """Run without this checkout on the path (no PYTHONPATH)."""
    full = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")} | env
    result = subprocess.run(args, capture_output=True, text=True, env=full, cwd=cwd, check=False, timeout=900)
    assert (result.returncode == 0) == ok, f"{args}: {result.stdout[-4000:]}\n{result.stderr[-4000:]}"
    return result


@pytest.fixture(scope="module")
def venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh venv with `pip install ./clients` (from a copy: the build writes into its source folder)."""
    folder = tmp_path_factory.mktemp("client-venv")
    source = shutil.copytree(
        ROOT / "clients", folder / "clients", ignore=shutil.ignore_patterns("__pycache__", "build", "*.egg-info")
    )
    _run([sys.executable, "-m", "venv", str(folder / "venv")])
    python = folder / "venv" / "bin" / "python"
    _run([str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check", str(source)])
    return python


def _installed(python: Path) -> set[str]:
    listing = json.loads(_run([str(python), "-m", "pip", "list", "--format=json"]).stdout)
    return {re.sub(r"[-_.]+", "-", p["name"]).lower() for p in listing}


def test_the_client_installs_without_the_server(venv: Path) -> None:
    installed = _installed(venv)
    assert "inferag-client" in installed and {"httpx", "httpx-sse", "pydantic", "typer", "rich"} <= installed
    server_only = sorted(name for name in installed if SERVER_ONLY.match(name))
    assert not server_only, f"a client-only install brought {server_only}"
    # The SDK and the wire models come from the venv (not this checkout), and nothing of services/ is there.
    check = "import importlib.util as u, inferag_client, inferag_protocol.agent; print(inferag_client.__file__, " \
        "u.find_spec('services'))"
    where, services = _run([str(venv), "-I", "-c", check], cwd=venv.parent).stdout.split()
    assert Path(where).is_relative_to(venv.parents[1]) and services == "None"
    inferag = str(venv.parent / "inferag")
    commands = _run([inferag, "--help"]).stdout
    assert all(c in commands for c in ("ask", "chat", "ingest", "collections", "graph", "perplexity"))
    assert "No such command" in _run([inferag, "serve"], ok=False).stderr  # the server's commands are not here


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with stack(tmp_path_factory.mktemp("client-stack"), **STACK_ENV) as url:
        yield url


def test_the_sdk_tests_pass_from_the_client_venv(venv: Path, base: str) -> None:
    # The test tools only now, after the installed set was checked; no conftest (it loads the server).
    _run([str(venv), "-m", "pip", "install", "-q", "--disable-pip-version-check", "pytest>=8", "openai>=1.50"])
    # Every resource of both clients; left out (they run in test_sdk.py): the sync agent (the async test calls
    # agent and agent_stream too), the 429 retry (unit-tested: tests/unit/test_sdk_client.py), the openai package.
    result = _run(
        [str(venv), "-m", "pytest", "-q", "-p", "no:cacheprovider", "--noconftest", "tests/e2e/test_sdk.py",
         "-k", f"not {' and not '.join(LEFT_OUT)}"],
        cwd=ROOT,
        SDK_STACK=base,
    )  # fmt: skip
    tests = len(re.findall(r"^def test_", (ROOT / "tests/e2e/test_sdk.py").read_text(), re.M)) - len(LEFT_OUT)
    assert re.search(rf"\b{tests} passed\b", result.stdout) and "failed" not in result.stdout, result.stdout[-3000:]
    listing = _run([str(venv.parent / "inferag"), "collections", "--url", base, "--api-key", KEY, "--json"]).stdout
    assert "sdk-kb" in {c["name"] for c in json.loads(listing)["data"]}
