"""Tool calling in the Hermes format, for models whose chat template has no tool syntax.

The prompt lists the tools and asks for `<tool_call>{"name": ..., "arguments": {...}}</tool_call>`;
the output is parsed back into OpenAI `tool_calls`. A forced choice (`required` or a
named function) is enforced by a JSON schema on engines with structured output.
"""

from __future__ import annotations

import json
import re
import uuid
from typing import Any

from .protocol import ChatMessage, FunctionCall, NamedToolChoice, Tool, ToolCall

OPEN, CLOSE = "<tool_call>", "</tool_call>"
_BLOCK = re.compile(r"<tool_call>\s*(.*?)\s*(?:</tool_call>|$)", re.DOTALL)


def tools_system_prompt(tools: list[Tool]) -> str:
    listed = "\n".join(json.dumps(t.function.model_dump(exclude_none=True)) for t in tools)
    return (
        "You may call functions to help answer. Available functions:\n"
        f"<tools>\n{listed}\n</tools>\n"
        f'To call a function, reply with {OPEN}{{"name": <function name>, "arguments": <arguments object>}}{CLOSE}.'
    )


def render_tool_calls(message: ChatMessage) -> str:
    """An assistant turn that called tools, written back in the format the model produced."""
    parts = [message.text()] if message.text() else []
    for call in message.tool_calls or []:
        try:
            args = json.loads(call.function.arguments or "{}")
        except json.JSONDecodeError:
            args = call.function.arguments
        parts.append(f"{OPEN}{json.dumps({'name': call.function.name, 'arguments': args})}{CLOSE}")
    return "\n".join(parts)


def forced_call_schema(tools: list[Tool], choice: str | NamedToolChoice) -> dict[str, Any]:
    """JSON schema of one call object, for `tool_choice` = required or a named function."""
    if isinstance(choice, NamedToolChoice):
        tools = [t for t in tools if t.function.name == choice.function.get("name")]
    options = [
        {
            "type": "object",
            "properties": {"name": {"const": t.function.name}, "arguments": t.function.parameters},
            "required": ["name", "arguments"],
        }
        for t in tools
    ]
    return options[0] if len(options) == 1 else {"anyOf": options}


def _to_call(obj: Any) -> ToolCall | None:
    if not isinstance(obj, dict) or not isinstance(obj.get("name"), str):
        return None
    args = obj.get("arguments", obj.get("parameters", {}))
    return ToolCall(
        id=f"call_{uuid.uuid4().hex[:24]}",
        function=FunctionCall(name=obj["name"], arguments=args if isinstance(args, str) else json.dumps(args)),
    )


def parse_tool_calls(text: str, *, forced: bool = False) -> tuple[str | None, list[ToolCall]]:
    """Split model output into (content, tool calls). Unparseable blocks stay as content."""
    if forced:
        try:
            call = _to_call(json.loads(text))
        except json.JSONDecodeError:
            call = None
        return (None, [call]) if call else (text, [])
    calls: list[ToolCall] = []
    for match in _BLOCK.finditer(text):
        try:
            call = _to_call(json.loads(match.group(1)))
        except json.JSONDecodeError:
            call = None
        if call is None:
            return text, []
        calls.append(call)
    if not calls:
        return text, []
    content = text[: text.index(OPEN)].strip()
    return content or None, calls


def holdback(text: str) -> int:
    """Length of the tail of `text` that could be the start of a tool call tag."""
    for n in range(min(len(OPEN) - 1, len(text)), 0, -1):
        if OPEN.startswith(text[-n:]):
            return n
    return 0
