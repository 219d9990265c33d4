"""HTTP routes of the orchestrator (`/rag/*`, and `rag:<collection>` models on `/v1/chat/completions`).

Routes only turn requests into calls on the loaded `RagService` and results into responses.
"""

from __future__ import annotations

import shutil
from typing import Annotated, Any

from fastapi import Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response
from pydantic import ValidationError
from starlette.background import BackgroundTask
from starlette.datastructures import UploadFile

from inferag_protocol.rag import (
    ChunkRequest,
    ChunkResponse,
    CollectionCreate,
    CollectionInfo,
    CollectionList,
    Deleted,
    DocumentDetail,
    DocumentList,
    IngestRequest,
    IngestResult,
    Job,
    JobList,
    QueryRequest,
    QueryResponse,
    RerankRequest,
    RerankResponse,
    RetrieveRequest,
    RetrieveResponse,
)
from services.common.errors import InvalidRequest, NotFound
from services.common.http import cancel_on_disconnect
from services.common.protocol import error_responses, sse_response_doc
from services.common.service import keyed_router
from services.common.sse import sse_response, typed_events
from services.generation.protocol import ChatCompletionRequest

from . import serving
from .dependencies import Rag, caller
from .metrics import Timings

router = keyed_router()

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
    items: list[serving.Item]
    if request.headers.get("content-type", "").startswith("multipart/form-data"):
        items, chunking, background = await serving.form_uploads(await request.form(max_files=10_000), rag.settings)
    else:
        try:
            body = IngestRequest.model_validate_json(await request.body())
        except ValidationError as exc:
            # the same 400 body as every request FastAPI validates itself
            raise RequestValidationError(exc.errors()) from None
        chunking, background = body.chunking, body.background
        items = await serving.json_items(body.documents, rag.settings)
    result = await serving.ingest(rag, name, items, chunking, background, size)
    return JSONResponse(result.model_dump(mode="json"), status_code=202 if isinstance(result, Job) else 200)


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
    return await serving.chunk(rag, body)


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
    return await serving.rerank(rag, body)


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


@router.post("/v1/chat/completions", responses=_ERRORS, tags=["openai"], include_in_schema=False)
async def rag_chat_completions(body: ChatCompletionRequest, request: Request, rag: Rag) -> Response:
    """OpenAI chat on a collection (`model: "rag:<collection>"`); sources in the extra `sources` field."""
    targets = serving.rag_targets(body.model)
    for name in targets:
        caller(request).check(name)
    req = serving.chat_query(body, targets)
    if body.stream:
        return sse_response(await cancel_on_disconnect(request, serving.chat_chunks(rag, body, req)))
    return JSONResponse(await cancel_on_disconnect(request, serving.chat_completion(rag, body, req)))


@router.get("/v1/models", responses=_LIST_ERRORS, tags=["openai"])
async def models(request: Request, rag: Rag) -> dict[str, Any]:
    """One `rag:<collection>` model per collection the key may use."""
    who = caller(request)
    mine = [c for c in await rag.store.list_collections() if who.can(c.name)]
    return {"object": "list", "data": serving.rag_model_cards(mine)}
