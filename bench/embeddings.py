"""Embeddings benchmark: 16 concurrent HTTP clients against the service vs one in-process `encode`.

The same texts, model (the packaged all-MiniLM-L6-v2) and torch thread count on both sides.
The baseline is `SentenceTransformer.encode(texts, batch_size=32)` in this process; the
service runs as its own process on loopback, and 16 clients (each its own httpx
connection pool) send requests of `--per-request` texts until all are embedded: one
text per request (search queries, the hardest case for batching) and eight (ingestion).
Rounds alternate baseline and service, so drift in the machine's load hits both; the
medians and their ratio (service / encode, goal >= 0.9) are printed at the end, in
texts per second and in texts per CPU-second (server and clients together), which
stays meaningful when other processes share the machine.

    .venv/bin/python bench/embeddings.py                     # 512 texts; 1 and 8 texts per request; 3 rounds
    .venv/bin/python bench/embeddings.py --per-request 1 --rounds 5
    .venv/bin/python bench/embeddings.py --threads 2 --encoding float
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import os
import random
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from services.embeddings.engines.base import apply_dtype, default_threads, resolve_dtype  # noqa: E402
from services.embeddings.models import DEFAULT_EMBED_MODEL, packaged_folder  # noqa: E402
from tests.servers import free_port, running  # noqa: E402

os.environ.setdefault("HF_HUB_OFFLINE", "1")

SENTENCES = [
    "Qdrant stores dense and sparse vectors side by side for hybrid search.",
    "The quarterly report shows revenue growing faster than operating costs.",
    "Photosynthesis turns light, water and carbon dioxide into sugar and oxygen.",
    "Reset your password from the account page, then sign in again on every device.",
    "The river flooded the lower town twice in the nineteenth century.",
    "A cross-encoder reads the query and the passage together, which makes it accurate but slow.",
    "Bake the bread at two hundred degrees for forty minutes, until the crust sounds hollow.",
    "The contract may be terminated by either party with thirty days' written notice.",
    "Mitochondria produce most of the chemical energy a cell needs.",
    "Our support team answers within one business day, faster for enterprise plans.",
    "The treaty was signed in Vienna after months of negotiation.",
    "Gradient descent takes small steps against the gradient of the loss.",
    "Store the vaccine between two and eight degrees and keep it away from light.",
    "The museum reopens in spring with a new wing dedicated to modern sculpture.",
    "Kubernetes restarts a container when its liveness probe fails.",
    "Tides are caused mainly by the gravitational pull of the moon.",
]


def make_texts(n: int, seed: int = 0) -> list[str]:
    """Deterministic texts of one to six sentences (about 15 to 110 word pieces)."""
    rng = random.Random(seed)
    return [" ".join(rng.choice(SENTENCES) for _ in range(rng.randint(1, 6))) for _ in range(n)]


@dataclass
class Run:
    texts_per_s: float
    cpu_s: float  # CPU seconds used by every process involved
    server_cpu_s: float = 0.0


def children_cpu_seconds() -> float:
    """CPU seconds of this process's children (the service that `running` started), from /proc."""
    total = 0.0
    for task in Path(f"/proc/{os.getpid()}/task").iterdir():
        for pid in (task / "children").read_text().split():
            with contextlib.suppress(OSError):
                fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
                total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return total


def run_encode(model: object, texts: list[str], batch_size: int) -> Run:
    start, cpu = time.perf_counter(), time.process_time()
    model.encode(texts, batch_size=batch_size)  # type: ignore[attr-defined]
    return Run(len(texts) / (time.perf_counter() - start), time.process_time() - cpu)


async def run_service(base: str, texts: list[str], clients: int, per_request: int, encoding: str) -> Run:
    chunks = [texts[i : i + per_request] for i in range(0, len(texts), per_request)]
    queue: asyncio.Queue[list[str]] = asyncio.Queue()
    for chunk in chunks:
        queue.put_nowait(chunk)

    async def client_loop(http: httpx.AsyncClient) -> None:
        while not queue.empty():
            chunk = queue.get_nowait()
            body = {"model": DEFAULT_EMBED_MODEL, "input": chunk, "encoding_format": encoding}
            r = await http.post("/v1/embeddings", json=body)
            r.raise_for_status()
            data = r.json()["data"]
            if encoding == "base64":  # decode like the openai SDK does, so the client pays its usual cost
                [np.frombuffer(base64.b64decode(d["embedding"]), dtype="<f4") for d in data]
            assert len(data) == len(chunk)

    pools = [httpx.AsyncClient(base_url=base, timeout=600) for _ in range(clients)]
    warm = {"model": DEFAULT_EMBED_MODEL, "input": "warm up"}
    try:
        await asyncio.gather(*[p.post("/v1/embeddings", json=warm) for p in pools])
        start, cpu, server_cpu = time.perf_counter(), time.process_time(), children_cpu_seconds()
        await asyncio.gather(*[client_loop(p) for p in pools])
        elapsed = time.perf_counter() - start
        server = children_cpu_seconds() - server_cpu
        return Run(len(texts) / elapsed, time.process_time() - cpu + server, server)
    finally:
        for p in pools:
            await p.aclose()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--texts", type=int, default=512)
    ap.add_argument("--clients", type=int, default=16)
    ap.add_argument("--per-request", default="1,8", help="texts per HTTP request; a comma list runs each")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument(
        "--threads", type=int, default=default_threads(), help="torch threads, for encode and the service alike"
    )
    ap.add_argument("--batch-size", type=int, default=32, help="encode's batch_size and the service's")
    ap.add_argument("--max-wait-ms", type=float, default=2.0)
    ap.add_argument("--encoding", choices=["base64", "float"], default="base64")
    ap.add_argument(
        "--dtype",
        default="auto",
        help="weights of encode and the service alike (auto: what the service picks on this CPU, bfloat16 where "
        "it has native bf16)",
    )
    args = ap.parse_args()
    dtype = resolve_dtype(args.dtype, "cpu")
    sizes = [int(x) for x in args.per_request.split(",")]

    import torch
    from sentence_transformers import SentenceTransformer

    torch.set_num_threads(args.threads)
    texts = make_texts(args.texts)
    model = SentenceTransformer(str(packaged_folder(DEFAULT_EMBED_MODEL)), device="cpu")
    apply_dtype(model, dtype)
    tokens = sum(len(ids) for ids in model.tokenizer(texts)["input_ids"])
    model.encode(texts[:64], batch_size=args.batch_size)  # warm-up

    port = free_port()
    env = {
        "INFERAG_EMB_PORT": str(port),
        "INFERAG_EMB_NUM_THREADS": str(args.threads),
        "INFERAG_EMB_DTYPE": dtype,
        "INFERAG_EMB_BATCH_SIZE": str(args.batch_size),
        "INFERAG_EMB_MAX_WAIT_MS": str(args.max_wait_ms),
        "INFERAG_EMB_RERANK_MODEL": "none",
        "INFERAG_EMB_SPARSE_MODEL": "none",
        "INFERAG_EMB_LOG_LEVEL": "warning",
        "HF_HUB_OFFLINE": "1",
    }
    baseline: list[Run] = []
    service: dict[int, list[Run]] = {k: [] for k in sizes}
    load = [os.getloadavg()[0]]
    with running("services.embeddings.app", env, port=port, timeout=300) as base:
        asyncio.run(run_service(base, texts[:64], args.clients, 1, args.encoding))  # warm-up
        for r in range(args.rounds):
            baseline.append(run_encode(model, texts, args.batch_size))
            line = f"round {r + 1}: encode {baseline[-1].texts_per_s:6.1f} texts/s"
            for k in sizes:
                service[k].append(asyncio.run(run_service(base, texts, args.clients, k, args.encoding)))
                line += f"   service x{k} {service[k][-1].texts_per_s:6.1f} texts/s"
            load.append(os.getloadavg()[0])
            print(line)

    def per_cpu(runs: list[Run], server_only: bool = False) -> float:
        return statistics.median(len(texts) / (r.server_cpu_s if server_only else r.cpu_s) for r in runs)

    enc = statistics.median(r.texts_per_s for r in baseline)
    print(
        f"\nall-MiniLM-L6-v2, {len(texts)} texts ({tokens / len(texts):.0f} word pieces on average), "
        f"{args.threads} torch thread(s), {dtype}, batch {args.batch_size}, {args.encoding}, {os.cpu_count()} CPUs, "
        f"load average {min(load):.1f} to {max(load):.1f} (above {os.cpu_count()}: other processes compete)"
    )
    head = f"medians of {args.rounds} rounds"
    print(f"{head:44} {'texts/s':>8} {'ratio':>6} {'texts/CPU-s':>12} {'ratio':>6} {'server only':>12} {'ratio':>6}")
    base_cpu = per_cpu(baseline)
    print(f"{f'in-process encode(batch_size={args.batch_size})':44} {enc:8.1f} {'':6} {base_cpu:12.1f}")
    for k in sizes:
        svc, svc_cpu = statistics.median(r.texts_per_s for r in service[k]), per_cpu(service[k])
        server_cpu = per_cpu(service[k], server_only=True)
        label = f"service, {args.clients} clients x {k} text(s)/request"
        print(
            f"{label:44} {svc:8.1f} {svc / enc:6.2f} {svc_cpu:12.1f} {svc_cpu / base_cpu:6.2f} "
            f"{server_cpu:12.1f} {server_cpu / base_cpu:6.2f}"
        )
    print(
        "ratio: service / in-process encode (goal >= 0.9). texts/CPU-s: per CPU-second of the server and the "
        "clients together; server only: of the service process alone"
    )


if __name__ == "__main__":
    main()
