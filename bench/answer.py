"""RAG answer path benchmark: what `/rag/query` costs on top of its stages, at 32 concurrent queries.

Starts the whole stack (`python -m services.gateway.app`, the packaged default models) on loopback,
ingests the course set, and sends its questions 32 at a time, whole and streamed. For each answer:

- overhead = server `total` minus the stage timings it reports (embed, retrieve, rerank, context,
  generate, quote): the answer path's own work and waiting (prompt, events, citations, the event loop);
- edge = the client's latency minus `total`: encoding and HTTP.

Prints p50/p95 in milliseconds and the ratio of the overhead to the generation call (`generate`),
the baseline measured in the same run, and the time to first token: the server's `ttft` timing and,
streamed, the client's time to the first `delta` event (at `--concurrency 1` that is what one user
waits for; issue 21's goal is p50 <= 0.6 s with the default settings). The script only uses the
HTTP API, so the same file measures an older checkout: copy it into that checkout's `bench/` and run
it there (the "before" figure).

    .venv/bin/python bench/answer.py              # 32 concurrent, 96 queries per way (a few minutes on 2 cores)
    .venv/bin/python bench/answer.py --quick      # 32 queries per way
    .venv/bin/python bench/answer.py --concurrency 1 --queries 20   # one user: the course set's 20 questions
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
from httpx_sse import EventSource

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.servers import REPO_ROOT, free_port, running  # noqa: E402

COLLECTION = "bench"
STAGES_EXCLUDED = {"total", "ttft"}  # not stages: spans from the request's start


def corpus() -> tuple[list[dict[str, Any]], list[str]]:
    root = REPO_ROOT / "datasets" / "course"
    docs = [json.loads(line) for line in (root / "corpus.jsonl").read_text(encoding="utf-8").splitlines() if line]
    queries = [json.loads(line)["text"] for line in (root / "queries.jsonl").read_text(encoding="utf-8").splitlines()]
    return [{"id": d["_id"], "text": d["text"], "source": d.get("title")} for d in docs], queries


def split(timings: dict[str, float], latency_ms: float, first_ms: float | None = None) -> dict[str, float]:
    stages = sum(v for k, v in timings.items() if k not in STAGES_EXCLUDED)
    row = {
        "overhead": timings["total"] - stages,
        "edge": latency_ms - timings["total"],
        "generate": timings.get("generate", 0.0),
        "ttft": timings.get("ttft", float("nan")),
        "total": timings["total"],
    }
    if first_ms is not None:
        row["client_ttft"] = first_ms
    row.update({f"stage:{k}": v for k, v in timings.items() if k not in STAGES_EXCLUDED})
    return row


async def whole(client: httpx.AsyncClient, body: dict[str, Any]) -> dict[str, float]:
    started = time.perf_counter()
    resp = await client.post("/rag/query", json=body)
    resp.raise_for_status()
    return split(resp.json()["timings"], (time.perf_counter() - started) * 1000)


async def streamed(client: httpx.AsyncClient, body: dict[str, Any]) -> dict[str, float]:
    started = time.perf_counter()
    done: dict[str, Any] | None = None
    first: float | None = None
    async with client.stream("POST", "/rag/query", json={**body, "stream": True}) as resp:
        resp.raise_for_status()
        async for sse in EventSource(resp).aiter_sse():
            event = json.loads(sse.data)
            if event.get("type") == "delta" and first is None:
                first = (time.perf_counter() - started) * 1000
            elif event.get("type") == "done":
                done = event
            elif event.get("type") == "error":
                raise RuntimeError(event)
    assert done is not None, "the stream ended without 'done'"
    return split(done["timings"], (time.perf_counter() - started) * 1000, first)


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


async def run(base: str, queries: list[str], concurrency: int, per_way: int, max_tokens: int) -> dict[str, Any]:
    limits = httpx.Limits(max_connections=concurrency * 2)
    async with httpx.AsyncClient(base_url=base, timeout=1800, limits=limits) as client:
        docs, _ = corpus()
        ingest = {"documents": docs, "background": False}
        resp = await client.post(f"/rag/collections/{COLLECTION}/documents", json=ingest)
        resp.raise_for_status()
        bodies = [{"collection": COLLECTION, "query": queries[i % len(queries)], "max_tokens": max_tokens}
                  for i in range(per_way)]  # fmt: skip
        for body in bodies[:2]:  # warm-up
            await whole(client, body)
        report: dict[str, Any] = {}
        for name, call in (("whole", whole), ("stream", streamed)):
            gate = asyncio.Semaphore(concurrency)

            async def one(body: dict[str, Any], call: Any = call, gate: asyncio.Semaphore = gate) -> dict[str, float]:
                async with gate:
                    result: dict[str, float] = await call(client, body)
                    return result

            started = time.perf_counter()
            rows = await asyncio.gather(*(one(b) for b in bodies))
            report[name] = {
                "queries": len(rows),
                "seconds": time.perf_counter() - started,
                **{
                    f"{k}_p50": statistics.median(r.get(k, 0.0) for r in rows)
                    for k in dict.fromkeys(k for r in rows for k in r)
                },
                **{f"{k}_p95": pct([r[k] for r in rows], 0.95) for k in ("overhead", "edge")},
            }
        return report


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--concurrency", type=int, default=32)
    ap.add_argument("--max-tokens", type=int, default=16)
    ap.add_argument("--queries", type=int, help="queries per way (default: 3 x concurrency, --quick 1 x)")
    args = ap.parse_args()
    per_way = args.queries or args.concurrency * (1 if args.quick else 3)
    _, queries = corpus()
    with tempfile.TemporaryDirectory() as folder:
        env = {"INFERAG_LOG_LEVEL": "warning", "INFERAG_RAG_QDRANT_PATH": str(Path(folder) / "qdrant"),
               "INFERAG_DATA_DIR": folder}  # fmt: skip
        port = free_port()
        with running("services.gateway.app", {**env, "INFERAG_PORT": str(port)}, port=port, timeout=900) as base:
            report = asyncio.run(run(base, queries, args.concurrency, per_way, args.max_tokens))

    commit = os.popen(f"git -C {REPO_ROOT} rev-parse --short HEAD 2>/dev/null").read().strip() or "?"
    print(f"\n/rag/query at {args.concurrency} concurrent, {per_way} queries per way, {args.max_tokens} tokens, "
          f"{os.cpu_count()} CPUs, checkout {commit}")  # fmt: skip
    print(f"{'way':7} {'overhead p50':>13} {'p95':>8} {'edge p50':>9} {'p95':>8} {'generate p50':>13} "
          f"{'total p50':>10} {'overhead/generate':>18}")  # fmt: skip
    for name, r in report.items():
        ratio = r["overhead_p50"] / r["generate_p50"] if r["generate_p50"] else float("nan")
        print(f"{name:7} {r['overhead_p50']:>13.2f} {r['overhead_p95']:>8.2f} {r['edge_p50']:>9.2f} "
              f"{r['edge_p95']:>8.2f} {r['generate_p50']:>13.1f} {r['total_p50']:>10.1f} {ratio:>18.4f}")  # fmt: skip
    stream = report["stream"]
    print(f"streamed time to first token p50: server `ttft` {stream['ttft_p50']:.0f} ms, client (first delta "
          f"event) {stream['client_ttft_p50']:.0f} ms; goal <= 600 ms at concurrency 1")  # fmt: skip
    stages = {k[len("stage:") : -len("_p50")]: v for k, v in stream.items() if k.startswith("stage:")}
    print("streamed stage p50 ms (a stage a query skipped counts 0): "
          + ", ".join(f"{k} {v:.1f}" for k, v in stages.items()))  # fmt: skip
    out = REPO_ROOT / ".bench"
    out.mkdir(exist_ok=True)
    (out / "answer.json").write_text(json.dumps({"commit": commit, "results": report}, indent=1))


if __name__ == "__main__":
    main()
