"""One entry point for the whole stack: generation, embeddings and RAG behind one port.

`make run` runs every service in this process (the laptop default). With
`INFERAG_GENERATION_URL` / `INFERAG_EMBEDDINGS_URL` / `INFERAG_RAG_URL` set, the routes of
that service are forwarded to it instead (compose and Kubernetes: one published port).
Each service keeps its own app (routes, lifespan, errors); the gateway answers the shared
routes itself: `/health`, `/ready` (every service ready), `/v1/models` (all models), `/metrics`.
A chat or Responses request whose model is `rag:<collection>` goes to the RAG service; with several
generation models (`models.py`), the others go to the service of their `model`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from typing import Any

import httpx
from fastapi import FastAPI, Request, Response
from fastapi.responses import JSONResponse
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from services.common.auth import authenticate
from services.common.errors import (
    InferagError,
    ModelNotFound,
    NotReady,
    error_body,
    error_response,
    install_error_handlers,
)
from services.common.limits import read_body
from services.common.logging import setup_logging
from services.common.request_id import RequestIdMiddleware
from services.common.service import draining, serve
from services.common.settings import CommonSettings
from services.embeddings.app import build_app as build_embeddings
from services.embeddings.client import InProcessEmbeddings
from services.embeddings.settings import EmbeddingsSettings
from services.generation.app import build_app as build_generation
from services.generation.settings import GenerationSettings
from services.playground import playground_router
from services.rag.app import build_app as build_rag
from services.rag.app import refuse_locked_store
from services.rag.generator import InProcessGenerator
from services.rag.service import Links
from services.rag.serving import RAG_MODEL_PREFIX
from services.rag.settings import RagSettings

from .models import (
    DEFAULT,
    MODEL_PATHS,
    RAG_MODEL_PATHS,
    ModelRouter,
    request_model,
)
from .proxy import Proxy
from .settings import GatewaySettings

log = logging.getLogger(__name__)

EMBEDDING_PATHS = ("/v1/embeddings", "/v1/rerank", "/rerank", "/v1/sparse-embeddings")
SHARED_PATHS = frozenset({"/health", "/ready", "/v1/models", "/metrics", "/", "/playground"})


async def _replay(scope: Scope, receive: Receive, max_bytes: int) -> tuple[bytes, Receive]:
    """The whole request body (PayloadTooLarge past `max_bytes`, declared or sent, before more is read),
    and a `receive` that gives it again (then the client's own messages)."""
    body = await read_body(scope, receive, max_bytes)
    return body, _resend(body, receive)


def _resend(body: bytes, receive: Receive) -> Receive:
    """A `receive` that gives `body` once, then the client's own messages."""
    sent = False

    async def again() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return again


class Gateway:
    """ASGI app that dispatches by path to the front app (shared routes) or a service."""

    def __init__(
        self,
        front: FastAPI,
        services: dict[str, ASGIApp],
        models: ModelRouter | None = None,
        settings: CommonSettings | None = None,
    ):
        self.front, self.services = front, services
        self.models = models or ModelRouter({})
        self.settings = settings or CommonSettings()

    async def _body(self, scope: Scope, receive: Receive) -> tuple[bytes, Receive]:
        """The body routing needs, read only after the key is checked and at most max_body_bytes of it, so a
        caller without a key or with an endless body never makes the gateway hold it."""
        authenticate(Request(scope), self.settings.api_key, self.settings.api_keys)
        return await _replay(scope, receive, self.settings.max_body_bytes)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "")
        target: ASGIApp
        if scope["type"] == "lifespan" or path in SHARED_PATHS:
            target = self.front
        elif path.startswith("/rag/"):
            target = self.services["rag"]
        elif path.startswith(EMBEDDING_PATHS):
            target = self.services["embeddings"]
        elif path in MODEL_PATHS and scope["method"] == "POST":
            try:
                body, receive = await self._body(scope, receive)
            except InferagError as exc:
                await error_response(exc)(scope, receive, send)
                return
            model = request_model(body)
            key = self.models.service_for(model)
            if model is not None and model.startswith(RAG_MODEL_PREFIX) and path in RAG_MODEL_PATHS:
                target, scope = self.services["rag"], {**scope, "path": RAG_MODEL_PATHS[path]}
            elif key is None:
                target = error_response(ModelNotFound(str(model), list(self.models.names)))
            else:
                target = self.services[key]
        elif path.startswith("/v1/responses/") and scope["method"] in ("GET", "DELETE"):
            await self._first_found(scope, receive, send)
            return
        else:
            target = self.services["generation"]
        await target(scope, receive, send)

    async def _first_found(self, scope: Scope, receive: Receive, send: Send) -> None:
        """A stored response lives in the service that made it: ask each in turn, the first that has it answers."""
        try:
            body, receive = await self._body(scope, receive)
        except InferagError as exc:
            await error_response(exc)(scope, receive, send)
            return
        targets = [self.services[key] for key in self.models.services] + [self.services["rag"]]
        for target in targets[:-1]:
            messages: list[Message] = []

            async def keep(message: Message, messages: list[Message] = messages) -> None:
                messages.append(message)

            await target(scope, _resend(body, receive), keep)
            if next((m["status"] for m in messages if m["type"] == "http.response.start"), 404) != 404:
                for message in messages:
                    await send(message)
                return
        await targets[-1](scope, _resend(body, receive), send)


async def _wait_loaded(app: FastAPI, name: str) -> Any:
    while (service := getattr(app.state, name)) is None:
        if app.state.load_error is not None:
            raise NotReady(f"{name} failed to load: {app.state.load_error}")
        await asyncio.sleep(0.1)
    return service


def inprocess_links(gen_app: FastAPI, emb_app: FastAPI, settings: RagSettings) -> Any:
    """Links from the RAG service to the generation and embeddings apps of this process."""

    async def make() -> Links:
        emb_service = await _wait_loaded(emb_app, "embeddings")
        await _wait_loaded(gen_app, "generation")
        key = settings.upstream_key()
        http = httpx.AsyncClient(
            transport=httpx.ASGITransport(app=gen_app),
            base_url="http://generation",
            headers={"Authorization": f"Bearer {key}"} if key else {},
            timeout=settings.upstream_timeout,
        )
        return Links(
            embeddings=InProcessEmbeddings(emb_service, retry=settings.upstream_retry()),
            generator=InProcessGenerator(lambda: gen_app.state.generation),
            openai_http=http,
            openai_base_url="http://generation/v1",
            closers=[http.aclose],
        )

    return make


def build_gateway(
    settings: GatewaySettings | None = None,
    generation: GenerationSettings | None = None,
    embeddings: EmbeddingsSettings | None = None,
    rag: RagSettings | None = None,
) -> Gateway:
    settings = settings or GatewaySettings()
    registry = CollectorRegistry()
    urls = {"generation": settings.generation_url, "embeddings": settings.embeddings_url, "rag": settings.rag_url}
    apps: dict[str, FastAPI] = {}
    proxies: dict[str, Proxy] = {name: Proxy(name, url) for name, url in urls.items() if url}
    names: dict[str, str] = {}  # served model name -> service key, for models other than the default
    if "generation" not in proxies:
        generation = generation or settings.inherit(GenerationSettings)
        apps["generation"] = build_generation(generation, registry)
        names[generation.served_model_name or generation.model] = DEFAULT
        for name, model in settings.gen_extra_models.items():
            # Its own metrics registry: the metric names would clash with the default model's.
            extra = generation.model_copy(update={"model": model, "served_model_name": name, "adapters": None})
            apps[names.setdefault(name, f"{DEFAULT}:{name}")] = build_generation(extra, CollectorRegistry())
    for name, url in settings.model_urls().items():
        if url != settings.generation_url:
            proxies[names.setdefault(name, f"{DEFAULT}:{name}")] = Proxy(f"generation ({name})", url)
        else:
            names[name] = DEFAULT
    if "embeddings" not in proxies:
        apps["embeddings"] = build_embeddings(embeddings or settings.inherit(EmbeddingsSettings), registry)
    if "rag" not in proxies:
        rag = rag or settings.inherit(RagSettings)
        links = None
        if "generation" in apps and "embeddings" in apps:
            links = inprocess_links(apps["generation"], apps["embeddings"], rag)
        elif not (rag.generation_url and rag.embeddings_url):
            rag = rag.model_copy(
                update={"generation_url": rag.generation_url or urls["generation"],
                        "embeddings_url": rag.embeddings_url or urls["embeddings"]}  # fmt: skip
            )
        apps["rag"] = build_rag(rag, registry, links)
    services: dict[str, ASGIApp] = {**apps, **proxies}

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        async with contextlib.AsyncExitStack() as stack:
            for proxy in proxies.values():
                stack.push_async_callback(proxy.aclose)
            for app in apps.values():
                await stack.enter_async_context(app.router.lifespan_context(app))
            yield

    front = FastAPI(title="inferag", version="0.1.0", lifespan=lifespan)
    install_error_handlers(front)
    front.include_router(playground_router)

    @front.get("/health", tags=["ops"])
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    @front.get("/ready", tags=["ops"])
    async def ready() -> Response:
        states: dict[str, str] = {}
        for name, app in apps.items():
            loaded = getattr(app.state, app.state.service_name) is not None
            error = app.state.load_error
            states[name] = "ready" if loaded else (f"failed: {error}" if error else "loading")
        for name, proxy in proxies.items():
            ok, detail = await proxy.ready()
            states[name] = "ready" if ok else detail
        if draining.is_set():
            states["gateway"] = "shutting down"
        if all(v == "ready" for v in states.values()):
            return JSONResponse({"status": "ready", "services": states})
        body = error_body(f"not ready: {states}", "service_unavailable", code="not_ready")
        return JSONResponse({**body, "services": states}, status_code=503)

    @front.get("/v1/models", tags=["openai"])
    async def models(request: Request) -> dict[str, Any]:
        """Every service's models (RAG: one `rag:<collection>` per collection)."""
        authenticate(request, settings.api_key, settings.api_keys)
        auth = {"authorization": request.headers["authorization"]} if "authorization" in request.headers else {}

        async def listing(name: str, target: ASGIApp) -> list[dict[str, Any]]:
            if isinstance(target, Proxy):
                client = target.client
                resp = await client.get("/v1/models", headers=auth)
            else:
                async with httpx.AsyncClient(transport=httpx.ASGITransport(app=target), base_url="http://x") as c:
                    resp = await c.get("/v1/models", headers=auth)
            data: list[dict[str, Any]] = resp.json().get("data", []) if resp.status_code == 200 else []
            return data

        lists = await asyncio.gather(*(listing(n, t) for n, t in services.items()), return_exceptions=True)
        cards = {card["id"]: card for cards in lists if isinstance(cards, list) for card in cards}
        return {"object": "list", "data": list(cards.values())}

    @front.get("/metrics", include_in_schema=False)
    async def metrics(request: Request) -> Response:
        authenticate(request, settings.api_key, settings.api_keys)
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    return Gateway(front, services, ModelRouter(names), settings)


def main() -> None:
    settings = GatewaySettings()
    setup_logging(settings.log_level, settings.log_json)
    services = settings.in_process()
    if not settings.rag_url:
        refuse_locked_store(services.rag)
    gateway = build_gateway(settings, *services)
    serve(RequestIdMiddleware(gateway, service="gateway"), settings)


if __name__ == "__main__":
    main()
