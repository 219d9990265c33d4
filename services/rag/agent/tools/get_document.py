"""A document's chunks by id, each a numbered source like the search results."""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, Field

from services.common.errors import NotFound

from .base import AgentTool, ToolContext, one_line


class GetDocumentArgs(BaseModel):
    doc_id: Annotated[str, Field(min_length=1, max_length=512, description="The doc_id shown in search results.")]
    collection: str | None = Field(None, description="Its collection; the request's are tried when absent.")
    from_chunk: Annotated[int, Field(ge=0)] = Field(0, description="First chunk to show, to page through long ones.")


async def get_document(args: GetDocumentArgs, ctx: ToolContext) -> str:
    for collection in [args.collection] if args.collection else ctx.collections:
        try:
            info, chunks = await ctx.kb.get_document(collection, args.doc_id)
        except NotFound:
            continue
        header = f"Document {info.doc_id}" + (f" ({info.source})" if info.source else "") + f", {len(chunks)} chunks:"
        lines, used = [header], len(header)
        shown = chunks[args.from_chunk :]
        for i, chunk in enumerate(shown):
            text = one_line(chunk.text, ctx.max_chars)
            if i > 0 and used + len(text) + 8 > ctx.max_chars:
                lines.append(f"… {len(shown) - i} more chunks: call again with from_chunk={args.from_chunk + i}.")
                break
            # Numbered only once shown, so every citable number is something the model saw.
            line = f"[{ctx.sources.add(chunk, collection)}] {text}"
            lines.append(line)
            used += len(line) + 1
        return "\n".join(lines)
    searched = [args.collection] if args.collection else ctx.collections
    raise NotFound(f"No document '{args.doc_id}' in {', '.join(searched)}.")


TOOL = AgentTool(
    name="get_document",
    description="Read a whole document by its doc_id; its chunks are numbered sources like search results.",
    args=GetDocumentArgs,
    run=get_document,
)
