"""The clients, written once: this file is `AsyncInferagClient`; `_client.py` (`InferagClient`) is generated
from it by `python clients/unasync_clients.py` (unasync: `await` dropped, `Async*` names made sync; a test
checks the two agree). Edit this file, then regenerate.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Mapping, Sequence
from pathlib import Path
from time import monotonic
from types import TracebackType
from typing import Any, Generic, TypeVar, Unpack

import httpx
from httpx_sse import EventSource, SSEError

from inferag_protocol.graph import EntityDetail, EntityList, GraphStats
from inferag_protocol.perplexity import PerplexityResponse
from inferag_protocol.rag import (
    ChunkResponse,
    CollectionInfo,
    CollectionList,
    Deleted,
    DocumentDetail,
    DocumentList,
    Hit,
    IngestResult,
    Job,
    JobList,
    QueryResponse,
    RerankResponse,
    RetrieveResponse,
)

from . import _core
from ._core import (
    AsyncProgress,
    Call,
    ClientBase,
    DocumentLike,
    FileLike,
    IngestOptions,
    MessageLike,
    UploadOptions,
    error_from_response,
)
from .errors import ConnectionFailed, error_for_body
from .events import AgentStreamEvent, QueryStreamEvent, error_of, parse_agent_event, parse_query_event
from .models import AgentResponse, Health, ModelList, Readiness

T = TypeVar("T")
E = TypeVar("E")


class AsyncStream(Generic[E]):
    """Typed events of one streaming answer: iterate it; as a context manager, leaving the block closes it."""

    def __init__(self, response: httpx.Response, parse: Callable[[str | None, str], E]):
        self.response = response
        self._parse = parse
        self._events = self._iterate()

    async def _iterate(self) -> AsyncGenerator[E, None]:
        try:
            async for sse in EventSource(self.response).aiter_sse():
                if sse.data.strip() == "[DONE]":
                    break
                event = self._parse(sse.event, sse.data)
                error = error_of(event)
                if error is not None:
                    raise error_for_body(error)
                yield event
        except SSEError as exc:  # not an event stream (a proxy's page, a JSON body)
            raise ConnectionFailed(f"{self.response.request.url}: {exc}") from exc
        finally:
            await self.response.aclose()

    def __aiter__(self) -> AsyncIterator[E]:
        return self._events

    async def __anext__(self) -> E:
        return await self._events.__anext__()

    async def aclose(self) -> None:
        await self._events.aclose()
        await self.response.aclose()

    async def __aenter__(self) -> AsyncStream[E]:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()


class AsyncCollections:
    def __init__(self, client: AsyncInferagClient):
        self._c = client

    async def list(self) -> CollectionList:
        return await self._c._request(_core.list_collections())

    async def create(self, name: str, *, graph: str | None = None) -> CollectionInfo:
        """Create a collection; `graph`: off, keyphrase or llm (default: the service's, keyphrase)."""
        return await self._c._request(_core.create_collection(name, graph))

    async def get(self, name: str) -> CollectionInfo:
        return await self._c._request(_core.get_collection(name))

    async def delete(self, name: str) -> Deleted:
        return await self._c._request(_core.delete_collection(name))

    async def snapshot(self, name: str, path: FileLike | None = None) -> Path:
        """Save a snapshot of the collection to `path` (default `<name>.snapshot.tar.gz` here); returns the path."""
        return await self._c._request(_core.snapshot_collection(name, path or f"{name}.snapshot.tar.gz"))

    async def restore(self, path: FileLike, name: str | None = None) -> CollectionInfo:
        """Restore a snapshot file as a new collection (`name`, default the snapshot's)."""
        return await self._c._request(await _core.arun_blocking(_core.restore_collection, path, name))


class AsyncDocuments:
    def __init__(self, client: AsyncInferagClient):
        self._c = client

    async def ingest(
        self, collection: str, documents: DocumentLike | Sequence[DocumentLike], **options: Unpack[IngestOptions]
    ) -> IngestResult | Job:
        """Ingest texts (str) or `DocumentIn`s; a `Job` comes back when it runs in the background.
        Options: metadata (added to each document's), chunking, background."""
        return await self._c._request(_core.ingest(collection, documents, **options))

    async def upload(
        self, collection: str, paths: FileLike | Sequence[FileLike], **options: Unpack[UploadOptions]
    ) -> IngestResult | Job:
        """Upload files of any supported type (README: formats) as multipart; options as `ingest`'s (`metadata`
        applies to each file), and `text_field`, the text of JSON records."""
        # Reading the files blocks (the async client reads them off the event loop).
        return await self._c._request(await _core.arun_blocking(_core.upload, collection, paths, **options))

    async def list(self, collection: str, *, limit: int | None = None, offset: int | None = None) -> DocumentList:
        return await self._c._request(_core.list_documents(collection, limit, offset))

    async def get(self, collection: str, doc_id: str) -> DocumentDetail:
        return await self._c._request(_core.get_document(collection, doc_id))

    async def delete(self, collection: str, doc_id: str) -> Deleted:
        return await self._c._request(_core.delete_document(collection, doc_id))


class AsyncGraph:
    """A collection's knowledge graph: stats, entities, one entity, export, rebuild."""

    def __init__(self, client: AsyncInferagClient):
        self._c = client

    async def stats(self, collection: str) -> GraphStats:
        return await self._c._request(_core.graph_stats(collection))

    async def entities(self, collection: str, q: str | None = None, *, limit: int | None = None) -> EntityList:
        """Entities matching `q` (name, then meaning), or the most connected ones."""
        return await self._c._request(_core.graph_entities(collection, q, limit))

    async def entity(self, collection: str, entity_id: str) -> EntityDetail:
        """An entity's neighbours, relations and linked chunks."""
        return await self._c._request(_core.graph_entity(collection, entity_id))

    async def export(self, collection: str, format: str = "graphml") -> bytes:
        """The whole graph as GraphML or node-link JSON."""
        return await self._c._request(_core.graph_export(collection, format))

    async def rebuild(self, collection: str) -> GraphStats:
        return await self._c._request(_core.graph_rebuild(collection))


class AsyncJobs:
    def __init__(self, client: AsyncInferagClient):
        self._c = client

    async def get(self, job_id: str) -> Job:
        return await self._c._request(_core.get_job(job_id))

    async def list(self) -> JobList:
        return await self._c._request(_core.list_jobs())

    async def wait(
        self,
        job_id: str,
        *,
        on_progress: AsyncProgress | None = None,
        poll_interval: float = 0.5,
        timeout: float | None = None,  # noqa: ASYNC109 (one surface for both clients)
    ) -> Job:
        """Poll until the job has finished (succeeded, failed or partial); `on_progress` sees every poll
        (the async client's may be a coroutine function)."""
        deadline = None if timeout is None else monotonic() + timeout
        while True:
            job = await self.get(job_id)
            if on_progress is not None:
                await _core.anotify(on_progress, job)
            if _core.job_finished(job):
                return job
            if deadline is not None and monotonic() > deadline:
                raise TimeoutError(f"job {job_id} still {job.status} after {timeout}s")
            await asyncio.sleep(poll_interval)


class AsyncInferagClient(ClientBase):
    """Client of every route of the stack. Base URL: argument, `INFERAG_BASE_URL` or http://127.0.0.1:8000;
    key: argument or `INFERAG_API_KEY`. Use the official `openai` package for `/v1/chat` and `/v1/embeddings`
    (`openai.OpenAI(**client.openai_options())`)."""

    def __init__(
        self,
        base_url: str | None = None,
        api_key: str | None = None,
        *,
        timeout: float | httpx.Timeout = _core.DEFAULT_TIMEOUT,
        max_retries: int = 3,
        backoff: float = 0.5,
        max_backoff: float = 30.0,
        headers: Mapping[str, str] | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
    ):
        super().__init__(
            base_url, api_key, timeout=timeout, max_retries=max_retries, backoff=backoff,
            max_backoff=max_backoff, headers=headers,
        )  # fmt: skip
        self._http = httpx.AsyncClient(transport=transport, **self._client_options())
        self.collections = AsyncCollections(self)
        self.graph = AsyncGraph(self)
        self.documents = AsyncDocuments(self)
        self.jobs = AsyncJobs(self)

    # ------------------------------------------------------------ plumbing

    async def _request(self, call: Call[T]) -> T:
        attempt = 0
        while True:
            try:
                response = await self._http.send(self._build(self._http, call))
            except httpx.TransportError as exc:
                delay = self._retry_delay(call, attempt, None)
                if delay is None:
                    raise ConnectionFailed(f"{call.method} {self.base_url}{call.path}: {exc}") from exc
                reason = type(exc).__name__
            else:
                if self._is_ok(call, response):
                    return call.parse(response)
                error = error_from_response(response)
                delay = self._retry_delay(call, attempt, error)
                if delay is None:
                    raise error
                reason = f"HTTP {response.status_code}"
            self._log_retry(call, attempt, delay, reason)
            await asyncio.sleep(delay)
            attempt += 1

    async def _stream(self, call: Call[Any], parse: Callable[[str | None, str], E]) -> AsyncStream[E]:
        """The stream's events; one refused before it started (429/503, never connected) is tried again."""
        attempt = 0
        while True:
            try:
                response = await self._http.send(self._build(self._http, call, stream=True), stream=True)
            except httpx.TransportError as exc:
                delay = self._retry_delay(call, attempt, None, refused=isinstance(exc, httpx.ConnectError))
                if delay is None:
                    raise ConnectionFailed(f"{call.method} {self.base_url}{call.path}: {exc}") from exc
                reason = type(exc).__name__
            else:
                if response.status_code < 400:
                    return AsyncStream(response, parse)
                await response.aread()
                await response.aclose()
                error = error_from_response(response)
                delay = self._retry_delay(call, attempt, error, refused=True)
                if delay is None:
                    raise error
                reason = f"HTTP {response.status_code}"
            self._log_retry(call, attempt, delay, reason)
            await asyncio.sleep(delay)
            attempt += 1

    async def aclose(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> AsyncInferagClient:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    # ------------------------------------------------------------ routes

    async def chunk(
        self, text: str, *, format: str = "text", chunking: Mapping[str, Any] | None = None
    ) -> ChunkResponse:
        """Split a text as ingestion would (`/rag/chunk`)."""
        return await self._request(_core.chunk(text, format=format, chunking=chunking))

    async def retrieve(
        self, query: str, *, collection: str | None = None, collections: Sequence[str] | None = None, **options: Any
    ) -> RetrieveResponse:
        """Ranked chunks (`/rag/retrieve`); options: top_k, mode, fusion, filter, score_threshold."""
        call = _core.retrieve(query, collection=collection, collections=collections, options=options)
        return await self._request(call)

    async def rerank(
        self,
        query: str,
        documents: Sequence[str] | None = None,
        *,
        hits: Sequence[Hit | Mapping[str, Any]] | None = None,
        top_n: int | None = None,
    ) -> RerankResponse:
        """Rank passages, or the hits of a retrieval, against the query (`/rag/rerank`)."""
        return await self._request(_core.rerank(query, documents, hits=hits, top_n=top_n))

    async def query(
        self,
        query: str | None = None,
        *,
        collection: str | None = None,
        collections: Sequence[str] | None = None,
        messages: Sequence[MessageLike] | None = None,
        **options: Any,
    ) -> QueryResponse:
        """An answer with citations (`/rag/query`); options: top_k, rerank_top_n, mode, model, max_tokens, ..."""
        call = _core.query(
            query, messages=messages, collection=collection, collections=collections, stream=False, options=options
        )
        return await self._request(call)

    async def query_stream(
        self,
        query: str | None = None,
        *,
        collection: str | None = None,
        collections: Sequence[str] | None = None,
        messages: Sequence[MessageLike] | None = None,
        **options: Any,
    ) -> AsyncStream[QueryStreamEvent]:
        """The answer as events: `retrieval`, `delta`..., `citations`, `done` (an `error` event is raised)."""
        call = _core.query(
            query, messages=messages, collection=collection, collections=collections, stream=True, options=options
        )
        return await self._stream(call, parse_query_event)

    async def agent(
        self,
        query: str | None = None,
        *,
        collection: str | None = None,
        collections: Sequence[str] | None = None,
        messages: Sequence[MessageLike] | None = None,
        **options: Any,
    ) -> AgentResponse:
        """The agent's answer (`/rag/agent`); options: tools, max_steps, model, ..."""
        call = _core.agent(
            query, messages=messages, collection=collection, collections=collections, stream=False, options=options
        )
        return await self._request(call)

    async def agent_stream(
        self,
        query: str | None = None,
        *,
        collection: str | None = None,
        collections: Sequence[str] | None = None,
        messages: Sequence[MessageLike] | None = None,
        **options: Any,
    ) -> AsyncStream[AgentStreamEvent]:
        """The agent's steps as events: `thought`, `tool_call`, `tool_result`, `delta`, `citations`, `done`."""
        call = _core.agent(
            query, messages=messages, collection=collection, collections=collections, stream=True, options=options
        )
        return await self._stream(call, parse_agent_event)

    async def perplexity(
        self, texts: str | Sequence[str], *, model: str, top_logprobs: int | None = None
    ) -> PerplexityResponse:
        """Per-token logprobs and perplexity of each text under `model` (`/v1/perplexity`)."""
        return await self._request(_core.perplexity(texts, model=model, top_logprobs=top_logprobs))

    async def models(self) -> ModelList:
        return await self._request(_core.models())

    async def health(self) -> Health:
        return await self._request(_core.health())

    async def ready(self) -> Readiness:
        return await self._request(_core.ready())
