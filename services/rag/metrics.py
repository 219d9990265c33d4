"""Prometheus metrics of the orchestrator (stable names; the Grafana dashboard charts them)."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from services.common.metrics import LATENCY_BUCKETS


class RagMetrics:
    def __init__(self, registry: CollectorRegistry):
        self.stage = Histogram(
            "inferag_rag_stage_seconds",
            "Time spent per RAG stage (embed, retrieve, rerank, generate, ttft, total).",
            ["stage"],
            registry=registry,
            buckets=LATENCY_BUCKETS,
        )
        self.documents = Counter(
            "inferag_rag_ingest_documents", "Documents ingested, by outcome.", ["outcome"], registry=registry
        )
        self.chunks = Counter("inferag_rag_ingest_chunks", "Chunks stored.", registry=registry)
        self.jobs_running = Gauge("inferag_rag_jobs_running", "Ingestion jobs running.", registry=registry)


class Timings(dict[str, float]):
    """Stage durations in milliseconds, recorded in the histogram as they end."""

    def __init__(self, metrics: RagMetrics | None = None):
        super().__init__()
        self._metrics = metrics
        self._t0 = time.perf_counter()

    @contextlib.contextmanager
    def stage(self, name: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.record(name, time.perf_counter() - start)

    def record(self, name: str, seconds: float) -> None:
        self[name] = round(self.get(name, 0.0) + seconds * 1000, 3)
        if self._metrics is not None:
            self._metrics.stage.labels(name).observe(seconds)

    def since_start(self, name: str) -> None:
        """Record `name` as the time from this object's creation (ttft, total)."""
        self.record(name, time.perf_counter() - self._t0)
