"""Load check of the one-command stack: streaming chat clients and ingesters at once, for a bounded time.

Pass criteria (exit status 1 when one fails):
  * every answer is 2xx, or 429 with a Retry-After header that came back in under a second (or, on a
    starved machine, in under twice the slowest /health answered meanwhile);
  * no stream is cut without its error event (a stream ends with its final chunk and [DONE],
    or carries an error event);
  * the server's RSS at the end is within 20% of its RSS after the warm-up;
  * once the clients stop, the engine's running and waiting gauges fall back to 0.

Without --base-url the stack (`python -m services.gateway.app`) is started on a temporary Qdrant
folder with small admission bounds, so the 429 path is exercised too.

    .venv/bin/python bench/load.py                             # long form: 5 minutes, 64 clients, 8 ingesters
    .venv/bin/python bench/load.py --duration 20 --warmup 8    # the CI form (tests/e2e/test_load.py)
    .venv/bin/python bench/load.py --base-url http://127.0.0.1:8000 --server-pid 1234
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import random
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from httpx_sse import EventSource

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from inferag_protocol.common import parse_retry_after  # noqa: E402
from tests.procs import Server, gateway_env, rss_bytes  # noqa: E402
from tests.servers import free_port  # noqa: E402

PROMPTS = [
    "Explain what a vector database is.",
    "Write a short poem about the sea.",
    "List three uses of Python in science.",
    "Why is the sky blue?",
    "Describe the water cycle in simple words.",
    "Give me a recipe for pancakes.",
    "What is the difference between a list and a tuple?",
    "Summarize the plot of Romeo and Juliet.",
]
WORDS = [
    "qdrant", "vector", "index", "chunk", "embedding", "rerank", "hybrid", "sparse", "dense", "query", "answer",
    "citation", "source", "model", "token", "batch", "engine", "stream", "latency", "memory", "shard", "replica",
]  # fmt: skip
# Small admission bounds for the stack this script starts: 64 clients overflow them, so 429s happen.
STACK_BOUNDS = {
    "INFERAG_GEN_MAX_INFLIGHT": "8",
    "INFERAG_GEN_MAX_BATCH_SIZE": "8",
    "INFERAG_GEN_MAX_WAITING": "4",
    "INFERAG_GEN_DEFAULT_MAX_TOKENS": "16",
}
FAST_429_S = 1.0
MEMORY_TOLERANCE = 0.20


@dataclass
class LoadReport:
    duration_s: float = 0.0
    warmup_s: float = 0.0
    statuses: Counter[tuple[str, str]] = field(default_factory=Counter)  # (route, status or exception name)
    retry_after: Counter[bool] = field(default_factory=Counter)  # 429s with / without Retry-After
    latency_429: list[float] = field(default_factory=list)
    health: list[float] = field(default_factory=list)  # /health latency meanwhile: the baseline of a 429's
    fast_429_s: float = FAST_429_S
    streams: Counter[str] = field(default_factory=Counter)  # completed / cut_with_error_event / cut_without
    cut_examples: list[str] = field(default_factory=list)
    ttft: list[float] = field(default_factory=list)
    latency: list[float] = field(default_factory=list)
    ingest_latency: list[float] = field(default_factory=list)
    documents: int = 0
    rss_warm: int | None = None
    rss_end: int | None = None
    rss_peak: int | None = None
    hung: int = 0
    engine_idle_s: float | None = None  # time for running+waiting to reach 0 after the clients stopped
    engine_left: str = ""

    def record(self, route: str, status: int | str) -> None:
        self.statuses[(route, str(status))] += 1

    def limit_429(self) -> float:
        """`fast_429_s`, or twice the slowest /health of the run when the whole server was that slow
        (a starved CPU, not a queued request: a queued one would take a stream's time)."""
        return max(self.fast_429_s, 2 * max(self.health, default=0.0))

    def slow_429s(self) -> list[float]:
        """The latencies of the 429s over `limit_429`."""
        return [t for t in self.latency_429 if t > self.limit_429()]

    def failures(self) -> list[str]:
        """The criteria that failed, one line each (empty: pass)."""
        out = []
        bad = {k: n for k, n in self.statuses.items() if not (k[1].startswith("2") or k[1] == "429")}
        if bad:
            out.append(f"responses other than 2xx/429: {dict(bad)}")
        if self.retry_after[False]:
            out.append(f"{self.retry_after[False]} 429s without Retry-After")
        slow = self.slow_429s()
        if slow:
            out.append(f"{len(slow)} 429s slower than {self.limit_429():.2f}s (max {max(slow):.2f}s)")
        if self.streams["cut_without_error_event"]:
            out.append(f"{self.streams['cut_without_error_event']} streams cut without an error event: "
                       f"{self.cut_examples[:3]}")  # fmt: skip
        if self.hung:
            out.append(f"{self.hung} requests still unanswered after the drain time")
        if not self.streams["completed"]:
            out.append("no stream completed")
        if self.rss_warm and self.rss_end and self.rss_end > self.rss_warm * (1 + MEMORY_TOLERANCE):
            out.append(f"RSS grew {self.rss_end / self.rss_warm - 1:+.0%} after warm-up (limit +20%)")
        if self.engine_idle_s is None:
            out.append(f"engine requests still running or waiting after the clients stopped: {self.engine_left}")
        return out

    def table(self) -> str:
        def pct(values: list[float], q: float) -> str:
            if not values:
                return "-"
            values = sorted(values)
            return f"{values[min(len(values) - 1, int(q * len(values)))] * 1000:.0f} ms"

        def mib(n: int | None) -> str:
            return "-" if n is None else f"{n / 2**20:.0f} MiB"

        ratio = f"{self.rss_end / self.rss_warm:.3f}" if self.rss_warm and self.rss_end else "-"
        rows = [("measured (after warm-up)", f"{self.duration_s:.0f} s (warm-up {self.warmup_s:.0f} s)")]
        for (route, status), n in sorted(self.statuses.items()):
            rows.append((f"{route} {status}", str(n)))
        rows += [
            ("429 with Retry-After", str(self.retry_after[True])),
            ("429 without Retry-After", str(self.retry_after[False])),
            ("429 latency limit", f"{self.limit_429() * 1000:.0f} ms"),
            ("429 latency p95 / max", f"{pct(self.latency_429, 0.95)} / "
             f"{(max(self.latency_429) * 1000 if self.latency_429 else 0):.0f} ms"),
            (f"/health latency p95 / max (n={len(self.health)})", f"{pct(self.health, 0.95)} / "
             f"{(max(self.health) * 1000 if self.health else 0):.0f} ms"),
            ("streams completed", str(self.streams["completed"])),
            ("streams cut with error event", str(self.streams["cut_with_error_event"])),
            ("streams cut without error event", str(self.streams["cut_without_error_event"])),
            ("stream TTFT p50 / p95", f"{pct(self.ttft, 0.5)} / {pct(self.ttft, 0.95)}"),
            ("stream latency p50 / p95", f"{pct(self.latency, 0.5)} / {pct(self.latency, 0.95)}"),
            ("ingest latency p50 / p95", f"{pct(self.ingest_latency, 0.5)} / {pct(self.ingest_latency, 0.95)}"),
            ("documents ingested", str(self.documents)),
            ("completed streams / s", f"{self.streams['completed'] / max(self.duration_s, 1e-9):.2f}"),
            ("RSS after warm-up / end / peak", f"{mib(self.rss_warm)} / {mib(self.rss_end)} / {mib(self.rss_peak)}"),
            ("RSS end / after warm-up", ratio),
            ("engine idle after stop", "-" if self.engine_idle_s is None else f"{self.engine_idle_s:.1f} s"),
        ]  # fmt: skip
        width = max(len(k) for k, _ in rows)
        return "\n".join(f"{k:<{width}}  {v}" for k, v in rows)


async def _refused(report: LoadReport, route: str, resp: httpx.Response, elapsed: float, counting: bool) -> None:
    """Count a non-2xx answer and wait as a polite client would before the next try."""
    if counting:
        report.record(route, resp.status_code)
    if resp.status_code == 429:
        after = parse_retry_after(resp.headers)
        if counting:
            report.retry_after[after is not None] += 1
            report.latency_429.append(elapsed)
        await asyncio.sleep(min(after or 1.0, 2.0) * random.uniform(0.3, 1.0))
    else:
        await asyncio.sleep(0.5)


async def _read_stream(resp: httpx.Response, start: float, kind: str) -> tuple[str, float | None, str]:
    """(outcome, time to first content, detail) of an SSE stream; `kind` is "chat" or "rag"."""
    ttft: float | None = None
    finished = done = error = False
    last = ""
    async for sse in EventSource(resp).aiter_sse():
        last = sse.data[:200]
        data = sse.data
        if data == "[DONE]":
            done = True
            continue
        event: dict[str, Any] = json.loads(data)
        if "error" in event or event.get("type") == "error":
            error = True
        elif kind == "chat":
            for choice in event.get("choices", []):
                if ttft is None and choice.get("delta", {}).get("content"):
                    ttft = time.perf_counter() - start
                finished = finished or choice.get("finish_reason") is not None
        elif event.get("type") == "delta" and ttft is None:
            ttft = time.perf_counter() - start
        elif event.get("type") == "done":
            finished = done = True
    if error:
        return "cut_with_error_event", ttft, last
    if finished and done:
        return "completed", ttft, last
    return "cut_without_error_event", ttft, f"ended after {last!r}"


async def _stream_client(
    client: httpx.AsyncClient, report: LoadReport, counting: Callable[[], bool], stop_at: float,
    route: str, body: Callable[[int], dict[str, Any]], kind: str,
) -> None:  # fmt: skip
    n = 0
    while time.monotonic() < stop_at:
        n += 1
        start = time.perf_counter()
        counted = counting()
        started = False
        try:
            async with client.stream("POST", route, json=body(n)) as resp:
                if resp.status_code != 200:
                    await resp.aread()
                    await _refused(report, route, resp, time.perf_counter() - start, counted)
                    continue
                started = True
                outcome, ttft, detail = await _read_stream(resp, start, kind)
        except httpx.HTTPError as exc:
            if counted:
                report.record(route, type(exc).__name__)
                if started:
                    report.streams["cut_without_error_event"] += 1
                    report.cut_examples.append(f"{route}: {type(exc).__name__}: {exc}")
            await asyncio.sleep(0.5)
            continue
        if counted:
            report.record(route, 200)
            report.streams[outcome] += 1
            if outcome == "cut_without_error_event":
                report.cut_examples.append(f"{route}: {detail}")
            if outcome == "completed":
                report.latency.append(time.perf_counter() - start)
                if ttft is not None:
                    report.ttft.append(ttft)


async def _ingester(
    client: httpx.AsyncClient, report: LoadReport, counting: Callable[[], bool], stop_at: float,
    collection: str, worker: int, pool: int,
) -> None:  # fmt: skip
    """Replace documents from a fixed pool of ids, so the store stops growing once the pool is full."""
    rng = random.Random(worker)
    route = f"/rag/collections/{collection}/documents"
    n = 0
    while time.monotonic() < stop_at:
        n += 1
        doc_id = f"load-{worker}-{n % pool}"
        text = " ".join(rng.choice(WORDS) for _ in range(rng.randint(40, 160))) + f". Document {doc_id} v{n}."
        body = {"documents": [{"id": doc_id, "text": text, "source": f"{doc_id}.txt"}], "background": False}
        start = time.perf_counter()
        counted = counting()
        try:
            resp = await client.post(route, json=body)
        except httpx.HTTPError as exc:
            if counted:
                report.record("/rag/.../documents", type(exc).__name__)
            await asyncio.sleep(0.5)
            continue
        if resp.status_code >= 300:
            await _refused(report, "/rag/.../documents", resp, time.perf_counter() - start, counted)
            continue
        if counted:
            report.record("/rag/.../documents", resp.status_code)
            report.ingest_latency.append(time.perf_counter() - start)
            report.documents += 1


async def engine_load(client: httpx.AsyncClient) -> tuple[float, float]:
    """(running, waiting) generation requests, from the stack's /metrics."""
    text = (await client.get("/metrics")).text
    values = {"running": 0.0, "waiting": 0.0}
    for line in text.splitlines():
        for key in values:
            if line.startswith(f"inferag_generation_requests_{key}"):
                values[key] += float(line.rsplit(" ", 1)[1])
    return values["running"], values["waiting"]


async def generation_model(client: httpx.AsyncClient) -> str:
    cards = (await client.get("/v1/models")).json()["data"]
    return next(c["id"] for c in cards if c.get("engine"))


async def run_load(
    base_url: str,
    *,
    duration: float,
    warmup: float = 10,
    chat_clients: int = 64,
    ingesters: int = 8,
    rag_clients: int = 0,
    max_tokens: int = 12,
    docs_per_ingester: int = 16,
    server_pid: int | None = None,
    collection: str = "load",
    drain_s: float = 120,
    fast_429_s: float = FAST_429_S,
    on_tick: Callable[[str], None] | None = None,
) -> LoadReport:
    """Run the load and return its report; counting starts after `warmup` seconds of the same load."""
    report = LoadReport(duration_s=duration, warmup_s=warmup, fast_429_s=fast_429_s)
    # Idle connections are dropped before uvicorn's 5 s keep-alive timeout closes them under us: a request
    # sent on a connection the server is closing fails with a ReadError that is no server fault.
    limits = httpx.Limits(max_connections=chat_clients + ingesters + rag_clients + 8, keepalive_expiry=2)
    timeout = httpx.Timeout(120, connect=10)
    async with httpx.AsyncClient(base_url=base_url, timeout=timeout, limits=limits) as client:
        model = await generation_model(client)
        created = await client.post("/rag/collections", json={"name": collection})
        created.raise_for_status()
        t0 = time.monotonic()
        count_from, stop_at = t0 + warmup, t0 + warmup + duration

        def counting() -> bool:
            return time.monotonic() >= count_from

        def chat_body(i: int) -> Callable[[int], dict[str, Any]]:
            return lambda n: {
                "model": model, "messages": [{"role": "user", "content": PROMPTS[(i + n) % len(PROMPTS)]}],
                "max_tokens": max_tokens, "temperature": 0.8, "stream": True,
            }  # fmt: skip

        def rag_body(n: int) -> dict[str, Any]:
            return {"collection": collection, "query": rng_words(n), "max_tokens": max_tokens, "stream": True,
                    "top_k": 5, "rerank_top_n": 2}  # fmt: skip

        tasks = [
            asyncio.create_task(
                _stream_client(client, report, counting, stop_at, "/v1/chat/completions", chat_body(i), "chat")
            )
            for i in range(chat_clients)
        ]
        tasks += [
            asyncio.create_task(_stream_client(client, report, counting, stop_at, "/rag/query", rag_body, "rag"))
            for _ in range(rag_clients)
        ]
        tasks += [asyncio.create_task(_ingester(client, report, counting, stop_at, collection, w, docs_per_ingester))
                  for w in range(ingesters)]  # fmt: skip
        peak = 0

        async def sample_memory() -> None:
            nonlocal peak
            while True:
                await asyncio.sleep(1)
                if server_pid is not None:
                    peak = max(peak, await asyncio.to_thread(rss_bytes, server_pid))

        async def probe_health() -> None:
            while True:
                await asyncio.sleep(0.5)
                start = time.perf_counter()
                with contextlib.suppress(httpx.HTTPError):
                    await client.get("/health")
                    if counting():
                        report.health.append(time.perf_counter() - start)

        sampler = asyncio.create_task(sample_memory())
        prober = asyncio.create_task(probe_health())
        await asyncio.sleep(max(0.0, count_from - time.monotonic()))
        if server_pid is not None:
            report.rss_warm = await asyncio.to_thread(rss_bytes, server_pid)
        while (left := stop_at - time.monotonic()) > 0:
            await asyncio.sleep(min(left, 5))
            if on_tick is not None:
                on_tick(f"{time.monotonic() - count_from:.0f}s: {report.streams['completed']} streams, "
                        f"{sum(n for (_, s), n in report.statuses.items() if s == '429')} 429s")  # fmt: skip
        _, pending = await asyncio.wait(tasks, timeout=drain_s)
        report.hung = len(pending)
        for task in pending:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for task in tasks:
            if not task.cancelled() and task.exception() is not None:
                raise task.exception()  # type: ignore[misc]
        for helper in (sampler, prober):
            helper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await helper
        if server_pid is not None:
            report.rss_end = await asyncio.to_thread(rss_bytes, server_pid)
            report.rss_peak = max(peak, report.rss_end, report.rss_warm or 0)
        stopped = time.monotonic()
        while True:
            running, waiting = await engine_load(client)
            if running == 0 and waiting == 0:
                report.engine_idle_s = time.monotonic() - stopped
                break
            if time.monotonic() - stopped > 15:
                report.engine_left = f"running={running:g} waiting={waiting:g}"
                break
            await asyncio.sleep(0.25)
    return report


def rng_words(n: int) -> str:
    rng = random.Random(n)
    return " ".join(rng.choice(WORDS) for _ in range(5)) + "?"


@contextlib.contextmanager
def one_command_stack(extra_env: dict[str, str] | None = None, timeout: float = 600) -> Any:
    """`python -m services.gateway.app` on a free port and a temporary Qdrant folder; yields the `Server`."""
    with tempfile.TemporaryDirectory(prefix="inferag-load-") as folder:
        port = free_port()
        env = gateway_env(port, Path(folder) / "qdrant", **STACK_BOUNDS, **(extra_env or {}))
        server = Server("services.gateway.app", env, port, name="load-gateway").start()
        try:
            server.wait_ready(timeout)
            yield server
        finally:
            server.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=float, default=300, help="Seconds of measured load after the warm-up.")
    parser.add_argument("--warmup", type=float, default=30, help="Seconds of the same load before measuring.")
    parser.add_argument("--chat-clients", type=int, default=64, help="Concurrent streaming chat clients.")
    parser.add_argument("--ingesters", type=int, default=8, help="Concurrent ingesters (one document per request).")
    parser.add_argument("--rag-clients", type=int, default=0, help="Concurrent streaming /rag/query clients.")
    parser.add_argument("--max-tokens", type=int, default=12, help="max_tokens of each chat request.")
    parser.add_argument("--docs-per-ingester", type=int, default=16, help="Ids each ingester cycles through.")
    parser.add_argument("--fast-429", type=float, default=FAST_429_S, help="Seconds a 429 may take.")
    parser.add_argument("--base-url", help="A running stack; default: start one (temporary Qdrant folder).")
    parser.add_argument("--server-pid", type=int, help="With --base-url: the server's pid, for the RSS criterion.")
    parser.add_argument(
        "--env",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="Extra environment of the started stack (e.g. INFERAG_GEN_MAX_INFLIGHT=16).",
    )
    args = parser.parse_args()

    def progress(line: str) -> None:
        print(line, file=sys.stderr, flush=True)

    def go(base: str, pid: int | None) -> LoadReport:
        return asyncio.run(run_load(
            base, duration=args.duration, warmup=args.warmup, chat_clients=args.chat_clients,
            ingesters=args.ingesters, rag_clients=args.rag_clients, max_tokens=args.max_tokens,
            docs_per_ingester=args.docs_per_ingester, server_pid=pid, on_tick=progress, fast_429_s=args.fast_429,
        ))  # fmt: skip

    if args.base_url:
        report = go(args.base_url.rstrip("/"), args.server_pid)
    else:
        extra = dict(item.split("=", 1) for item in args.env)
        progress(f"starting the stack with {STACK_BOUNDS | extra}")
        with one_command_stack(extra) as server:
            report = go(server.base, server.pid)
    print(report.table())
    failures = report.failures()
    for line in failures:
        print(f"FAIL: {line}")
    print("PASS" if not failures else "FAIL")
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
