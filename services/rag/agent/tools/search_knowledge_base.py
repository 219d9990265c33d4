"""Retrieve and rerank; the sentences closest to the query (or whole chunks) become numbered sources."""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, Field

from services.rag.context import SourceContext, select_context

from .base import AgentTool, ToolContext, one_line


class SearchArgs(BaseModel):
    query: Annotated[str, Field(min_length=1, max_length=1000, description="What to look for.")]
    collection: str | None = Field(None, description="One collection to search instead of the request's.")


def observation(entries: list[tuple[int, SourceContext]], max_chars: int) -> str:
    """The search result as the model reads it: `[n] (doc_id) text` per source, sharing `max_chars`."""
    if not entries:
        return "No results."
    # Share the observation budget so that every source is shown (and only shown ones are citable).
    per_source = max(80, max_chars // len(entries) - 40)
    return "\n".join(f"[{n}] ({c.hit.doc_id}) {one_line(c.text, per_source)}" for n, c in entries)


async def search(args: SearchArgs, ctx: ToolContext) -> str:
    collections = [args.collection] if args.collection else ctx.collections
    hits = await ctx.kb.search(args.query, collections, ctx.top_k)
    contexts = await select_context(
        args.query, hits, ctx.kb, mode=ctx.context_mode, budget_tokens=ctx.context_tokens,
        count_tokens=ctx.kb.count_tokens,
    )  # fmt: skip
    entries = [(ctx.sources.add(c.hit, c.hit.collection, c.hit.score, c.spans), c) for c in contexts]
    return observation(entries, ctx.max_chars)


TOOL = AgentTool(
    name="search_knowledge_base",
    description=(
        "Search the knowledge base. Returns numbered sources as [n] (doc_id) text; cite them in the answer as [n]."
    ),
    args=SearchArgs,
    run=search,
)
