"""Store benchmark: the embedded store on Qdrant's engine (qdrant-edge) vs qdrant-client's local mode.

The same `VectorStore` code (document protocol, hybrid search, filters) runs on both engines;
only the backend differs. Vectors are 384-dimensional and shaped like embeddings: a clustered
mixture (a few thousand unit-length centres, points scattered around them), on which nearest
neighbours mean something; sparse vectors draw Zipf-distributed terms. Each (engine, size) runs in
a fresh process (so RSS is its own) and reports: ingest points/s (batches of 512 one-chunk
documents through `write_documents`; the embedded engine's HNSW build is timed apart), hybrid
top-10 p50/p99, the same with a metadata filter, dense recall@10 of the engine's answer against
exact search (numpy over every vector), and RSS. Ratios: local mode / embedded at each size, and the
goals (hybrid p50 <= 10 ms and recall >= 0.95 at 1M; >= 50x local mode at 100k; ingest >= 5,000/s).

    .venv/bin/python bench/store.py                                   # 10k and 100k; local mode up to 100k
    .venv/bin/python bench/store.py --sizes 10000,100000,1000000 --local-max 100000
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from inferag_protocol.rag import Chunk
from services.rag.store import DocumentWrite, VectorStore, documents  # noqa: E402
from services.rag.store.backend import Nearest, Point  # noqa: E402
from services.rag.store.documents import document_point_id, registry_name  # noqa: E402
from services.rag.store.filters import LIVE, live  # noqa: E402

DIM = 384
LANGS = ["en", "fr", "de", "es", "it"]
VOCAB = 30_000


class Sparse:
    def __init__(self, indices: list[int], values: list[float]):
        self.indices, self.values = indices, values


def mixture(n: int, seed: int, centres: np.ndarray) -> np.ndarray:
    """`n` unit vectors scattered around random centres of the mixture."""
    rng = np.random.default_rng(seed)
    picked = centres[rng.integers(0, len(centres), n)]
    points = picked + rng.standard_normal((n, DIM)).astype(np.float32) * 0.045
    return (points / np.linalg.norm(points, axis=1, keepdims=True)).astype(np.float32)


def sparse_of(rng: np.random.Generator, k: int = 8) -> Sparse:
    terms = np.unique(np.minimum(rng.zipf(1.3, k), VOCAB - 1))
    return Sparse([int(t) for t in terms], [float(v) for v in rng.uniform(0.5, 2.0, len(terms))])


def local_mode_backend(folder: str) -> Any:
    """qdrant-client's local mode behind the same protocol (the previous embedded default)."""
    from qdrant_client import QdrantClient

    from services.rag.store.server import ServerBackend

    backend = ServerBackend.__new__(ServerBackend)
    backend.location, backend._url, backend._api_key, backend._timeout_s = folder, folder, None, 10
    backend._client = QdrantClient(path=folder)
    backend._layout, backend._indexed = {}, set()
    return backend


def progress(text: str) -> None:
    print(f"  [{time.strftime('%H:%M:%S')}] {text}", file=sys.stderr, flush=True)


def bulk_load(store: VectorStore, docs: list[DocumentWrite], meta: Any) -> None:
    """`docs` written live with published registry entries in one go: what the document protocol leaves,
    without its per-batch filtered updates (which local mode evaluates in Python over every point)."""
    staged = [documents.build("bench", dimension=meta.dimension, embed_model=meta.embed_model,
                              sparse_model=meta.sparse_model, doc_id=d.doc_id, source=d.source, metadata=d.metadata,
                              chunks=d.chunks, dense=d.dense, sparse=d.sparse) for d in docs]
    points = [p for s in staged for p in s.points]
    for point in points:
        point.payload["state"] = LIVE
    store.backend.upsert("bench", points)
    store.backend.upsert(registry_name("bench"), [
        Point(id=document_point_id(s.info.doc_id), payload={**s.info.model_dump(), "published": True, "order": i})
        for i, s in enumerate(staged)])


async def run_one(engine: str, size: int, queries: int, protocol_max: int, local_queries: int) -> dict[str, Any]:
    import psutil

    folder = tempfile.mkdtemp(prefix=f"bench-store-{engine}-")
    try:
        return await _run_one(engine, size, queries, protocol_max, local_queries, folder, psutil.Process())
    finally:
        shutil.rmtree(folder, ignore_errors=True)


async def _run_one(engine: str, size: int, queries: int, protocol_max: int, local_queries: int, folder: str,
                   process: Any) -> dict[str, Any]:
    if engine == "edge":
        from services.rag.store.embedded import EmbeddedBackend

        backend: Any = EmbeddedBackend(folder)
    else:
        backend = local_mode_backend(folder)
    store = VectorStore(backend, recover_interval_s=0, optimize_min_points=10**12)
    await store.create_collection("bench", dimension=DIM, embed_model="mixture-384")
    rng = np.random.default_rng(1)
    centres = rng.standard_normal((max(64, size // 200), DIM)).astype(np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    vectors = mixture(size, 2, centres)
    ingest_s = 0.0
    batch = 512
    # local mode: the document protocol for the first `protocol_max` points (its ingest rate), then bulk
    protocol = size if engine == "edge" else min(size, protocol_max)
    meta = await store._meta("bench")
    for start in range(0, size, batch):
        docs = [DocumentWrite(doc_id=f"d{i}", source=None, metadata={"lang": LANGS[i % 5], "year": 2000 + i % 25},
                              chunks=[Chunk(text=f"text {i}", start=0, end=8, tokens=2)], dense=[vectors[i].tolist()],
                              sparse=[sparse_of(rng)])  # type: ignore[list-item]
                for i in range(start, min(size, start + batch))]
        if start >= protocol:
            await store._run(bulk_load, store, docs, meta)
            continue
        began = time.perf_counter()
        await store.write_documents("bench", docs)
        ingest_s += time.perf_counter() - began
        if start // batch % 50 == 49:
            progress(f"{engine} {size}: {start + batch} written, {(start + batch) / ingest_s:.0f} pts/s")
    ingest_rate = min(size, protocol) / ingest_s
    progress(f"{engine} {size}: ingested ({ingest_rate:.0f} pts/s through the document protocol)")
    index_s = 0.0
    if engine == "edge":
        began = time.perf_counter()
        await store.optimize("bench")
        index_s = time.perf_counter() - began
        progress(f"{engine} {size}: HNSW built in {index_s:.1f} s")
    qv = mixture(queries, 3, centres)
    qrng = np.random.default_rng(4)

    async def timed(n: int, **kwargs: Any) -> list[float]:
        times = []
        for i in range(n):
            began = time.perf_counter()
            sparse: Any = sparse_of(qrng)
            await store.search(["bench"], dense=qv[i].tolist(), sparse=sparse, mode="hybrid", top_k=10, **kwargs)
            times.append((time.perf_counter() - began) * 1000)
        return times

    if engine == "local":  # seconds a query at 100k: fewer of them
        queries = min(queries, local_queries)
    warm = max(1, queries // 10)  # (the first filtered query also makes the filter's payload index)
    await timed(warm)
    await timed(warm, filter={"lang": "en"})
    hybrid = await timed(queries)
    filtered = await timed(queries, filter={"lang": "en"})
    progress(f"{engine} {size}: queried")
    ids = {f"d{i}": i for i in range(size)}
    recall = []
    for i in range(min(queries, 100)):  # local mode: `--local-queries` of them
        found = await store._run(backend.query, "bench", [Nearest("dense", qv[i].tolist())], limit=10,
                                 filter=_live_filter(), with_payload=["doc_id"])
        exact = set(np.argsort(-(vectors @ qv[i]))[:10].tolist())
        recall.append(len({ids[r.payload["doc_id"]] for r in found} & exact) / 10)
    rss = process.memory_info().rss
    await store.close()
    return {"engine": engine, "size": size, "ingest_pts_s": ingest_rate, "ingest_n": min(size, protocol),
            "index_s": index_s,
            "hybrid_p50": statistics.median(hybrid), "hybrid_p99": float(np.percentile(hybrid, 99)),
            "filtered_p50": statistics.median(filtered), "filtered_p99": float(np.percentile(filtered, 99)),
            "recall10": statistics.mean(recall), "rss_mb": rss / 2**20, "queries": queries}


def _live_filter() -> Any:
    from qdrant_client import models

    return models.Filter(must=[live()])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="10000,100000", help="Chunk counts, comma-separated.")
    parser.add_argument("--local-max", type=int, default=100_000, help="Largest size local mode runs at.")
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--engines", default="edge,local", help="Engines to run: edge, local or both.")
    parser.add_argument("--local-queries", type=int, default=30,
                        help="Queries timed on local mode (each takes up to seconds at 100k).")
    parser.add_argument("--local-protocol-max", type=int, default=5000,
                        help="Local mode writes this many points through the document protocol (its ingest rate), "
                             "the rest in bulk: its filtered updates scan every point in Python.")
    parser.add_argument("--one", nargs=2, metavar=("ENGINE", "SIZE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(asyncio.run(run_one(args.one[0], int(args.one[1]), args.queries, args.local_protocol_max,
                                             args.local_queries))))
        return
    results: dict[tuple[str, int], dict[str, Any]] = {}
    for size in (int(s) for s in args.sizes.split(",")):
        for engine in [e for e in args.engines.split(",") if e == "edge" or size <= args.local_max]:
            command = [sys.executable, __file__, "--one", engine, str(size), "--queries", str(args.queries),
                       "--local-protocol-max", str(args.local_protocol_max),
                       "--local-queries", str(args.local_queries)]
            proc = subprocess.run(command, stdout=subprocess.PIPE, text=True, env={**os.environ})
            if proc.returncode != 0:
                print(f"{engine} at {size}: failed (exit {proc.returncode})", file=sys.stderr)
                continue
            results[(engine, size)] = r = json.loads(proc.stdout.strip().splitlines()[-1])
            first = "" if r["ingest_n"] == size else f" (first {r['ingest_n']:,})"
            first += f" [{r['queries']} queries]"
            print(f"{engine:5} {size:>8,}: ingest {r['ingest_pts_s']:7.0f} pts/s{first} "
                  f"(index build {r['index_s']:.1f} s)  "
                  f"hybrid p50 {r['hybrid_p50']:7.2f} ms p99 {r['hybrid_p99']:7.2f}  filtered p50 "
                  f"{r['filtered_p50']:7.2f} p99 {r['filtered_p99']:7.2f}  recall@10 {r['recall10']:.3f}  "
                  f"RSS {r['rss_mb']:.0f} MB", flush=True)
    print("\nratios (local mode / embedded engine, same store code):")
    for (engine, size), r in sorted(results.items(), key=lambda kv: kv[0][1]):
        local = results.get(("local", size))
        if engine == "edge" and local:
            print(f"  {size:>8,}: hybrid p50 {local['hybrid_p50'] / r['hybrid_p50']:.0f}x faster, filtered "
                  f"{local['filtered_p50'] / r['filtered_p50']:.0f}x, "
                  f"ingest {r['ingest_pts_s'] / local['ingest_pts_s']:.1f}x")
    print("goals:")
    for (engine, size), r in sorted(results.items(), key=lambda kv: kv[0][1]):
        if engine == "edge":
            print(f"  {size:>8,}: hybrid p50 {r['hybrid_p50']:.2f} ms (<= 10 at 1M), recall@10 {r['recall10']:.3f} "
                  f"(>= 0.95), ingest {r['ingest_pts_s']:.0f} pts/s (>= 5000)")


if __name__ == "__main__":
    main()
