"""What a tool is: a name, a description, an arguments model and an async function.

A tool returns the observation text; it may raise, and the agent turns the error
into an observation. Tools only see the run's `ToolContext`, never the messages.
CPU work in a tool runs in a worker thread (`asyncio.to_thread`), never on the event
loop, and the agent bounds every call with its tool time limit.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ValidationError

from inferag_protocol.rag import ContextMode

from ..kb import KnowledgeBase
from ..sources import SourceBook


@dataclass
class ToolContext:
    kb: KnowledgeBase
    collections: list[str]
    top_k: int
    sources: SourceBook
    max_chars: int
    context_mode: ContextMode = "chunks"
    context_tokens: int = 300


@dataclass(frozen=True)
class AgentTool:
    name: str
    description: str
    args: type[BaseModel]
    run: Callable[[Any, ToolContext], Awaitable[str]]

    def openai_schema(self) -> dict[str, Any]:
        """The tool as an OpenAI function, for `bind_tools`."""
        params = self.args.model_json_schema()
        params.pop("title", None)
        for prop in params.get("properties", {}).values():
            prop.pop("title", None)
        function = {"name": self.name, "description": self.description, "parameters": params}
        return {"type": "function", "function": function}

    def signature(self) -> str:
        """`{"query": string (required), ...}`: the arguments as the ReAct prompt lists them."""
        schema = self.openai_schema()["function"]["parameters"]
        required = set(schema.get("required", []))
        parts = []
        for name, prop in schema.get("properties", {}).items():
            options = [p.get("type", "?") for p in prop.get("anyOf", []) if p.get("type") != "null"]
            kind = prop.get("type") or "/".join(options)
            parts.append(f'"{name}": {kind}{" (required)" if name in required else ""}')
        return "{" + ", ".join(parts) + "}"

    def primary_arg(self) -> str | None:
        """The one required string field, which a plain-text input fills."""
        required = [name for name, field in self.args.model_fields.items() if field.is_required()]
        if len(required) == 1 and self.args.model_fields[required[0]].annotation is str:
            return required[0]
        return None

    def parse_args(self, raw: dict[str, Any] | str | None) -> BaseModel:
        """Arguments from what a model wrote; tolerant of plain strings. Raises ValueError with a reason."""
        if isinstance(raw, str):
            text = raw.strip()
            if text.startswith("{"):
                try:
                    raw = json.loads(text)
                except json.JSONDecodeError:
                    raw = text
            else:
                raw = text
        primary = self.primary_arg()
        if raw is None or raw == "":
            raw = {}
        if isinstance(raw, str):
            if primary is not None:
                raw = {primary: raw}
            elif not any(f.is_required() for f in self.args.model_fields.values()):
                raw = {}
            else:
                raise ValueError(f"the input of {self.name} must be a JSON object like {self.signature()}")
        if not isinstance(raw, dict):
            raise ValueError(f"the input of {self.name} must be a JSON object like {self.signature()}")
        try:
            return self.args.model_validate(raw)
        except ValidationError as exc:
            # {"input": "2+3"}: one string under another name is meant for the primary field.
            values = list(raw.values())
            if primary is not None and len(values) == 1 and isinstance(values[0], str):
                return self.parse_args(values[0])
            first = exc.errors()[0]
            where = ".".join(str(p) for p in first.get("loc", ())) or "input"
            raise ValueError(f"invalid input for {self.name}: {where}: {first.get('msg')}") from None


def one_line(text: str, limit: int) -> str:
    """Whitespace collapsed and cut to `limit` characters."""
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[: max(0, limit - 1)] + "…"
