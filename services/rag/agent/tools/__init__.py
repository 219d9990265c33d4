"""The tool registry: every module of this package that defines `TOOL` is a tool.

Adding a tool is one file here with a pydantic arguments model, an async function
`(args, ctx) -> observation text` and `TOOL = AgentTool(...)`.
"""

from __future__ import annotations

import importlib
import pkgutil

from .base import AgentTool, ToolContext


def _discover() -> dict[str, AgentTool]:
    found: dict[str, AgentTool] = {}
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        if info.name.startswith("_") or info.name == "base":
            continue
        tool = getattr(importlib.import_module(f"{__name__}.{info.name}"), "TOOL", None)
        if isinstance(tool, AgentTool):
            if tool.name in found:
                raise RuntimeError(f"two agent tools are named {tool.name!r}")
            found[tool.name] = tool
    return found


REGISTRY: dict[str, AgentTool] = _discover()

__all__ = ["REGISTRY", "AgentTool", "ToolContext"]
