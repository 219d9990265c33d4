"""What every service app shares: background model loading, readiness, key check, ops routes.

A service keeps its loaded object on `app.state.<name>` (None until loaded) and a
load failure on `app.state.load_error`; `/ready` and the route dependency read them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, Literal, TypeVar

from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import JSONResponse, Response
from prometheus_client import CollectorRegistry
from pydantic import BaseModel
from sse_starlette.sse import AppStatus

from .auth import ANONYMOUS, KeyCheck, Principal, RateLimiter, authenticate
from .errors import InferagError, NotReady, error_body, install_error_handlers
from .limits import BodyLimit
from .metrics import install_metrics
from .protocol import error_responses
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
    *,
    body_limit: int | None = None,
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
            except InferagError as exc:  # a known cause (store locked, bad setting): its message says it all
                log.error("%s: load failed: %s", name, exc.message)
                app.state.load_error = exc
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
    app.state.rate_limiter = (
        RateLimiter(settings.rate_limit_rps, settings.rate_limit_burst) if settings.rate_limit_rps else None
    )
    install_error_handlers(app)
    # Innermost of the middleware but inside the metrics: refused keys are counted, and no body is read for them.
    app.add_middleware(KeyCheck, key=settings.api_key, keys=settings.api_keys)
    install_metrics(app, registry, name)
    app.add_middleware(BodyLimit, max_bytes=body_limit or settings.max_body_bytes)
    if settings.cors_origins:
        app.add_middleware(
            CORSMiddleware, allow_origins=settings.cors_origins, allow_methods=["*"], allow_headers=["*"],
            expose_headers=["X-Request-Id", "Retry-After"],
        )  # fmt: skip
    # Added last, so it wraps everything: the id is set before any other layer logs.
    app.add_middleware(RequestIdMiddleware, service=name)
    app.include_router(router)
    app.include_router(ops_router)
    _document_400_not_422(app)
    return app


def _document_400_not_422(app: FastAPI) -> None:
    """Drop the 422 FastAPI documents on every route with inputs: validation errors are 400 here."""
    generate = app.openapi

    def openapi() -> dict[str, Any]:
        schema = app.openapi_schema
        if schema is None:
            schema = generate()
            for operations in schema.get("paths", {}).values():
                for operation in operations.values():
                    operation.get("responses", {}).pop("422", None)
            for name in ("HTTPValidationError", "ValidationError"):
                schema.get("components", {}).get("schemas", {}).pop(name, None)
        return schema

    app.openapi = openapi  # type: ignore[method-assign]


def loaded_service(request: Request) -> Any:
    """The app's loaded service, or NotReady (503) while it loads or after it failed."""
    service = getattr(request.app.state, request.app.state.service_name)
    if service is None:
        error = request.app.state.load_error
        raise NotReady(f"The models failed to load: {error}" if error else "The models are still loading.")
    return service


async def require_key(request: Request) -> Principal:
    """The caller (401 without a valid key when keys are set), counted against its rate limit (429)."""
    settings = request.app.state.settings
    principal = authenticate(request, settings.api_key, settings.api_keys)
    limiter: RateLimiter | None = request.app.state.rate_limiter
    if limiter is not None:
        client = request.client.host if request.client else "unknown"
        limiter.take(principal.name if principal is not ANONYMOUS else f"ip:{client}")
    request.state.principal = principal
    return principal


async def service_dependency(request: Request) -> Any:
    """`loaded_service` as a route dependency: `Annotated[MyService, Depends(service_dependency)]`. An `async
    def`, as FastAPI runs a plain `def` dependency on its thread pool (a thread hop per request)."""
    return loaded_service(request)


def keyed_router(**kwargs: Any) -> APIRouter:
    """An APIRouter (same arguments) whose every route first checks the caller's key and rate limit."""
    return APIRouter(dependencies=[Depends(require_key)], **kwargs)


# transformers builds models under global patches of torch (meta-device init): two models loading at
# once in one process (the gateway's services) can corrupt each other. Loads take turns on this lock.
MODEL_LOAD_LOCK = threading.Lock()

# Set on SIGTERM (see `serve`): /ready answers 503 while in-flight requests drain.
draining = threading.Event()


ops_router = APIRouter(tags=["ops"])


class Health(BaseModel):
    status: Literal["ok"] = "ok"


class Ready(BaseModel):
    status: Literal["ready"] = "ready"


@ops_router.get("/health", response_model=Health)
async def health() -> Health:
    """Liveness: the process answers."""
    return Health()


@ops_router.get("/ready", response_model=Ready, responses=error_responses(503, e503="Not ready: loading or draining."))
async def ready(request: Request) -> Response:
    """Readiness: the models are loaded and the services this one needs answer."""
    try:
        if draining.is_set():
            raise NotReady("Shutting down.")
        service = loaded_service(request)
        check = getattr(service, "check_ready", None)
        if check is not None:
            await check()
    except NotReady as exc:
        return JSONResponse(error_body(exc.message, "service_unavailable", code="not_ready"), status_code=503)
    return JSONResponse({"status": "ready"})


def serve(app: Any, settings: CommonSettings) -> None:
    """Run `app` with uvicorn: our JSON access line (RequestIdMiddleware) instead of uvicorn's.

    On SIGTERM: /ready turns 503 at once and requests are still served for `shutdown_drain_s` (load
    balancers stop sending new ones); then no new connections, and in-flight requests and streams get
    `shutdown_grace_s` to finish before the process exits.
    """
    import uvicorn

    class Server(uvicorn.Server):
        def handle_exit(self, sig: int, frame: Any) -> None:
            if draining.is_set() or settings.shutdown_drain_s <= 0:
                draining.set()
                super().handle_exit(sig, frame)
                return
            draining.set()
            log.info("draining for %.1f s before shutdown", settings.shutdown_drain_s)
            asyncio.get_running_loop().call_later(settings.shutdown_drain_s, super().handle_exit, sig, frame)

    # sse-starlette would end every stream as soon as uvicorn starts shutting down; ours get the grace period.
    AppStatus.disable_automatic_graceful_drain()
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level,
        access_log=False,
        timeout_graceful_shutdown=settings.shutdown_grace_s,
    )
    Server(config).run()
