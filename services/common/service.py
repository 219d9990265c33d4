"""What every service app shares: background model loading, readiness, key check, ops routes.

A service keeps its loaded object on `app.state.<name>` (None until loaded) and a
load failure on `app.state.load_error`; `/ready` and the route dependency read them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import CollectorRegistry

from .auth import check_api_key
from .errors import NotReady, error_body, install_error_handlers
from .metrics import install_metrics
from .request_id import RequestIdMiddleware
from .settings import CommonSettings

log = logging.getLogger(__name__)

T = TypeVar("T")


def build_service_app(
    name: str,
    settings: CommonSettings,
    registry: CollectorRegistry,
    load: Callable[[], Awaitable[T]],
    close: Callable[[T], Awaitable[None]],
    router: APIRouter,
) -> FastAPI:
    """A FastAPI app whose lifespan loads `name` in the background.

    /health answers while the models load; /ready and the routes answer 503 until
    `load()` has finished. `close` always runs at shutdown for a loaded service.
    Every response carries an `X-Request-Id` (the caller's or a new one), and so do its log lines.
    """

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async def run_load() -> None:
            try:
                setattr(app.state, name, await load())
            except Exception as exc:
                log.exception("%s: model load failed", name)
                app.state.load_error = exc

        task = asyncio.create_task(run_load())
        try:
            yield
        finally:
            task.cancel()
            with contextlib.suppress(BaseException):
                await task
            service = getattr(app.state, name)
            if service is not None:
                setattr(app.state, name, None)
                await close(service)

    app = FastAPI(title=f"inferag {name}", version="0.1.0", lifespan=lifespan)
    app.state.settings = settings
    app.state.service_name = name
    app.state.load_error = None
    setattr(app.state, name, None)
    install_error_handlers(app)
    install_metrics(app, registry, name)
    # Added last, so it wraps everything: the id is set before any other layer logs.
    app.add_middleware(RequestIdMiddleware, service=name)
    app.include_router(router)
    app.include_router(ops_router)
    return app


def loaded_service(request: Request) -> Any:
    """The app's loaded service, or NotReady (503) while it loads or after it failed."""
    service = getattr(request.app.state, request.app.state.service_name)
    if service is None:
        error = request.app.state.load_error
        raise NotReady(f"The models failed to load: {error}" if error else "The models are still loading.")
    return service


async def require_key(request: Request) -> None:
    check_api_key(request, request.app.state.settings.api_key)


ops_router = APIRouter(tags=["ops"])


@ops_router.get("/health")
async def health() -> dict[str, str]:
    """Liveness: the process answers."""
    return {"status": "ok"}


@ops_router.get("/ready", responses={503: {"description": "Models not loaded yet."}})
async def ready(request: Request) -> Response:
    """Readiness: the models are loaded."""
    try:
        loaded_service(request)
    except NotReady as exc:
        return JSONResponse(error_body(exc.message, "service_unavailable", code="not_ready"), status_code=503)
    return JSONResponse({"status": "ready"})


def serve(app: Any, settings: CommonSettings) -> None:
    """Run `app` with uvicorn: our JSON access line (RequestIdMiddleware) instead of uvicorn's, and on
    SIGTERM no new connections, then in-flight requests and streams get `shutdown_grace_s` to finish."""
    import uvicorn

    uvicorn.run(
        app,
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level,
        access_log=False,
        timeout_graceful_shutdown=settings.shutdown_grace_s,
    )
