"""The one-process stack: generation and embeddings behind one port, for `make run` and laptops.

Each service keeps its own app (routes, lifespan, errors); the gateway routes each
request to the service owning its path and answers the shared routes itself:
`/health`, `/ready` (every service loaded), `/v1/models` (all models), `/metrics`.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator
from typing import Any

from fastapi import FastAPI, Request, Response
from fastapi.responses import JSONResponse
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from starlette.types import Receive, Scope, Send

from services.common.auth import check_api_key
from services.common.errors import error_body, install_error_handlers
from services.common.logging import setup_logging
from services.common.settings import CommonSettings
from services.embeddings.app import build_app as build_embeddings
from services.embeddings.settings import EmbeddingsSettings
from services.generation.app import build_app as build_generation
from services.generation.settings import GenerationSettings

log = logging.getLogger(__name__)

EMBEDDING_PATHS = ("/v1/embeddings", "/v1/rerank", "/rerank", "/v1/sparse-embeddings")
SHARED_PATHS = frozenset({"/health", "/ready", "/v1/models", "/metrics"})


class GatewaySettings(CommonSettings):
    """`INFERAG_HOST`, `INFERAG_PORT`, `INFERAG_API_KEY`, ...; each service reads its own prefix too."""


class Gateway:
    """ASGI app that dispatches by path to the front app (shared routes) or a service app."""

    def __init__(self, front: FastAPI, generation: FastAPI, embeddings: FastAPI):
        self.front, self.generation, self.embeddings = front, generation, embeddings

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "")
        if scope["type"] == "lifespan" or path in SHARED_PATHS:
            target = self.front
        elif path.startswith(EMBEDDING_PATHS):
            target = self.embeddings
        else:
            target = self.generation
        await target(scope, receive, send)


def build_gateway(
    settings: GatewaySettings | None = None,
    generation: GenerationSettings | None = None,
    embeddings: EmbeddingsSettings | None = None,
) -> Gateway:
    settings = settings or GatewaySettings()
    registry = CollectorRegistry()
    gen_app = build_generation(generation, registry)
    emb_app = build_embeddings(embeddings, registry)
    services = {"generation": gen_app, "embeddings": emb_app}

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        async with contextlib.AsyncExitStack() as stack:
            for app in services.values():
                await stack.enter_async_context(app.router.lifespan_context(app))
            yield

    front = FastAPI(title="inferag", version="0.1.0", lifespan=lifespan)
    install_error_handlers(front)

    @front.get("/health", tags=["ops"])
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    @front.get("/ready", tags=["ops"])
    async def ready() -> Response:
        states = {}
        for name, app in services.items():
            loaded = getattr(app.state, name) is not None
            error = app.state.load_error
            states[name] = "ready" if loaded else (f"failed: {error}" if error else "loading")
        if all(v == "ready" for v in states.values()):
            return JSONResponse({"status": "ready", "services": states})
        body = error_body(f"not ready: {states}", "service_unavailable", code="not_ready")
        return JSONResponse({**body, "services": states}, status_code=503)

    @front.get("/v1/models", tags=["openai"])
    async def models(request: Request) -> dict[str, Any]:
        check_api_key(request, settings.api_key)
        data: list[dict[str, Any]] = []
        for name, app in services.items():
            service = getattr(app.state, name)
            if service is not None:
                data.extend(m.model_dump(exclude_none=True) for m in service.models().data)
        return {"object": "list", "data": data}

    @front.get("/metrics", include_in_schema=False)
    async def metrics() -> Response:
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    return Gateway(front, gen_app, emb_app)


def main() -> None:
    import uvicorn

    settings = GatewaySettings()
    setup_logging(settings.log_level, settings.log_json)
    # INFERAG_API_KEY / INFERAG_DATA_DIR, when given, apply to every service; a service's own
    # INFERAG_GEN_* / INFERAG_EMB_* value is kept otherwise.
    shared = {k: getattr(settings, k) for k in ("api_key", "data_dir") if k in settings.model_fields_set}
    gen = GenerationSettings(**shared)
    emb = EmbeddingsSettings(**shared)
    app = build_gateway(settings, gen, emb)
    uvicorn.run(app, host=settings.host, port=settings.port, log_level=settings.log_level)


if __name__ == "__main__":
    main()
