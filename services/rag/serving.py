"""The RAG serving layer: what a route asks of the loaded `RagService`, returned as a response model, a stream of
typed events or an error (an `InferagError`, which `services.common.errors` maps to HTTP in one place).

Routes (router.py, responses.py, agent/router.py, graph/router.py) only read the HTTP request, call these and
encode the result.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import uuid
from collections.abc import AsyncGenerator, AsyncIterator, Sequence
from typing import Any

from pydantic import TypeAdapter, ValidationError
from starlette.datastructures import FormData, UploadFile

from inferag_protocol.rag import (
    ChunkRequest,
    ChunkResponse,
    CitationsEvent,
    CollectionInfo,
    CollectionName,
    DeltaEvent,
    DocumentIn,
    DoneEvent,
    ErrorEvent,
    IngestResult,
    Job,
    Message,
    QueryEvent,
    QueryRequest,
    RerankRequest,
    RerankResponse,
    RerankResult,
)
from services.common.errors import InvalidRequest, ModelNotFound
from services.common.sse import DONE, sse_data
from services.generation.protocol import ChatCompletionRequest

from .ingest import Upload
from .parsing import ParsedDocument, check_url, fetch_options, html_markdown, kind_of, parse_options
from .service import RagService
from .settings import RagSettings

RAG_MODEL_PREFIX = "rag:"
# As many as a query may name (QueryRequest.collections).
MAX_RAG_TARGETS = 16
# Documents an ingestion request may hold before it runs as a background job by default.
MAX_FOREGROUND_DOCUMENTS = 16

# ---------------------------------------------------------------- ingestion

Item = ParsedDocument | Upload


def _json_field(form: FormData, name: str, expected: type) -> Any:
    raw = form.get(name)
    if raw is None or raw == "":
        return None
    try:
        value = json.loads(str(raw))
    except (TypeError, ValueError):
        raise InvalidRequest(f"'{name}' must be JSON.", param=name) from None
    if not isinstance(value, expected):
        raise InvalidRequest(f"'{name}' must be a JSON {expected.__name__}.", param=name)
    return value


async def form_uploads(form: FormData, settings: RagSettings) -> tuple[list[Item], dict[str, Any] | None, bool | None]:
    """The files of a multipart ingestion (each name's type checked before any file is read: 415), with the
    form's chunking and background fields."""
    files = [f for f in form.getlist("files") if isinstance(f, UploadFile)]
    if not files:
        raise InvalidRequest("Send one or more 'files' parts.", param="files")
    ids = _json_field(form, "doc_ids", list)
    if ids is not None and (len(ids) != len(files) or not all(isinstance(i, str) and i for i in ids)):
        raise InvalidRequest("'doc_ids' must list one non-empty id per file.", param="doc_ids")
    metadata = _json_field(form, "metadata", dict)
    chunking = _json_field(form, "chunking", dict)
    background = form.get("background")
    text_field = form.get("text_field")
    options = parse_options(settings, text_field=str(text_field) if text_field else None)
    uploads: list[Item] = []
    for i, f in enumerate(files):
        name = f.filename or "upload.txt"
        kind_of(name)  # an unsupported name is 415 before any file is read
        uploads.append(Upload(name, await f.read(), ids[i] if ids else None, metadata, options))
    return uploads, chunking, None if background in (None, "") else str(background).lower() == "true"


async def json_items(documents: Sequence[DocumentIn], settings: RagSettings) -> list[Item]:
    """JSON documents, or for `url` ones the fetch to make (each address checked now, so a refusal is a 400)."""
    items: list[Item] = []
    for index, d in enumerate(documents):
        if d.url is None:
            items.append(document(d.text or "", d.format, d.source, d.metadata, d.id))
            continue
        fetching = fetch_options(settings)
        await asyncio.to_thread(check_url, d.url, fetching, f"documents.{index}.url")
        items.append(Upload(d.url, b"", d.id, d.metadata, parse_options(settings), url=d.url, fetch=fetching))
    return items


def document(
    text: str, fmt: str, source: str | None = None, metadata: dict[str, Any] | None = None, doc_id: str | None = None
) -> ParsedDocument:
    """A JSON document ready for chunking (HTML turned into markdown, its title into metadata)."""
    if fmt == "html":
        text, extra = html_markdown(text)
        return ParsedDocument(text, "markdown", source, {**extra, **(metadata or {})}, doc_id)
    return ParsedDocument(text, fmt, source, metadata or {}, doc_id)


async def ingest(
    rag: RagService, name: str, items: list[Item], chunking: dict[str, Any] | None, background: bool | None,
    size: int,
) -> IngestResult | Job:
    """Ingest now (the result), or as a background job (the job) when asked, or by default for a body over
    `background_threshold_bytes` or many documents."""
    if background is None:
        background = size > rag.settings.background_threshold_bytes or len(items) > MAX_FOREGROUND_DOCUMENTS
    if background:
        await rag.ingestor.ensure_collection(name)
        return await rag.jobs.submit(name, items, chunking)
    # parsing (PDF text, OCR, fetching a page) blocks: off the event loop
    docs = [doc for item in items for doc in (await asyncio.to_thread(item.parse) if isinstance(item, Upload)
                                               else [item])]  # fmt: skip
    return await rag.ingestor.ingest(name, docs, chunking)


async def chunk(rag: RagService, body: ChunkRequest) -> ChunkResponse:
    """Chunks of a text as ingestion would make them, without storing anything."""
    doc = document(body.text, body.format)
    params = rag.ingestor.chunking(body.chunking, doc.format)
    chunks = await rag.chunker.chunk(doc.text, params)
    return ChunkResponse(data=chunks, strategy=params.strategy, max_tokens=rag.chunker.max_tokens)


async def rerank(rag: RagService, body: RerankRequest) -> RerankResponse:
    """Passages (or a retrieval's hits) ordered by the rerank service."""
    texts = body.documents if body.documents is not None else [h.text for h in body.hits or []]
    ranked = await rag.links.embeddings.rerank(body.query, texts, body.top_n)
    results = [
        RerankResult(
            index=i,
            relevance_score=score,
            document=texts[i] if body.documents is not None else None,
            hit=(body.hits[i].model_copy(update={"score": score}) if body.hits is not None else None),
        )
        for i, score in ranked
    ]
    return RerankResponse(model=rag.links.embeddings.rerank_model, data=results)


# ---------------------------------------------------------------- rag: models on the OpenAI API

_COLLECTION_NAME: TypeAdapter[str] = TypeAdapter(CollectionName)


def rag_targets(model: str) -> list[str]:
    """Collections named by a `rag:<collection>[,<collection>…]` model: 404 for a name no collection can
    have, 400 for more than a query may name."""
    names = [n.strip() for n in model.removeprefix(RAG_MODEL_PREFIX).split(",") if n.strip()]
    if not model.startswith(RAG_MODEL_PREFIX) or not names:
        raise ModelNotFound(model)
    for name in names:
        try:
            _COLLECTION_NAME.validate_python(name)
        except ValidationError:
            raise ModelNotFound(model) from None
    if len(names) > MAX_RAG_TARGETS:
        raise InvalidRequest(
            f"A rag: model names at most {MAX_RAG_TARGETS} collections ({len(names)} given).",
            param="model",
            code="too_many_collections",
        )
    return names


def rag_model_cards(collections: list[CollectionInfo]) -> list[dict[str, Any]]:
    return [
        {"id": f"{RAG_MODEL_PREFIX}{c.name}", "object": "model", "created": 0, "owned_by": "inferag-rag"}
        for c in collections
    ]


def chat_query(body: ChatCompletionRequest, targets: list[str]) -> QueryRequest:
    """The RAG query an OpenAI chat request on `rag:` collections asks (the last message must be the user's)."""
    turns = [m for m in body.messages if m.role in ("user", "assistant")]
    if not turns or turns[-1].role != "user":
        raise InvalidRequest("The last message must be the user's.", param="messages")
    extra = body.model_extra or {}
    return QueryRequest(
        collections=targets,
        messages=[Message(role=m.role, content=m.text()) for m in turns],
        max_tokens=body.completion_limit(),
        temperature=body.temperature,
        top_p=body.top_p,
        seed=body.seed,
        rewrite_query=bool(extra.get("rewrite_query", len(turns) > 1)),
        stream=body.stream,
    )


async def chat_completion(rag: RagService, body: ChatCompletionRequest, req: QueryRequest) -> dict[str, Any]:
    """The RAG answer as an OpenAI chat completion; its sources in the extra `sources` field."""
    answer = await rag.answerer.answer(req)
    return {
        "id": f"chatcmpl-{uuid.uuid4().hex}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": body.model,
        "choices": [
            {"index": 0, "message": {"role": "assistant", "content": answer.answer},
             "finish_reason": answer.finish_reason or "stop"}
        ],
        "usage": answer.usage.model_dump(),
        "sources": [c.model_dump(mode="json") for c in answer.citations],
        "timings": answer.timings,
    }  # fmt: skip


async def chat_chunks(rag: RagService, body: ChatCompletionRequest, req: QueryRequest) -> AsyncIterator[str]:
    """The RAG answer as OpenAI chat chunks (SSE lines), started now so a refusal comes before the first byte."""
    events = await rag.answerer.stream(req)
    return _openai_chunks(events, f"chatcmpl-{uuid.uuid4().hex}", int(time.time()), body.model, body.stream_options)


async def _openai_chunks(
    events: AsyncGenerator[QueryEvent, None], cid: str, created: int, model: str, options: Any
) -> AsyncIterator[str]:
    """The RAG events as OpenAI chat chunks; sources ride on the last chunk, which stock clients ignore."""

    def chunk(delta: dict[str, Any], finish: str | None = None, **extra: Any) -> str:
        choice = {"index": 0, "delta": delta, "finish_reason": finish}
        return sse_data({"id": cid, "object": "chat.completion.chunk", "created": created, "model": model,
                         "choices": [choice], **extra})  # fmt: skip

    yield chunk({"role": "assistant", "content": ""})
    citations: list[Any] = []
    async with contextlib.aclosing(events):
        async for event in events:
            if isinstance(event, DeltaEvent):
                yield chunk({"content": event.text})
            elif isinstance(event, CitationsEvent):
                citations = [c.model_dump(mode="json") for c in event.citations]
            elif isinstance(event, ErrorEvent):
                yield sse_data({"error": event.error})
            elif isinstance(event, DoneEvent):
                yield chunk({}, event.finish_reason or "stop", sources=citations, timings=event.timings)
                if options is not None and getattr(options, "include_usage", False):
                    yield sse_data({"id": cid, "object": "chat.completion.chunk", "created": created,
                                    "model": model, "choices": [], "usage": event.usage.model_dump()})  # fmt: skip
    yield DONE
