"""App factory of the RAG orchestrator: `build_app(settings)`; the store and upstream links open in the lifespan.

Standalone (`python -m services.rag.app`) it reaches the embeddings and generation
services at `INFERAG_RAG_EMBEDDINGS_URL` / `INFERAG_RAG_GENERATION_URL`; the gateway
mounts it with in-process links instead (`links=`).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, cast, get_args

from fastapi import APIRouter, Depends, FastAPI, Request
from prometheus_client import CollectorRegistry

from inferag_protocol.rag import RetrievalMode
from services.common.logging import setup_logging
from services.common.service import build_service_app, require_key, serve
from services.generation.responses.store import ResponseStore

from . import responses
from .agent import make_agent_router
from .dependencies import caller, get_rag
from .graph.router import router as graph_router
from .metrics import RagMetrics
from .retrieval import GRAPH_MODES
from .router import router
from .service import KnowledgeBase, Links, RagService, http_links
from .settings import RagSettings
from .store import StoreLocked, StoreNeedsMigration, check_folder_free


def api_router(settings: RagSettings) -> APIRouter:
    """The RAG routes and the agent's, behind the API key."""
    agent = make_agent_router(
        agent_kb,
        agent_chat_model,
        native_tools=settings.agent_native_tools,
        time_limit_s=settings.agent_time_limit,
        max_observation_chars=settings.agent_max_observation_chars,
        tool_time_limit_s=settings.agent_tool_time_limit,
        context_mode=settings.context_mode,
        context_tokens=settings.context_tokens,
    )
    api = APIRouter()
    api.include_router(router)
    api.include_router(graph_router)
    api.include_router(agent, dependencies=[Depends(require_key)])
    responses.install(api)
    return api


async def agent_kb(request: Request) -> KnowledgeBase:
    """The agent's knowledge base, limited to the caller's collections (403 for the request's own), searching with
    the request's retrieval mode (a graph mode on a collection without a graph: 400 before the agent starts)."""
    who = caller(request)
    body = await request.json()
    named = [body.get("collection"), *(body.get("collections") or [])] if isinstance(body, dict) else []
    for name in named:
        if isinstance(name, str):
            who.check(name)
    rag = get_rag(request)
    raw = body.get("mode") if isinstance(body, dict) else None
    mode: RetrievalMode = cast(RetrievalMode, raw) if raw in get_args(RetrievalMode) else "hybrid"
    if mode in GRAPH_MODES:
        await rag.graph.require_for_mode([n for n in named if isinstance(n, str)], mode)
    return KnowledgeBase(rag, who, mode)


async def agent_chat_model(request: Request) -> Any:
    """The agent's LangChain chat model: the generation service's default model, greedy."""
    rag = get_rag(request)
    return rag.chat_model(await rag.answerer.model(None), temperature=0, stream_usage=True)


def build_app(
    settings: RagSettings | None = None,
    registry: CollectorRegistry | None = None,
    links: Callable[[], Awaitable[Links]] | None = None,
) -> FastAPI:
    """The service as an ASGI app; `links` says how to reach the other services (default: their URLs)."""
    settings = settings or RagSettings()
    registry = registry or CollectorRegistry()
    metrics = RagMetrics(registry)
    make_links = links or (lambda: http_links(settings))

    async def load() -> RagService:
        opened = await make_links()
        try:
            return await RagService.load(settings, metrics, opened)
        except BaseException:
            await opened.aclose()
            raise

    async def close(service: RagService) -> None:
        await service.close()

    app = build_service_app(
        "rag", settings, registry, load, close, api_router(settings), body_limit=settings.max_upload_bytes
    )
    app.state.responses_store = ResponseStore(settings.responses_store_size, int(settings.responses_store_mib * 2**20))
    return app


def refuse_locked_store(settings: RagSettings) -> None:
    """Exit with a one-line message when another process holds the embedded store, or when its folder is a
    previous version's that `inferag collections migrate` must convert first (not a traceback later)."""
    if settings.qdrant_url:
        return
    try:
        check_folder_free(settings.store_path())
    except (StoreLocked, StoreNeedsMigration) as exc:
        raise SystemExit(f"error: {exc.message}") from None


def main() -> None:
    settings = RagSettings()
    setup_logging(settings.log_level, settings.log_json)
    if not (settings.embeddings_url and settings.generation_url):
        raise SystemExit(
            "The RAG service alone needs INFERAG_RAG_EMBEDDINGS_URL and INFERAG_RAG_GENERATION_URL; "
            "to run everything in one process use `python -m services.gateway.app` (make run)."
        )
    refuse_locked_store(settings)
    serve(build_app(settings), settings)


if __name__ == "__main__":
    main()
