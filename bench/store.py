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
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from services.rag.store import DocumentWrite, VectorStore  # noqa: E402
from services.rag.store.backend import Nearest  # noqa: E402
from services.rag.store.filters import live  # noqa: E402
from services.rag.types import Chunk  # noqa: E402

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


async def run_one(engine: str, size: int, queries: int) -> dict[str, Any]:
    import psutil

    folder = tempfile.mkdtemp(prefix=f"bench-store-{engine}-")
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
    for start in range(0, size, batch):
        docs = [DocumentWrite(doc_id=f"d{i}", source=None, metadata={"lang": LANGS[i % 5], "year": 2000 + i % 25},
                              chunks=[Chunk(text=f"text {i}", start=0, end=8, tokens=2)], dense=[vectors[i].tolist()],
                              sparse=[sparse_of(rng)])  # type: ignore[list-item]
                for i in range(start, min(size, start + batch))]
        began = time.perf_counter()
        await store.write_documents("bench", docs)
        ingest_s += time.perf_counter() - began
    index_s = 0.0
    if engine == "edge":
        began = time.perf_counter()
        await store.optimize("bench")
        index_s = time.perf_counter() - began
    qv = mixture(queries, 3, centres)
    qrng = np.random.default_rng(4)

    async def timed(**kwargs: Any) -> list[float]:
        times = []
        for i in range(queries):
            began = time.perf_counter()
            sparse: Any = sparse_of(qrng)
            await store.search(["bench"], dense=qv[i].tolist(), sparse=sparse, mode="hybrid", top_k=10, **kwargs)
            times.append((time.perf_counter() - began) * 1000)
        return times

    await timed()  # warm
    hybrid = await timed()
    filtered = await timed(filter={"lang": "en"})
    ids = {f"d{i}": i for i in range(size)}
    recall = []
    for i in range(min(queries, 100)):
        found = await store._run(backend.query, "bench", [Nearest("dense", qv[i].tolist())], limit=10,
                                 filter=_live_filter(), with_payload=["doc_id"])
        exact = set(np.argsort(-(vectors @ qv[i]))[:10].tolist())
        recall.append(len({ids[r.payload["doc_id"]] for r in found} & exact) / 10)
    rss = psutil.Process().memory_info().rss
    await store.close()
    return {"engine": engine, "size": size, "ingest_pts_s": size / ingest_s, "index_s": index_s,
            "hybrid_p50": statistics.median(hybrid), "hybrid_p99": float(np.percentile(hybrid, 99)),
            "filtered_p50": statistics.median(filtered), "filtered_p99": float(np.percentile(filtered, 99)),
            "recall10": statistics.mean(recall), "rss_mb": rss / 2**20}


def _live_filter() -> Any:
    from qdrant_client import models

    return models.Filter(must=[live()])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="10000,100000", help="Chunk counts, comma-separated.")
    parser.add_argument("--local-max", type=int, default=100_000, help="Largest size local mode runs at.")
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--one", nargs=2, metavar=("ENGINE", "SIZE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(asyncio.run(run_one(args.one[0], int(args.one[1]), args.queries))))
        return
    results: dict[tuple[str, int], dict[str, Any]] = {}
    for size in (int(s) for s in args.sizes.split(",")):
        for engine in ("edge", "local") if size <= args.local_max else ("edge",):
            command = [sys.executable, __file__, "--one", engine, str(size), "--queries", str(args.queries)]
            proc = subprocess.run(command, capture_output=True, text=True, env={**os.environ})
            if proc.returncode != 0:
                print(f"{engine} at {size}: failed\n{proc.stderr[-2000:]}", file=sys.stderr)
                continue
            results[(engine, size)] = r = json.loads(proc.stdout.strip().splitlines()[-1])
            print(f"{engine:5} {size:>8,}: ingest {r['ingest_pts_s']:7.0f} pts/s (index build {r['index_s']:.1f} s)  "
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
