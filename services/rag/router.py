"""HTTP routes of the orchestrator (`/rag/*`, and `rag:<collection>` models on `/v1/chat/completions`).

Routes only turn requests into calls on the loaded `RagService` and results into responses.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import shutil
import time
import uuid
from collections.abc import AsyncGenerator, AsyncIterator
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response
from pydantic import TypeAdapter, ValidationError
from starlette.background import BackgroundTask
from starlette.datastructures import UploadFile

from inferag_protocol.rag import (
    ChunkRequest,
    ChunkResponse,
    CitationsEvent,
    CollectionCreate,
    CollectionInfo,
    CollectionList,
    CollectionName,
    Deleted,
    DeltaEvent,
    DocumentDetail,
    DocumentIn,
    DocumentList,
    DoneEvent,
    ErrorEvent,
    IngestRequest,
    IngestResult,
    Job,
    JobList,
    Message,
    QueryEvent,
    QueryRequest,
    QueryResponse,
    RerankRequest,
    RerankResponse,
    RerankResult,
    RetrieveRequest,
    RetrieveResponse,
)
from services.common.auth import ANONYMOUS, Principal
from services.common.errors import InvalidRequest, ModelNotFound, NotFound
from services.common.http import cancel_on_disconnect
from services.common.protocol import error_responses, sse_response_doc
from services.common.service import loaded_service, require_key
from services.common.sse import DONE, sse_data, sse_response, typed_events
from services.generation.protocol import ChatCompletionRequest

from .ingest import Upload
from .metrics import Timings
from .parsing import ParsedDocument, check_url, fetch_options, html_markdown, kind_of, parse_options
from .service import RagService

RAG_MODEL_PREFIX = "rag:"


def get_rag(request: Request) -> RagService:
    service: RagService = loaded_service(request)
    return service


def caller(request: Request) -> Principal:
    """Who is calling (set by the key check); collections outside its scope are 403."""
    principal: Principal = getattr(request.state, "principal", ANONYMOUS)
    return principal


Rag = Annotated[RagService, Depends(get_rag)]
router = APIRouter(dependencies=[Depends(require_key)])

# 409: a collection in another state (another embedding model or graph mode, no graph, a name taken).
_ERRORS = error_responses(400, 401, 403, 404, 409, 429, 503)
# Routes with a request body: also over the body limit.
_BODY_ERRORS = error_responses(400, 401, 403, 404, 409, 413, 429, 503)
_LIST_ERRORS = error_responses(401, 429, 503)


# ---------------------------------------------------------------- collections


@router.get("/rag/collections", response_model=CollectionList, responses=_LIST_ERRORS, tags=["rag"])
async def list_collections(request: Request, rag: Rag) -> CollectionList:
    """Collections with their point and document counts (those the key may use)."""
    who = caller(request)
    return CollectionList(data=[c for c in await rag.store.list_collections() if who.can(c.name)])


@router.post("/rag/collections", response_model=CollectionInfo, responses=_BODY_ERRORS, tags=["rag"])
async def create_collection(body: CollectionCreate, request: Request, rag: Rag) -> CollectionInfo:
    """Create a collection for the served embedding model (idempotent; 409 if it exists with another graph)."""
    caller(request).check(body.name, write=True)
    await rag.ingestor.ensure_collection(body.name, graph=body.graph)
    if body.graph is not None:
        await rag.graph.check_mode(body.name, body.graph)
    return await rag.store.get_collection(body.name)


@router.get("/rag/collections/{name}", response_model=CollectionInfo, responses=_ERRORS, tags=["rag"])
async def get_collection(name: str, request: Request, rag: Rag) -> CollectionInfo:
    caller(request).check(name)
    return await rag.store.get_collection(name)


@router.delete("/rag/collections/{name}", response_model=Deleted, responses=_ERRORS, tags=["rag"])
async def delete_collection(name: str, request: Request, rag: Rag) -> Deleted:
    caller(request).check(name, write=True)
    await rag.store.get_collection(name)
    await rag.store.delete_collection(name)
    rag.graph.collection_deleted(name)
    return Deleted(id=name, object="collection")


_SNAPSHOT_RESPONSE: dict[int | str, dict[str, Any]] = {
    200: {"content": {"application/gzip": {}}, "description": "The snapshot file."}}


@router.post("/rag/collections/{name}/snapshot", response_class=Response,
             responses={**_SNAPSHOT_RESPONSE, **_ERRORS}, tags=["rag"])
async def snapshot_collection(name: str, request: Request, rag: Rag) -> Response:
    """A snapshot of the collection (its chunks, document registry and companions): a tar of Qdrant shard
    snapshots, for backups and for moving a collection to another machine (`/rag/collections/restore`)."""
    caller(request).check(name, write=True)
    target = await rag.snapshot_file(name)
    return FileResponse(target, media_type="application/gzip", filename=target.name,
                        background=BackgroundTask(shutil.rmtree, target.parent, ignore_errors=True))


@router.post("/rag/collections/restore", response_model=CollectionInfo, responses=_BODY_ERRORS, tags=["rag"],
             openapi_extra={"requestBody": {"required": True, "content": {"multipart/form-data": {"schema": {
                 "type": "object", "required": ["file"],
                 "properties": {"file": {"type": "string", "format": "binary"},
                                "name": {"type": "string", "description": "Default: the snapshot's collection."}},
             }}}}})
async def restore_collection(request: Request, rag: Rag) -> CollectionInfo:
    """A new collection from a snapshot file (409 if the name is taken)."""
    who = caller(request)
    if not request.headers.get("content-type", "").startswith("multipart/form-data"):
        raise InvalidRequest("Send the snapshot as a multipart 'file' part.", param="file")
    form = await request.form(max_files=1)
    upload = form.get("file")
    if not isinstance(upload, UploadFile):
        raise InvalidRequest("Send the snapshot as a multipart 'file' part.", param="file")
    asked = form.get("name")
    return await rag.restore_snapshot(upload.file, asked if isinstance(asked, str) and asked else None,
                                      check=lambda name: who.check(name, write=True))


# ---------------------------------------------------------------- documents


def _inlined(schema: Any, defs: dict[str, Any]) -> Any:
    """A pydantic JSON schema with its `$defs` references replaced by their definitions."""
    if isinstance(schema, dict):
        ref = schema.get("$ref", "")
        if ref.startswith("#/$defs/"):
            return _inlined(defs[ref.removeprefix("#/$defs/")], defs)
        return {k: _inlined(v, defs) for k, v in schema.items() if k != "$defs"}
    if isinstance(schema, list):
        return [_inlined(v, defs) for v in schema]
    return schema


# The route reads its body itself, so FastAPI does not add IngestRequest to the components: inline it.
_INGEST_JSON = IngestRequest.model_json_schema()
_INGEST_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {"schema": _inlined(_INGEST_JSON, _INGEST_JSON.get("$defs", {}))},
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["files"],
                    "properties": {
                        "files": {"type": "array", "minItems": 1, "items": {"type": "string", "format": "binary"}},
                        "doc_ids": {"type": "string", "description": "JSON list of ids, one per file."},
                        "metadata": {"type": "string", "description": "JSON object added to every file's metadata."},
                        "chunking": {"type": "string", "description": "JSON chunking parameters."},
                        "text_field": {
                            "type": "string",
                            "description": "JSON/JSONL files: the field holding the "
                            "text (default: text, content, body...); the others become metadata.",
                        },
                        "background": {"type": "string", "enum": ["true", "false"]},
                    },
                }
            },
        },
    }
}


def _json_field(form: Any, name: str, expected: type) -> Any:
    raw = form.get(name)
    if raw is None or raw == "":
        return None
    try:
        value = json.loads(raw)
    except (TypeError, ValueError):
        raise InvalidRequest(f"'{name}' must be JSON.", param=name) from None
    if not isinstance(value, expected):
        raise InvalidRequest(f"'{name}' must be a JSON {expected.__name__}.", param=name)
    return value


async def _uploads(request: Request, rag: RagService) -> tuple[list[Upload], dict[str, Any] | None, bool | None]:
    form = await request.form(max_files=10_000)
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
    options = parse_options(rag.settings, text_field=str(text_field) if text_field else None)
    uploads = []
    for i, f in enumerate(files):
        name = f.filename or "upload.txt"
        kind_of(name)  # an unsupported name is 415 before any file is read
        uploads.append(Upload(name, await f.read(), ids[i] if ids else None, metadata, options))
    return uploads, chunking, None if background in (None, "") else str(background).lower() == "true"


@router.post(
    "/rag/collections/{name}/documents",
    response_model=IngestResult,
    responses={
        202: {"model": Job, "description": "Queued as a background job."},
        **error_responses(400, 401, 403, 404, 409, 413, 415, 429, 503, e415="Unsupported file type."),
    },
    openapi_extra=_INGEST_BODY,
    tags=["rag"],
)
async def ingest(name: str, request: Request, rag: Rag) -> Response:
    """Ingest JSON documents (text, or a `url` to fetch) or uploaded files of any supported type (see the
    README's formats table); large ones run as a job (202)."""
    caller(request).check(name, write=True)
    size = int(request.headers.get("content-length") or 0)
    items: list[ParsedDocument | Upload]
    if request.headers.get("content-type", "").startswith("multipart/form-data"):
        uploads, chunking, background = await _uploads(request, rag)
        items = list(uploads)
    else:
        try:
            body = IngestRequest.model_validate_json(await request.body())
        except ValidationError as exc:
            # the same 400 body as every request FastAPI validates itself
            raise RequestValidationError(exc.errors()) from None
        chunking, background = body.chunking, body.background
        items = [await _json_item(i, d, rag) for i, d in enumerate(body.documents)]
    if background is None:
        background = size > rag.settings.background_threshold_bytes or len(items) > 16
    if background:
        await rag.ingestor.ensure_collection(name)
        job = await rag.jobs.submit(name, items, chunking)
        return JSONResponse(job.model_dump(mode="json"), status_code=202)
    # parsing (PDF text, OCR, fetching a page) blocks: off the event loop
    docs = [doc for item in items for doc in (await asyncio.to_thread(item.parse) if isinstance(item, Upload)
                                               else [item])]  # fmt: skip
    result = await rag.ingestor.ingest(name, docs, chunking)
    return JSONResponse(result.model_dump(mode="json"))


async def _json_item(index: int, d: DocumentIn, rag: RagService) -> ParsedDocument | Upload:
    """A JSON document, or for a `url` one the fetch to make (its address checked now, so a refusal is a 400)."""
    if d.url is None:
        return _document(d.text or "", d.format, d.source, d.metadata, d.id)
    fetching = fetch_options(rag.settings)
    await asyncio.to_thread(check_url, d.url, fetching, f"documents.{index}.url")
    return Upload(d.url, b"", d.id, d.metadata, parse_options(rag.settings), url=d.url, fetch=fetching)


def _document(
    text: str, fmt: str, source: str | None = None, metadata: dict[str, Any] | None = None, doc_id: str | None = None
) -> ParsedDocument:
    """A JSON document ready for chunking (HTML turned into markdown, its title into metadata)."""
    if fmt == "html":
        text, extra = html_markdown(text)
        return ParsedDocument(text, "markdown", source, {**extra, **(metadata or {})}, doc_id)
    return ParsedDocument(text, fmt, source, metadata or {}, doc_id)


@router.get("/rag/collections/{name}/documents", response_model=DocumentList, responses=_ERRORS, tags=["rag"])
async def list_documents(
    name: str,
    request: Request,
    rag: Rag,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    offset: Annotated[int, Query(ge=0)] = 0,
) -> DocumentList:
    caller(request).check(name)
    await rag.store.get_collection(name)
    docs, total = await rag.store.list_documents(name, limit=limit, offset=offset)
    return DocumentList(data=docs, total=total)


@router.get(
    "/rag/collections/{name}/documents/{doc_id}", response_model=DocumentDetail, responses=_ERRORS, tags=["rag"]
)
async def get_document(name: str, doc_id: str, request: Request, rag: Rag) -> DocumentDetail:
    caller(request).check(name)
    info, chunks = await rag.store.get_document(name, doc_id)
    return DocumentDetail(**info.model_dump(), collection=name, data=chunks)


@router.delete("/rag/collections/{name}/documents/{doc_id}", response_model=Deleted, responses=_ERRORS, tags=["rag"])
async def delete_document(name: str, doc_id: str, request: Request, rag: Rag) -> Deleted:
    caller(request).check(name, write=True)
    await rag.store.delete_document(name, doc_id)
    await rag.graph.document_deleted(name, doc_id)
    return Deleted(id=doc_id, object="document")


@router.get("/rag/jobs", response_model=JobList, responses=_LIST_ERRORS, tags=["rag"])
async def list_jobs(request: Request, rag: Rag) -> JobList:
    who = caller(request)
    return JobList(data=[j for j in await rag.jobs.all() if who.can(j.collection)])


@router.get("/rag/jobs/{job_id}", response_model=Job, responses=_ERRORS, tags=["rag"])
async def get_job(job_id: str, request: Request, rag: Rag) -> Job:
    """Progress of a background ingestion: documents and chunks done, errors per file."""
    who = caller(request)
    try:
        job: Job | None = await rag.jobs.get(job_id)
    except NotFound:
        job = None
    if job is None or not who.can(job.collection):
        # A job of a collection outside the key's scope answers as a missing one: its existence is not the caller's.
        raise NotFound(f"No job '{job_id}'.", param="job_id", code="job_not_found")
    return job


# ---------------------------------------------------------------- chunk, retrieve, rerank


@router.post("/rag/chunk", response_model=ChunkResponse, responses=_BODY_ERRORS, tags=["rag"])
async def chunk(body: ChunkRequest, rag: Rag) -> ChunkResponse:
    """Chunks of a text as ingestion would make them, without storing anything."""
    doc = _document(body.text, body.format)
    params = rag.ingestor.chunking(body.chunking, doc.format)
    chunks = await rag.chunker.chunk(doc.text, params)
    return ChunkResponse(data=chunks, strategy=params.strategy, max_tokens=rag.chunker.max_tokens)


@router.post("/rag/retrieve", response_model=RetrieveResponse, responses=_BODY_ERRORS, tags=["rag"])
async def retrieve(body: RetrieveRequest, request: Request, rag: Rag) -> RetrieveResponse:
    """Best chunks for a query: dense, sparse (BM25) or hybrid (Qdrant's prefetch + RRF/DBSF fusion)."""
    for name in body.targets():
        caller(request).check(name)
    timings = Timings(rag.metrics)
    hits = await rag.retriever.retrieve(
        body.targets(), body.query, top_k=body.top_k, mode=body.mode, fusion=body.fusion, filter=body.filter,
        score_threshold=body.score_threshold, timings=timings,
    )  # fmt: skip
    return RetrieveResponse(data=hits, timings=dict(timings))


@router.post("/rag/rerank", response_model=RerankResponse, responses=_BODY_ERRORS, tags=["rag"])
async def rerank(body: RerankRequest, rag: Rag) -> RerankResponse:
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


# ---------------------------------------------------------------- answers


@router.post(
    "/rag/query",
    response_model=QueryResponse,
    responses={200: sse_response_doc("The answer, or with `stream: true` typed events."), **_BODY_ERRORS},
    tags=["rag"],
)
async def query(body: QueryRequest, request: Request, rag: Rag) -> Response:
    """Answer from the collection(s) with citations; `stream: true` sends typed events."""
    for name in body.targets():
        caller(request).check(name)
    if body.stream:
        return sse_response(typed_events(await cancel_on_disconnect(request, rag.answerer.stream(body))))
    result = await cancel_on_disconnect(request, rag.answerer.answer(body))
    return JSONResponse(result.model_dump(mode="json"))


_COLLECTION_NAME: TypeAdapter[str] = TypeAdapter(CollectionName)
# As many as a query may name (QueryRequest.collections).
MAX_RAG_TARGETS = 16


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


@router.post("/v1/chat/completions", responses=_ERRORS, tags=["openai"], include_in_schema=False)
async def rag_chat_completions(body: ChatCompletionRequest, request: Request, rag: Rag) -> Response:
    """OpenAI chat on a collection (`model: "rag:<collection>"`); sources in the extra `sources` field."""
    targets = rag_targets(body.model)
    for name in targets:
        caller(request).check(name)
    turns = [m for m in body.messages if m.role in ("user", "assistant")]
    if not turns or turns[-1].role != "user":
        raise InvalidRequest("The last message must be the user's.", param="messages")
    extra = body.model_extra or {}
    req = QueryRequest(
        collections=targets,
        messages=[Message(role=m.role, content=m.text()) for m in turns],
        max_tokens=body.completion_limit(),
        temperature=body.temperature,
        top_p=body.top_p,
        seed=body.seed,
        rewrite_query=bool(extra.get("rewrite_query", len(turns) > 1)),
        stream=body.stream,
    )
    created, cid = int(time.time()), f"chatcmpl-{uuid.uuid4().hex}"
    if not body.stream:
        answer = await cancel_on_disconnect(request, rag.answerer.answer(req))
        return JSONResponse(
            {
                "id": cid,
                "object": "chat.completion",
                "created": created,
                "model": body.model,
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": answer.answer},
                        "finish_reason": answer.finish_reason or "stop",
                    }
                ],
                "usage": answer.usage.model_dump(),
                "sources": [c.model_dump(mode="json") for c in answer.citations],
                "timings": answer.timings,
            }  # fmt: skip
        )
    events = await cancel_on_disconnect(request, rag.answerer.stream(req))
    return sse_response(_openai_chunks(events, cid, created, body.model, body.stream_options))


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


def rag_model_cards(collections: list[CollectionInfo]) -> list[dict[str, Any]]:
    return [
        {"id": f"{RAG_MODEL_PREFIX}{c.name}", "object": "model", "created": 0, "owned_by": "inferag-rag"}
        for c in collections
    ]


@router.get("/v1/models", responses=_LIST_ERRORS, tags=["openai"])
async def models(request: Request, rag: Rag) -> dict[str, Any]:
    """One `rag:<collection>` model per collection the key may use."""
    who = caller(request)
    mine = [c for c in await rag.store.list_collections() if who.can(c.name)]
    return {"object": "list", "data": rag_model_cards(mine)}
