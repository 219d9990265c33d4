"""The loaded orchestrator: store, upstream links, chunker, ingestion, retrieval, answers.

Upstreams are reached through interfaces (`Embedder`/`Reranker`, `Generator`, an
OpenAI-compatible HTTP client for LangChain) that have an in-process and an HTTP
implementation; `Links` carries whichever the deployment uses.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import shutil
import tempfile
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

import httpx

from inferag_protocol.rag import CollectionInfo, DocumentInfo, Hit, RetrievalMode, StoredChunk
from services.common.auth import ANONYMOUS, Principal
from services.common.errors import InferagError, NotFound, UpstreamUnavailable
from services.common.request_id import propagate_request_id
from services.embeddings.client import HttpEmbeddings, InProcessEmbeddings
from services.embeddings.models import PACKAGED, resolve_model

from .answer import Answerer
from .bm25 import BM25Encoder
from .chunking import Chunker
from .context import CachedEmbeddings
from .generator import Generator, HttpGenerator
from .graph.llm import LlmExtractor
from .graph.service import GraphService
from .ingest import Ingestor, JobManager
from .metrics import RagMetrics
from .retrieval import Retriever, best_sources
from .settings import RagSettings
from .store import VectorStore, open_store
from .store.snapshots import snapshot_collection_name

log = logging.getLogger(__name__)

Embeddings = InProcessEmbeddings | HttpEmbeddings


@dataclass
class Links:
    """How this process reaches the embeddings and generation services."""

    embeddings: Embeddings
    generator: Generator
    # OpenAI-compatible client of the generation service, for LangChain's ChatOpenAI (the agent).
    openai_http: httpx.AsyncClient
    openai_base_url: str
    closers: list[Callable[[], Awaitable[None]]] = field(default_factory=list)
    # Readiness of the services behind the links (raise UpstreamUnavailable when one is down).
    checks: list[Callable[[], Awaitable[None]]] = field(default_factory=list)

    async def aclose(self) -> None:
        for close in reversed(self.closers):
            with contextlib.suppress(Exception):
                await close()


def _client(settings: RagSettings, base_url: str) -> httpx.AsyncClient:
    """A client for an upstream service: the service key, and this request's X-Request-Id passed on."""
    key = settings.upstream_key()
    return httpx.AsyncClient(
        base_url=base_url,
        headers={"Authorization": f"Bearer {key}"} if key else {},
        timeout=settings.upstream_timeout,
        event_hooks={"request": [propagate_request_id]},
    )


async def http_links(settings: RagSettings) -> Links:
    """Links to services over the network, waiting until both answer (their start can take minutes)."""
    assert settings.embeddings_url and settings.generation_url
    gen_client = _client(settings, settings.generation_url)
    emb_client = _client(settings, settings.embeddings_url)
    retry = settings.upstream_retry()
    generator = HttpGenerator(gen_client, retry)
    delay = 0.5
    while True:
        try:
            embeddings = await HttpEmbeddings.connect(settings.embeddings_url, client=emb_client, retry=retry)
            await generator.models()
            break
        except InferagError as exc:  # unreachable, or 503 while they load
            log.info("waiting for upstream services: %s", exc.message)
        await asyncio.sleep(delay)
        delay = min(delay * 2, 5)
    return Links(
        embeddings=embeddings,
        generator=generator,
        openai_http=gen_client,
        openai_base_url=settings.generation_url.rstrip("/") + "/v1",
        closers=[gen_client.aclose, emb_client.aclose],
        checks=[_ready_check("embeddings", emb_client), _ready_check("generation", gen_client)],
    )


def _ready_check(name: str, client: httpx.AsyncClient) -> Callable[[], Awaitable[None]]:
    async def check() -> None:
        try:
            resp = await client.get("/ready", timeout=5)
        except httpx.HTTPError as exc:
            raise UpstreamUnavailable(f"The {name} service at {client.base_url} is unreachable: {exc}") from exc
        if resp.status_code != 200:
            raise UpstreamUnavailable(f"The {name} service at {client.base_url} is not ready ({resp.status_code}).")

    return check


class KnowledgeBase:
    """What the agent's tools see: search (retrieve + rerank), documents and collections, within the
    caller's scope (a collection the model names outside it is a Forbidden tool error)."""

    def __init__(self, service: RagService, caller: Principal = ANONYMOUS, mode: RetrievalMode = "hybrid"):
        self.service, self.caller, self.mode = service, caller, mode

    async def search(self, query: str, collections: list[str], top_k: int) -> list[Hit]:
        """The best `top_k` sources, from the same retrieval stage and depths as `/rag/query`."""
        for name in collections:
            self.caller.check(name)
        return await best_sources(self.service.retriever, collections, [query], keep=top_k, mode=self.mode,
                                  score_threshold=self.service.settings.min_score)

    async def get_document(self, collection: str, doc_id: str) -> tuple[DocumentInfo, list[StoredChunk]]:
        self.caller.check(collection)
        return await self.service.store.get_document(collection, doc_id)

    async def list_collections(self) -> list[CollectionInfo]:
        return [c for c in await self.service.store.list_collections() if self.caller.can(c.name)]

    async def embed(self, texts: Sequence[str]) -> Sequence[Any]:
        return await self.service.sentence_embeddings.embed(texts)

    def count_tokens(self, text: str) -> int:
        return self.service.count_tokens(text)


class RagService:
    def __init__(self, settings: RagSettings, store: VectorStore, links: Links, chunker: Chunker, metrics: RagMetrics):
        self.settings, self.store, self.links, self.chunker, self.metrics = settings, store, links, chunker, metrics
        self.sparse = BM25Encoder()
        llm = LlmExtractor(links.generator, self._graph_model, concurrency=settings.graph_llm_concurrency,
                           max_tokens=settings.graph_llm_max_tokens)
        self.graph = GraphService.build(store, links.embeddings, keyphrases=settings.graph_keyphrases, llm=llm,
                                        hops=settings.graph_hops, seeds=settings.graph_seeds)
        self.ingestor = Ingestor(store, links.embeddings, chunker, self.sparse, settings, metrics, self.graph)
        self.jobs = JobManager(self.ingestor, settings, metrics)
        self.retriever = Retriever(store, links.embeddings, links.embeddings, self.sparse, self.graph)
        # Sentences of retrieved chunks (context selection, quotes): embedded and counted once each.
        self.sentence_embeddings = CachedEmbeddings(links.embeddings)
        self.count_tokens = functools.lru_cache(maxsize=20_000)(chunker.count_tokens)
        self.answerer = Answerer(
            self.retriever, links.generator, self.sentence_embeddings, self.count_tokens, settings, metrics
        )

    async def _graph_model(self) -> str:
        return await self.answerer.model(self.settings.graph_llm_model)

    @classmethod
    async def load(cls, settings: RagSettings, metrics: RagMetrics, links: Links) -> RagService:
        store = await asyncio.to_thread(
            open_store,
            url=settings.qdrant_url,
            api_key=settings.qdrant_api_key.get_secret_value() if settings.qdrant_api_key else None,
            path=settings.store_path(),
            shard_number=settings.qdrant_shard_number,
            replication_factor=settings.qdrant_replication_factor,
            recover_interval_s=settings.store_recover_interval,
            optimize_idle_s=settings.store_optimize_idle,
            optimize_min_points=settings.store_optimize_min_points,
        )
        try:
            chunker = await asyncio.to_thread(_chunker, links.embeddings)
        except BaseException:
            await store.close()
            raise
        return cls(settings, store, links, chunker, metrics)

    def _scratch(self, prefix: str) -> Path:
        """A fresh folder for snapshot files and uploads, under the data folder (the store's disk)."""
        root = Path(self.settings.data_dir) / "snapshots"
        root.mkdir(parents=True, exist_ok=True)
        return Path(tempfile.mkdtemp(prefix=prefix, dir=root))

    async def snapshot_file(self, collection: str) -> Path:
        """A snapshot file of `collection` in a folder of its own (the caller removes the folder)."""
        folder = await asyncio.to_thread(self._scratch, "snapshot-")
        try:
            return await self.store.snapshot(collection, folder / f"{collection}.snapshot.tar.gz")
        except BaseException:
            shutil.rmtree(folder, ignore_errors=True)
            raise

    async def restore_snapshot(self, upload: BinaryIO, name: str | None,
                               check: Callable[[str], None]) -> CollectionInfo:
        """A new collection from an uploaded snapshot file; `check(name)` may refuse the name first."""
        folder = await asyncio.to_thread(self._scratch, "restore-")
        try:
            source = folder / "upload.snapshot.tar.gz"
            await asyncio.to_thread(_spool, upload, source)
            target: str = name if name else await asyncio.to_thread(snapshot_collection_name, source)
            check(target)
            return await self.store.restore(source, target)
        finally:
            shutil.rmtree(folder, ignore_errors=True)

    def chat_model(self, model: str, **kwargs: Any) -> Any:
        """LangChain's ChatOpenAI on the generation service (in-process or remote), for the agent."""
        from langchain_openai import ChatOpenAI

        return ChatOpenAI(
            model=model,
            base_url=self.links.openai_base_url,
            api_key=self.settings.upstream_key() or "none",
            http_async_client=self.links.openai_http,
            max_retries=0,
            **kwargs,
        )

    async def check_ready(self) -> None:
        """UpstreamUnavailable while the store or a service this one calls is down (for /ready)."""
        await asyncio.gather(self.store.ping(), *(check() for check in self.links.checks))

    async def close(self) -> None:
        await self.jobs.close()
        await self.graph.close()
        await self.store.close()
        await self.links.aclose()


def _spool(upload: BinaryIO, target: Path) -> None:
    with open(target, "wb") as out:
        shutil.copyfileobj(upload, out, 1 << 20)


def _chunker(embeddings: Embeddings) -> Chunker:
    """The chunker counts tokens with the embedding model's own tokenizer (packaged models: offline)."""
    name = embeddings.embed_model
    folder = resolve_model(name) if name in PACKAGED else name
    try:
        return Chunker.for_model(folder, embeddings.max_input_tokens, embed=embeddings.embed)
    except OSError as exc:
        raise NotFound(f"No tokenizer for the embedding model '{name}': {exc}") from exc
