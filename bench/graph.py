"""Graph extraction benchmark: the model-free extractor's rate, and ingestion with the graph on against off.

1. Extraction: the keyphrase extractor over the chunks of datasets/course (French) and datasets/multihop
   (English), chunked as ingestion chunks them (the service defaults), in one thread: chunks per second of
   wall time and per CPU-second. Goal: at least 200 chunks/s.
2. Ingestion: the same documents through the real ingestion path in this process (the packaged
   all-MiniLM-L6-v2, BM25, embedded Qdrant in a temporary folder, every document in one request as
   `POST /rag/collections/{name}/documents` takes them: one embedding call, one store write, one graph
   write), once into a collection with `graph: off` and once with `graph: keyphrase` (entity names embedded
   too), rounds alternating so that drift in the machine's load hits both. The medians in
   chunks per second and their ratio keyphrase / off. Goal: at least 0.7.

    .venv/bin/python bench/graph.py               # 3 rounds over both sets
    .venv/bin/python bench/graph.py --rounds 5 --docs 120
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

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from prometheus_client import CollectorRegistry  # noqa: E402

from services.embeddings.client import InProcessEmbeddings  # noqa: E402
from services.embeddings.settings import EmbeddingsSettings  # noqa: E402
from services.rag.bm25 import BM25Encoder  # noqa: E402
from services.rag.graph.keyphrase import KeyphraseExtractor  # noqa: E402
from services.rag.graph.service import GraphService  # noqa: E402
from services.rag.ingest import Ingestor  # noqa: E402
from services.rag.metrics import RagMetrics  # noqa: E402
from services.rag.parsing import ParsedDocument  # noqa: E402
from services.rag.service import _chunker  # noqa: E402
from services.rag.settings import RagSettings  # noqa: E402
from services.rag.store import open_store  # noqa: E402

SETS = ("course", "multihop")


def documents(limit: int | None) -> list[ParsedDocument]:
    docs = []
    for name in SETS:
        for line in (ROOT / "datasets" / name / "corpus.jsonl").read_text(encoding="utf-8").splitlines():
            row = json.loads(line)
            text = f"{row['title']}\n\n{row['text']}" if row.get("title") else row["text"]
            docs.append(ParsedDocument(text, "text", row.get("title") or row["_id"], {}, f"{name}-{row['_id']}"))
    return docs[:limit] if limit else docs


async def main(args: argparse.Namespace) -> None:
    embeddings = await InProcessEmbeddings.load(EmbeddingsSettings(sparse_model="none", rerank_model="none"))
    chunker = await asyncio.to_thread(_chunker, embeddings)
    folder = tempfile.mkdtemp(prefix="bench-graph-")
    store = open_store(url=None, path=folder)
    settings = RagSettings(qdrant_path=folder)
    graph = GraphService.build(store, embeddings, keyphrases=settings.graph_keyphrases)
    ingestor = Ingestor(store, embeddings, chunker, BM25Encoder(), settings, RagMetrics(CollectorRegistry()), graph)
    docs = documents(args.docs)
    chunks = [c.text for d in docs for c in await ingestor.prepare(d, None)]
    print(f"{len(docs)} documents, {len(chunks)} chunks (datasets {', '.join(SETS)}); "
          f"{os.cpu_count()} CPUs, load {os.getloadavg()[0]:.2f}", flush=True)

    extractor = KeyphraseExtractor(settings.graph_keyphrases)
    wall, cpu = [], []
    for _ in range(args.rounds):
        w, c = time.perf_counter(), time.process_time()
        extractor.extract_sync(chunks)
        wall.append(len(chunks) / (time.perf_counter() - w))
        cpu.append(len(chunks) / (time.process_time() - c))
    extraction = statistics.median(wall)
    print(f"extraction (keyphrase, one thread): {extraction:.0f} chunks/s wall, "
          f"{statistics.median(cpu):.0f} chunks/s per CPU-second (goal >= 200: {extraction / 200:.2f}x)", flush=True)

    rates: dict[str, list[float]] = {"off": [], "keyphrase": []}
    for r in range(args.rounds):
        for mode in ("off", "keyphrase"):
            name = f"bench-{mode}-{r}"
            await ingestor.ensure_collection(name, graph=mode)  # type: ignore[arg-type]
            started = time.perf_counter()
            await ingestor.ingest(name, docs, None)
            rates[mode].append(len(chunks) / (time.perf_counter() - started))
            print(f"  round {r + 1} {mode:9s} {rates[mode][-1]:6.1f} chunks/s", flush=True)
    off, on = statistics.median(rates["off"]), statistics.median(rates["keyphrase"])
    stats = await graph.stats(f"bench-keyphrase-{args.rounds - 1}")
    print(f"ingestion: graph off {off:.1f} chunks/s, keyphrase {on:.1f} chunks/s, "
          f"ratio {on / off:.2f} (goal >= 0.7); graph of {stats.entities} entities, {stats.relations} relations")
    await store.close()
    await embeddings.aclose()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--docs", type=int, default=None, help="Only the first N documents.")
    asyncio.run(main(parser.parse_args()))
