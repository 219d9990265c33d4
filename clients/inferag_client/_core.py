"""What the sync and async clients share: every route as a `Call` (request plus parser), the retry policy.

A resource method of either client only builds a `Call` here and hands it to its client's
`_request`/`_stream`; the two clients differ only in how they wait (`_client.py` is generated from
`_async_client.py`; the few helpers below come in an async and a sync form for that).
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import mimetypes
import os
import random
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Generic, TypedDict, TypeVar, Unpack
from urllib.parse import quote

import httpx
from pydantic import BaseModel

from inferag_protocol.agent import AgentRequest, AgentResponse
from inferag_protocol.graph import EntityDetail, EntityList, GraphStats
from inferag_protocol.perplexity import PerplexityRequest, PerplexityResponse
from inferag_protocol.rag import (
    ChunkRequest,
    ChunkResponse,
    CollectionCreate,
    CollectionInfo,
    CollectionList,
    Deleted,
    DocumentDetail,
    DocumentIn,
    DocumentList,
    Hit,
    IngestRequest,
    IngestResult,
    Job,
    JobList,
    Message,
    QueryRequest,
    QueryResponse,
    RerankRequest,
    RerankResponse,
    RetrieveRequest,
    RetrieveResponse,
)

from .errors import InferagError, error_for_status
from .models import Health, ModelList, Readiness

log = logging.getLogger("inferag.sdk")

T = TypeVar("T")
M = TypeVar("M", bound=BaseModel)

DEFAULT_BASE_URL = "http://127.0.0.1:8000"
DEFAULT_TIMEOUT = 300.0
RETRY_STATUSES = frozenset({429, 503})
# Content types sent with uploads (the server decides by the bytes; these are for proxies and logs).
FILE_TYPES = {
    ".txt": "text/plain", ".md": "text/markdown", ".html": "text/html", ".htm": "text/html", ".pdf": "application/pdf",
    ".docx": "application/vnd.openxmlformats-officedocument.wordprocessingml.document",
    ".pptx": "application/vnd.openxmlformats-officedocument.presentationml.presentation",
    ".xlsx": "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet",
    ".odt": "application/vnd.oasis.opendocument.text", ".epub": "application/epub+zip", ".csv": "text/csv",
    ".eml": "message/rfc822", ".msg": "application/vnd.ms-outlook", ".json": "application/json",
    ".jsonl": "application/jsonl", ".png": "image/png", ".jpg": "image/jpeg", ".jpeg": "image/jpeg",
}  # fmt: skip

DocumentLike = str | DocumentIn | Mapping[str, Any]
SyncProgress = Callable[[Job], object]
AsyncProgress = Callable[[Job], object] | Callable[[Job], Awaitable[object]]
MessageLike = Message | Mapping[str, str]
FileLike = str | os.PathLike[str]


@dataclass(frozen=True)
class Call(Generic[T]):
    """One route call: how to build the request, whether it is safe to repeat, how to read the answer."""

    method: str
    path: str
    parse: Callable[[httpx.Response], T]
    json: Any = None
    params: Mapping[str, Any] | None = None
    files: list[tuple[str, tuple[str, bytes, str]]] | None = None
    data: Mapping[str, str] | None = None
    idempotent: bool = True
    ok_statuses: frozenset[int] = field(default_factory=frozenset)


def _model(cls: type[M]) -> Callable[[httpx.Response], M]:
    return lambda response: cls.model_validate(response.json())


def _body(model: BaseModel) -> dict[str, Any]:
    return model.model_dump(mode="json", exclude_unset=True)


def _seg(value: str) -> str:
    return quote(value, safe="")


async def arun_blocking(fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """Blocking work (reading files) off the event loop."""
    return await asyncio.to_thread(fn, *args, **kwargs)


def run_blocking(fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    return fn(*args, **kwargs)


async def anotify(callback: AsyncProgress, job: Job) -> None:
    result = callback(job)
    if inspect.isawaitable(result):
        await result


def notify(callback: SyncProgress, job: Job) -> None:
    callback(job)


def error_from_response(response: httpx.Response) -> InferagError:
    try:
        body = response.json()
    except ValueError:
        body = {"error": {"message": response.text or response.reason_phrase, "type": None}}
    if not isinstance(body, dict) or not isinstance(body.get("error"), dict):
        body = {"error": {"message": str(body), "type": None}}
    return error_for_status(response.status_code, body, response.headers)


# ---------------------------------------------------------------- the routes


def list_collections() -> Call[CollectionList]:
    return Call("GET", "/rag/collections", _model(CollectionList))


def create_collection(name: str, graph: str | None = None) -> Call[CollectionInfo]:
    body = _body(CollectionCreate.model_validate({"name": name, **({"graph": graph} if graph is not None else {})}))
    return Call("POST", "/rag/collections", _model(CollectionInfo), json=body, idempotent=False)


def get_collection(name: str) -> Call[CollectionInfo]:
    return Call("GET", f"/rag/collections/{_seg(name)}", _model(CollectionInfo))


def delete_collection(name: str) -> Call[Deleted]:
    return Call("DELETE", f"/rag/collections/{_seg(name)}", _model(Deleted))


def snapshot_collection(name: str, target: FileLike) -> Call[Path]:
    """Writes the snapshot file to `target`."""

    def save(response: httpx.Response) -> Path:
        path = Path(target)
        path.write_bytes(response.content)
        return path

    return Call("POST", f"/rag/collections/{_seg(name)}/snapshot", save)


def restore_collection(source: FileLike, name: str | None = None) -> Call[CollectionInfo]:
    """Reads the file now (blocking; the async client runs this in a thread)."""
    path = Path(source)
    files = [("file", (path.name, path.read_bytes(), "application/gzip"))]
    return Call("POST", "/rag/collections/restore", _model(CollectionInfo), files=files,
                data={"name": name} if name else None, idempotent=False)


def _ingested(response: httpx.Response) -> IngestResult | Job:
    body = response.json()
    if response.status_code == 202 or body.get("object") == "job":
        return Job.model_validate(body)
    return IngestResult.model_validate(body)


def _document(doc: DocumentLike, metadata: Mapping[str, Any] | None) -> DocumentIn:
    if isinstance(doc, DocumentIn):
        return doc
    if isinstance(doc, str):
        return DocumentIn(text=doc, metadata=dict(metadata or {}))
    return DocumentIn.model_validate(doc)


class IngestOptions(TypedDict, total=False):
    """How `documents.ingest` / `documents.upload` store what they send."""

    metadata: Mapping[str, Any] | None  # added to every document's metadata
    chunking: Mapping[str, Any] | None  # ChunkingParams; default: the service's
    background: bool | None  # run as a job (202); default: only for large requests


class UploadOptions(IngestOptions, total=False):
    text_field: str | None  # the text of JSON records


def _known(options: Mapping[str, Any], allowed: type) -> None:
    """A misspelt option is a TypeError, as an unknown keyword argument would be."""
    unknown = sorted(set(options) - set(allowed.__annotations__))
    if unknown:
        raise TypeError(f"unexpected keyword argument(s): {', '.join(unknown)}")


def ingest(
    collection: str, documents: DocumentLike | Sequence[DocumentLike], **options: Unpack[IngestOptions]
) -> Call[IngestResult | Job]:
    _known(options, IngestOptions)
    docs = [documents] if isinstance(documents, str | DocumentIn | Mapping) else list(documents)
    chunking = options.get("chunking")
    request = IngestRequest(
        documents=[_document(d, options.get("metadata")) for d in docs],
        chunking=dict(chunking) if chunking is not None else None,
        background=options.get("background"),
    )
    body = request.model_dump(mode="json", exclude_none=True)
    return Call("POST", f"/rag/collections/{_seg(collection)}/documents", _ingested, json=body, idempotent=False)


def upload(
    collection: str, paths: FileLike | Sequence[FileLike], **options: Unpack[UploadOptions]
) -> Call[IngestResult | Job]:
    """Reads the files now (blocking; the async client runs this in a thread)."""
    import json

    _known(options, UploadOptions)
    items = [paths] if isinstance(paths, str | os.PathLike) else list(paths)
    files = []
    for item in items:
        path = Path(item)
        kind = FILE_TYPES.get(path.suffix.lower()) or mimetypes.guess_type(path.name)[0] or "application/octet-stream"
        files.append(("files", (path.name, path.read_bytes(), kind)))
    data: dict[str, str] = {}
    for key, value in (("metadata", options.get("metadata")), ("chunking", options.get("chunking"))):
        if value is not None:
            data[key] = json.dumps(dict(value))
    background, text_field = options.get("background"), options.get("text_field")
    if background is not None:
        data["background"] = "true" if background else "false"
    if text_field is not None:
        data["text_field"] = text_field
    route = f"/rag/collections/{_seg(collection)}/documents"
    return Call("POST", route, _ingested, files=files, data=data, idempotent=False)


def list_documents(collection: str, limit: int | None = None, offset: int | None = None) -> Call[DocumentList]:
    params = {k: v for k, v in {"limit": limit, "offset": offset}.items() if v is not None}
    return Call("GET", f"/rag/collections/{_seg(collection)}/documents", _model(DocumentList), params=params)


def get_document(collection: str, doc_id: str) -> Call[DocumentDetail]:
    return Call("GET", f"/rag/collections/{_seg(collection)}/documents/{_seg(doc_id)}", _model(DocumentDetail))


def delete_document(collection: str, doc_id: str) -> Call[Deleted]:
    return Call("DELETE", f"/rag/collections/{_seg(collection)}/documents/{_seg(doc_id)}", _model(Deleted))


def get_job(job_id: str) -> Call[Job]:
    return Call("GET", f"/rag/jobs/{_seg(job_id)}", _model(Job))


def list_jobs() -> Call[JobList]:
    return Call("GET", "/rag/jobs", _model(JobList))


def job_finished(job: Job) -> bool:
    return job.status in ("succeeded", "failed", "partial")


def chunk(text: str, *, format: str = "text", chunking: Mapping[str, Any] | None = None) -> Call[ChunkResponse]:
    request = ChunkRequest.model_validate({"text": text, "format": format, "chunking": chunking})
    return Call("POST", "/rag/chunk", _model(ChunkResponse), json=_body(request))


def _targets(collection: str | None, collections: Sequence[str] | None) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if collection is not None:
        out["collection"] = collection
    if collections is not None:
        out["collections"] = list(collections)
    return out


def retrieve(
    query: str, *, collection: str | None, collections: Sequence[str] | None, options: Mapping[str, Any]
) -> Call[RetrieveResponse]:
    request = RetrieveRequest.model_validate({"query": query, **_targets(collection, collections), **options})
    return Call("POST", "/rag/retrieve", _model(RetrieveResponse), json=_body(request))


def rerank(
    query: str,
    documents: Sequence[str] | None = None,
    *,
    hits: Sequence[Hit | Mapping[str, Any]] | None = None,
    top_n: int | None = None,
) -> Call[RerankResponse]:
    values: dict[str, Any] = {"query": query, "top_n": top_n}
    if documents is not None:
        values["documents"] = list(documents)
    if hits is not None:
        values["hits"] = [Hit.model_validate(h) if not isinstance(h, Hit) else h for h in hits]
    request = RerankRequest.model_validate({k: v for k, v in values.items() if v is not None})
    return Call("POST", "/rag/rerank", _model(RerankResponse), json=_body(request))


def _question(
    query: str | None,
    messages: Sequence[MessageLike] | None,
    collection: str | None,
    collections: Sequence[str] | None,
) -> dict[str, Any]:
    values = _targets(collection, collections)
    if query is not None:
        values["query"] = query
    if messages is not None:
        values["messages"] = [m.model_dump() if isinstance(m, Message) else dict(m) for m in messages]
    return values


def _ask(
    route: str,
    request: type[QueryRequest] | type[AgentRequest],
    answer: type[M],
    query: str | None,
    *,
    messages: Sequence[MessageLike] | None,
    collection: str | None,
    collections: Sequence[str] | None,
    stream: bool,
    options: Mapping[str, Any],
    idempotent: bool,
) -> Call[M]:
    values = {**_question(query, messages, collection, collections), **options, "stream": stream}
    body = _body(request.model_validate(values))
    return Call("POST", route, _model(answer), json=body, idempotent=idempotent)


def query(query: str | None, *, stream: bool, **question: Any) -> Call[QueryResponse]:
    # A stream is not repeated: part of it may already have been read when it fails.
    return _ask("/rag/query", QueryRequest, QueryResponse, query, stream=stream, idempotent=not stream, **question)


def agent(query: str | None, *, stream: bool, **question: Any) -> Call[AgentResponse]:
    # The agent's tools may act (not only read), so it is never repeated.
    return _ask("/rag/agent", AgentRequest, AgentResponse, query, stream=stream, idempotent=False, **question)


def graph_stats(collection: str) -> Call[GraphStats]:
    return Call("GET", f"/rag/collections/{_seg(collection)}/graph", _model(GraphStats))


def graph_rebuild(collection: str) -> Call[GraphStats]:
    return Call("POST", f"/rag/collections/{_seg(collection)}/graph/rebuild", _model(GraphStats), idempotent=False)


def graph_entities(collection: str, q: str | None = None, limit: int | None = None) -> Call[EntityList]:
    params = {k: v for k, v in {"q": q, "limit": limit}.items() if v is not None}
    return Call("GET", f"/rag/collections/{_seg(collection)}/graph/entities", _model(EntityList), params=params)


def graph_entity(collection: str, entity_id: str) -> Call[EntityDetail]:
    path = f"/rag/collections/{_seg(collection)}/graph/entities/{_seg(entity_id)}"
    return Call("GET", path, _model(EntityDetail))


def graph_export(collection: str, format: str = "graphml") -> Call[bytes]:
    path = f"/rag/collections/{_seg(collection)}/graph/export"
    return Call("GET", path, lambda response: response.content, params={"format": format})


def perplexity(
    texts: str | Sequence[str], *, model: str, top_logprobs: int | None = None
) -> Call[PerplexityResponse]:
    values: dict[str, Any] = {"model": model, "input": texts if isinstance(texts, str) else list(texts)}
    if top_logprobs is not None:
        values["top_logprobs"] = top_logprobs
    request = PerplexityRequest.model_validate(values)
    return Call("POST", "/v1/perplexity", _model(PerplexityResponse), json=_body(request))


def chat_stream(model: str, messages: Sequence[Mapping[str, str]], max_tokens: int | None = None) -> Call[Any]:
    """`/v1/chat/completions` streamed (the CLI's plain chat; the SDK's users call it with the `openai` package)."""
    body: dict[str, Any] = {"model": model, "messages": [dict(m) for m in messages], "stream": True}
    if max_tokens is not None:
        body["max_tokens"] = max_tokens
    return Call("POST", "/v1/chat/completions", lambda response: response.json(), json=body, idempotent=False)


def models() -> Call[ModelList]:
    return Call("GET", "/v1/models", _model(ModelList))


def health() -> Call[Health]:
    return Call("GET", "/health", _model(Health))


def ready() -> Call[Readiness]:
    # 503 is an answer here (still loading), not a failure to retry.
    def parse(response: httpx.Response) -> Readiness:
        body = response.json()
        if response.status_code != 200:
            body = {"status": "not_ready", **{k: v for k, v in body.items() if k != "status"}}
        return Readiness.model_validate(body)

    return Call("GET", "/ready", parse, ok_statuses=frozenset({503}))


# ---------------------------------------------------------------- shared client state


class ClientBase:
    """Settings and request building shared by `InferagClient` and `AsyncInferagClient`."""

    def __init__(
        self,
        base_url: str | None = None,
        api_key: str | None = None,
        *,
        timeout: float | httpx.Timeout = DEFAULT_TIMEOUT,
        max_retries: int = 3,
        backoff: float = 0.5,
        max_backoff: float = 30.0,
        headers: Mapping[str, str] | None = None,
    ):
        self.base_url = (base_url or os.environ.get("INFERAG_BASE_URL") or DEFAULT_BASE_URL).rstrip("/")
        self.api_key = api_key if api_key is not None else os.environ.get("INFERAG_API_KEY") or None
        self.timeout = timeout
        self.max_retries = max_retries
        self.backoff = backoff
        self.max_backoff = max_backoff
        self._headers = {"Accept": "application/json", **(headers or {})}
        if self.api_key:
            self._headers["Authorization"] = f"Bearer {self.api_key}"

    def _client_options(self) -> dict[str, Any]:
        return {"base_url": self.base_url, "headers": self._headers, "timeout": self.timeout}

    def _build(self, http: httpx.Client | httpx.AsyncClient, call: Call[Any], *, stream: bool = False) -> httpx.Request:
        headers = {"Accept": "text/event-stream"} if stream else None
        return http.build_request(
            call.method,
            call.path,
            json=call.json,
            params=call.params,
            files=call.files,
            data=call.data,
            headers=headers,
        )

    def _retry_delay(
        self, call: Call[Any], attempt: int, error: InferagError | None, refused: bool = False
    ) -> float | None:
        """Seconds to wait before the next attempt, or None to give up.

        Only idempotent calls are repeated, on 429/503 answers and on connection failures (error None), and
        any call the server `refused` before starting it (a stream answered 429/503, or never connected).
        The delay is the server's Retry-After when it sent one, else exponential backoff with jitter.
        """
        if not (call.idempotent or refused) or attempt >= self.max_retries:
            return None
        if error is not None and error.status not in RETRY_STATUSES:
            return None
        asked = getattr(error, "retry_after", None)
        if asked is not None:
            return float(min(asked, self.max_backoff))
        return float(min(self.max_backoff, self.backoff * 2**attempt) * random.uniform(0.75, 1.25))

    def _log_retry(self, call: Call[Any], attempt: int, delay: float, reason: str) -> None:
        args = (call.method, call.path, reason, attempt + 1, self.max_retries, delay)
        log.info("%s %s: %s; retry %d/%d in %.2fs", *args)

    def _is_ok(self, call: Call[Any], response: httpx.Response) -> bool:
        return response.status_code < 400 or response.status_code in call.ok_statuses

    def openai_options(self) -> dict[str, Any]:
        """Arguments for the official `openai.OpenAI(...)` client pointed at this stack's `/v1`."""
        return {"base_url": self.base_url + "/v1", "api_key": self.api_key or "unused"}
