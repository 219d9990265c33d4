"""`/v1/responses` for `rag:<collection>` models: the RAG answer as a Responses output.

The conversation (input items, `previous_response_id`) becomes a RAG query through the
answerer's public path (`Answerer.answer` / `Answerer.stream`); each cited source becomes a
`file_citation` annotation on the output text, at the end of its first `[n]` marker, with the
whole citation (collection, chunk, offsets, score, quoted span…) alongside the standard fields.
Function tools and `text.format` are for the generation models; here they are a 400.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncGenerator, AsyncIterator
from typing import Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response
from pydantic import ValidationError

from inferag_protocol.rag import (
    Citation,
    CitationsEvent,
    DeltaEvent,
    DoneEvent,
    ErrorEvent,
    Message,
    QueryEvent,
    QueryRequest,
    Usage,
)
from services.common.errors import InvalidRequest, status_of_error_event
from services.common.http import cancel_on_disconnect
from services.common.protocol import error_responses, sse_response_doc
from services.common.service import keyed_router, require_key
from services.generation.responses.protocol import (
    OutputMessage,
    OutputText,
    ResponsesRequest,
    ResponsesResponse,
    TextFormatText,
)
from services.generation.responses.router import respond, response_store, store_router
from services.generation.responses.serving import (
    Event,
    EventWriter,
    conversation,
    finished,
    remember,
    response_for,
    usage_of,
)
from services.generation.responses.store import ResponseStore

from .citations import MARKER, marker_numbers
from .dependencies import Rag, caller
from .serving import rag_targets

router = keyed_router()


def citation_annotations(text: str, citations: list[Citation]) -> list[dict[str, Any]]:
    """One `file_citation` per cited source, at the end of the first marker that cites it."""
    where: dict[int, int] = {}
    for match in MARKER.finditer(text):
        for number in marker_numbers(match):
            where.setdefault(number, match.end())
    return [
        {
            "type": "file_citation",
            "file_id": c.doc_id,
            "filename": c.source or c.doc_id,
            "index": where.get(c.number, len(text)),
            **c.model_dump(mode="json"),
        }  # fmt: skip
        for c in citations
    ]


def query_for(req: ResponsesRequest, messages: list[dict[str, Any]], targets: list[str]) -> QueryRequest:
    if req.tools:
        raise InvalidRequest("rag: models answer from their collection; they take no tools.", param="tools")
    if req.text and req.text.format and not isinstance(req.text.format, TextFormatText):
        raise InvalidRequest("rag: models answer in text; text.format must be 'text'.", param="text.format")
    turns = [m for m in messages if m["role"] in ("user", "assistant") and m.get("content")]
    if not turns or turns[-1]["role"] != "user":
        raise InvalidRequest("The input must end with the user's question.", param="input")
    try:
        return QueryRequest(
            collections=targets,
            messages=[Message(role=m["role"], content=m["content"]) for m in turns],
            max_tokens=req.max_output_tokens,
            temperature=req.temperature,
            top_p=req.top_p,
            seed=req.seed,
            rewrite_query=len(turns) > 1,
            stream=req.stream,
        )
    except ValidationError as exc:  # a collection name the store refuses, too many collections...
        raise InvalidRequest(f"model: {exc.errors()[0].get('msg')}", param="model") from exc


@router.post(
    "/v1/responses",
    response_model=ResponsesResponse,
    responses={
        200: sse_response_doc("The answer, or typed Responses events."),
        **error_responses(400, 401, 403, 404, 409, 413, 429, 503),
    },  # fmt: skip
    tags=["openai"],
)
async def rag_responses(body: ResponsesRequest, request: Request, rag: Rag) -> Response:
    """The Responses API on a collection (`model: "rag:<collection>"`): the sources as annotations."""
    targets = rag_targets(body.model)
    for name in targets:
        caller(request).check(name)
    store = response_store(request)
    messages = conversation(body, store)
    query = query_for(body, messages, targets)
    if body.stream:
        events = await cancel_on_disconnect(request, rag.answerer.stream(query))
        return respond(_events(body, messages, events, store))
    answer = await cancel_on_disconnect(request, rag.answerer.answer(query))
    text = OutputText(text=answer.answer, annotations=citation_annotations(answer.answer, answer.citations))
    response = response_for(
        body, output=[OutputMessage(content=[text])],
        usage=usage_of(answer.usage.prompt_tokens, answer.usage.completion_tokens), **finished(answer.finish_reason),
    )  # fmt: skip
    remember(store, body, response, messages)
    return respond(response)


async def _events(
    req: ResponsesRequest,
    messages: list[dict[str, Any]],
    events: AsyncGenerator[QueryEvent, None],
    store: ResponseStore,
) -> AsyncIterator[Event]:
    """The RAG events (retrieval, delta…, citations, done | error) as Responses events."""
    writer = EventWriter(response_for(req, status="in_progress"))
    for event in writer.start():
        yield event
    text, cited, done = "", list[Citation](), None
    try:
        async with contextlib.aclosing(events):
            async for item in events:
                if isinstance(item, DeltaEvent) and item.text:
                    text += item.text
                    for event in writer.text(item.text):
                        yield event
                elif isinstance(item, CitationsEvent):
                    cited = item.citations
                elif isinstance(item, DoneEvent):
                    done = item
                elif isinstance(item, ErrorEvent):
                    status = status_of_error_event(item.error)
                    for event in writer.failed(item.error, status):
                        yield event
                    return
    except Exception as exc:
        for event in writer.fail(exc):
            yield event
        return
    for event in writer.close(citation_annotations(text, cited)):
        yield event
    usage = done.usage if done else Usage()
    response, ending = writer.finish(
        usage=usage_of(usage.prompt_tokens, usage.completion_tokens),
        **finished(done.finish_reason if done else None),
    )
    remember(store, req, response, messages)
    for event in ending:
        yield event


def install(api: APIRouter) -> None:
    """Add the `rag:` Responses routes (and retrieve/delete of stored ones) to the RAG service's router."""
    api.include_router(router)
    api.include_router(store_router, dependencies=[Depends(require_key)])
