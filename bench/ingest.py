"""Ingestion benchmark through the started stack: documents/s vs the embedding rate of the same texts.

Starts the one-command stack (`python -m services.gateway.app`) on a temporary store folder (or
uses `--base-url`), then posts one-sentence documents, `--per-request` (16) a request, into one
collection, from one client, as the issue's measurement did. The baseline is the embedding
service itself: the same texts, the same number a request, posted to `/v1/embeddings` of the same
stack. Printed: documents/s of the first and of the last 2,000 documents (goal: the last no more
than 20% slower), their ratio to the embedding rate (goal >= 0.85), and, once everything is in,
the `retrieve` stage timing p50 of `/rag/retrieve` (goal <= 5 ms at 50k chunks), measured after the
store's background HNSW build (which starts once the collection has gone quiet) has finished.

    .venv/bin/python bench/ingest.py                          # 20,000 documents
    .venv/bin/python bench/ingest.py --docs 2000 --window 2000  # a 2,000-document corpus vs raw embedding
    .venv/bin/python bench/ingest.py --docs 50000 --queries 300 # the 50k-chunk retrieve timing
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.procs import Server, gateway_env  # noqa: E402
from tests.servers import free_port  # noqa: E402

WORDS = [
    "pump", "valve", "filter", "gauge", "seal", "bearing", "motor", "sensor", "pressure", "flow", "inspection",
    "schedule", "replacement", "alignment", "vibration", "lubrication", "coolant", "turbine", "gearbox", "shaft",
]  # fmt: skip


def sentence(i: int) -> str:
    rng = random.Random(i)
    return f"Note {i}: the " + " ".join(rng.choice(WORDS) for _ in range(rng.randint(8, 16))) + "."


def embed_rate(client: httpx.Client, model: str, texts: list[str], per_request: int) -> float:
    """Texts per second through /v1/embeddings, `per_request` texts a request."""
    began = time.perf_counter()
    for start in range(0, len(texts), per_request):
        resp = client.post("/v1/embeddings", json={"model": model, "input": texts[start:start + per_request]})
        resp.raise_for_status()
    return len(texts) / (time.perf_counter() - began)


def wait_for_index(server_pid: int | None, quiet_s: float = 60.0) -> None:
    """The embedded store builds a collection's HNSW index in a child process of the stack once the
    collection has had no write for a while: wait for that build (if one starts within `quiet_s`) to end,
    so neither the second embedding rate nor the retrieve timings share the CPU with it."""
    if server_pid is None:
        return
    import psutil

    def builds() -> list[psutil.Process]:
        found = []
        for child in psutil.Process(server_pid).children(recursive=True):
            try:
                if "EdgeShard.load" in " ".join(child.cmdline()):
                    found.append(child)
            except psutil.Error:
                pass
        return found

    deadline = time.monotonic() + quiet_s
    while not (running := builds()) and time.monotonic() < deadline:
        time.sleep(0.5)
    if running:
        began = time.perf_counter()
        psutil.wait_procs(running)
        print(f"  the HNSW index was built in the background in {time.perf_counter() - began:.0f} s",
              file=sys.stderr, flush=True)
    else:  # the retrieve timings below are then those of a brute-force search
        print(f"no background HNSW build was seen within {quiet_s:.0f} s of the last write", flush=True)


def run(base: str, docs: int, per_request: int, window: int, queries: int, server_pid: int | None = None) -> None:
    with httpx.Client(base_url=base, timeout=300) as client:
        model = next(m["id"] for m in client.get("/v1/models").json()["data"]
                     if "minilm" in m["id"].lower() or "embed" in m.get("owned_by", ""))
        sample = [sentence(10**7 + i) for i in range(min(window, 2000))]
        embed_rate(client, model, sample[:64], per_request)  # warm
        before = embed_rate(client, model, sample, per_request)
        collection = f"bench-ingest-{int(time.time())}"
        stamps: list[tuple[int, float]] = [(0, time.perf_counter())]
        for start in range(0, docs, per_request):
            batch = range(start, min(docs, start + per_request))
            body = {"documents": [{"id": f"d{i}", "text": sentence(i)} for i in batch], "background": False}
            resp = client.post(f"/rag/collections/{collection}/documents", json=body)
            resp.raise_for_status()
            stamps.append((min(docs, start + per_request), time.perf_counter()))
            if len(stamps) % 100 == 0:
                print(f"  {stamps[-1][0]:,} documents", file=sys.stderr, flush=True)
        wait_for_index(server_pid)
        after = embed_rate(client, model, sample, per_request)

        def rate(first: int, last: int) -> float:
            chosen = [(n, t) for n, t in stamps if first <= n <= last]
            return (chosen[-1][0] - chosen[0][0]) / (chosen[-1][1] - chosen[0][1])

        first = rate(0, window)
        last = rate(docs - window, docs)
        embedding = statistics.mean([before, after])
        info = client.get(f"/rag/collections/{collection}").json()
        stages: dict[str, list[float]] = {}
        for mode in ("dense", "sparse", "hybrid"):
            for i in range(queries):
                resp = client.post("/rag/retrieve", json={"collection": collection, "query": sentence(10**8 + i),
                                                          "top_k": 10, "mode": mode})
                resp.raise_for_status()
                stages.setdefault(mode, []).append(resp.json()["timings"]["retrieve"])
        retrieve = stages.get("hybrid", [])
        print(f"embedding rate (same texts, {per_request} a request): {before:.1f} texts/s before, {after:.1f} after")
        print(f"ingestion: first {window:,} documents {first:.1f}/s, last {window:,} of {docs:,} {last:.1f}/s")
        print(f"ratio to the embedding rate: first {first / embedding:.2f}, last {last / embedding:.2f} (goal >= 0.85)")
        print(f"last / first: {last / first:.2f} (goal >= 0.80: the last no more than 20% slower)")
        if retrieve:
            p99 = sorted(retrieve)[max(0, int(len(retrieve) * 0.99) - 1)]
            print(f"/rag/retrieve 'retrieve' stage at {info['points']:,} chunks: p50 {statistics.median(retrieve):.2f}"
                  f" ms, p99 {p99:.2f} ms (goal p50 <= 5 ms at 50k)")
            print("  by mode, p50: " + ", ".join(f"{m} {statistics.median(t):.2f} ms" for m, t in stages.items()))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--docs", type=int, default=20_000)
    parser.add_argument("--per-request", type=int, default=16)
    parser.add_argument("--window", type=int, default=2000, help="Documents in the first and last windows.")
    parser.add_argument("--queries", type=int, default=200, help="/rag/retrieve calls at the end (0: none).")
    parser.add_argument("--base-url", help="A running stack (default: start one on a temporary folder).")
    args = parser.parse_args()
    if args.base_url:
        run(args.base_url, args.docs, args.per_request, args.window, args.queries)
        return
    with tempfile.TemporaryDirectory(prefix="bench-ingest-") as folder:
        port = free_port()
        server = Server("services.gateway.app", gateway_env(port, Path(folder) / "qdrant"), port, name="bench-ingest")
        server.start()
        try:
            run(server.wait_ready(timeout=600).base, args.docs, args.per_request, args.window, args.queries,
                server.pid)
        finally:
            server.stop()


if __name__ == "__main__":
    main()
