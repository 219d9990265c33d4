"""Prometheus metrics. One registry per app, so several apps (tests, the gateway) coexist."""

from __future__ import annotations

import time
import weakref
from collections.abc import Callable

from fastapi import FastAPI, Request, Response
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .auth import authenticate
from .http import ResponseWatch

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)


class HttpMetrics:
    def __init__(self, registry: CollectorRegistry):
        self.requests = Counter(
            "inferag_http_requests_total",
            "HTTP requests by route and status.",
            ["service", "method", "route", "status"],
            registry=registry,
        )
        self.latency = Histogram(
            "inferag_http_request_seconds",
            "Time to the response headers, by route.",
            ["service", "method", "route"],
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )


class _MetricsMiddleware:
    """Pure ASGI (not BaseHTTPMiddleware), so streaming and disconnects pass through untouched."""

    def __init__(self, app: ASGIApp, metrics: HttpMetrics, service: str):
        self.app = app
        self.metrics = metrics
        self.service = service

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()

        def started(_: Message) -> None:
            route = getattr(scope.get("route"), "path", "unmatched")
            self.metrics.latency.labels(self.service, scope["method"], route).observe(time.perf_counter() - start)

        watch = ResponseWatch(send, started)
        try:
            await self.app(scope, receive, watch.send)
        finally:
            route = getattr(scope.get("route"), "path", "unmatched")
            self.metrics.requests.labels(self.service, scope["method"], route, str(watch.status)).inc()


_HTTP_METRICS: weakref.WeakKeyDictionary[CollectorRegistry, HttpMetrics] = weakref.WeakKeyDictionary()


def install_metrics(app: FastAPI, registry: CollectorRegistry, service: str) -> HttpMetrics:
    """Count every request by its route template (not its raw path) and expose /metrics.

    Several services may share one registry (the one-process gateway): they then share
    the HTTP counters, told apart by the `service` label.
    """
    metrics = _HTTP_METRICS.get(registry)
    if metrics is None:
        metrics = _HTTP_METRICS[registry] = HttpMetrics(registry)
    app.add_middleware(_MetricsMiddleware, metrics=metrics, service=service)

    async def _metrics(request: Request) -> Response:
        settings = request.app.state.settings
        authenticate(request, settings.api_key, settings.api_keys)  # Prometheus sends the key as a bearer token
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    app.add_api_route("/metrics", _metrics, methods=["GET"], include_in_schema=False, tags=["ops"])
    return metrics


def gauge(registry: CollectorRegistry, name: str, doc: str, fn: Callable[[], float]) -> Gauge:
    g = Gauge(name, doc, registry=registry)
    g.set_function(fn)
    return g
