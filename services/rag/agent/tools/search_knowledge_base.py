"""Retrieve and rerank; each hit becomes a numbered source the answer may cite."""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, Field

from .base import AgentTool, ToolContext, one_line


class SearchArgs(BaseModel):
    query: Annotated[str, Field(min_length=1, max_length=1000, description="What to look for.")]
    collection: str | None = Field(None, description="One collection to search instead of the request's.")


async def search(args: SearchArgs, ctx: ToolContext) -> str:
    collections = [args.collection] if args.collection else ctx.collections
    hits = await ctx.kb.search(args.query, collections, ctx.top_k)
    if not hits:
        return "No results."
    # Share the observation budget so that every hit is shown (and only shown hits are citable).
    per_hit = max(80, ctx.max_chars // len(hits) - 40)
    lines = []
    for hit in hits:
        number = ctx.sources.add(hit, hit.collection, hit.score)
        lines.append(f"[{number}] ({hit.doc_id}) {one_line(hit.text, per_hit)}")
    return "\n".join(lines)


TOOL = AgentTool(
    name="search_knowledge_base",
    description=(
        "Search the knowledge base. Returns numbered sources as [n] (doc_id) text; cite them in the answer as [n]."
    ),
    args=SearchArgs,
    run=search,
)
