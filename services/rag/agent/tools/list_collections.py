"""The knowledge base's collections."""

from __future__ import annotations

from pydantic import BaseModel

from .base import AgentTool, ToolContext


class NoArgs(BaseModel):
    pass


async def list_collections(_: NoArgs, ctx: ToolContext) -> str:
    infos = await ctx.kb.list_collections()
    if not infos:
        return "No collections."
    lines = []
    for c in infos:
        default = " (searched by default)" if c.name in ctx.collections else ""
        lines.append(f"{c.name}: {c.documents} documents, {c.points} chunks{default}")
    return "\n".join(lines)


TOOL = AgentTool(
    name="list_collections",
    description="List the knowledge base's collections. Takes no input.",
    args=NoArgs,
    run=list_collections,
)
