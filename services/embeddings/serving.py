"""The serving layer: embeddings, rerank and sparse requests in, responses out (or a domain error).

It checks model names and limits, tokenizes (so over-long inputs fail before they
queue and `usage` is exact), hands token ids to the per-model batchers and shapes
the results. The router only turns its results into HTTP; the in-process client
calls the `*_inputs` / `rerank_documents` building blocks directly.
"""

from __future__ import annotations

import asyncio
import base64
import logging
from collections.abc import Callable, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from services.common.errors import InvalidRequest, ModelNotFound, NotFound
from services.common.metrics import LATENCY_BUCKETS

from .batching import MicroBatcher
from .engines.base import Encoded, TokenizerAdapter
from .engines.cross_encoder import CrossEncoderScorer
from .engines.dense import DenseEncoder
from .engines.splade import Sparse, SpladeEncoder
from .protocol import (
    Capability,
    Embedding,
    EmbeddingRequest,
    EmbeddingResponse,
    EmbeddingUsage,
    ModelCard,
    ModelList,
    RerankDocument,
    RerankMethod,
    RerankRequest,
    RerankResponse,
    RerankResult,
    RerankUsage,
    SparseEmbedding,
    SparseEmbeddingRequest,
    SparseEmbeddingResponse,
    SparseVector,
)

log = logging.getLogger(__name__)

T = TypeVar("T")

# Above this many characters a request is tokenized on a worker thread, not the event loop.
_INLINE_TOKENIZE_CHARS = 20_000
# Tokens shared by consecutive windows when the bi-encoder scores a long passage.
WINDOW_OVERLAP = 32
_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)


@dataclass(frozen=True)
class BatchingConfig:
    max_batch_size: int = 32
    max_wait_s: float = 0.002
    max_queue: int = 4096


@dataclass(frozen=True)
class Limits:
    max_inputs: int = 2048
    max_rerank_documents: int = 1000
    truncate: bool = True


class EmbeddingsMetrics:
    def __init__(self, registry: CollectorRegistry):
        self.inputs = Counter(
            "inferag_embeddings_inputs_total", "Inputs (texts, documents) by endpoint.", ["endpoint"], registry=registry
        )
        self.tokens = Counter(
            "inferag_embeddings_tokens_total",
            "Tokens read by the models, by endpoint.",
            ["endpoint"],
            registry=registry,
        )
        per_model: dict[str, Any] = {"labelnames": ["model"], "registry": registry}
        self.batch_size = Histogram(
            "inferag_embeddings_batch_size", "Inputs per model call.", buckets=_BATCH_BUCKETS, **per_model
        )
        self.batch_requests = Histogram(
            "inferag_embeddings_batch_requests", "Requests sharing one model call (above 1: batching at work).",
            buckets=_BATCH_BUCKETS, **per_model,
        )  # fmt: skip
        self.batch_seconds = Histogram(
            "inferag_embeddings_batch_seconds", "Time of one model call.", buckets=LATENCY_BUCKETS, **per_model
        )
        self.queued = Gauge("inferag_embeddings_queued_inputs", "Inputs waiting for a model.", **per_model)

    def observer(self, model: str) -> Callable[[int, int, float], None]:
        size, requests, seconds = (
            self.batch_size.labels(model),
            self.batch_requests.labels(model),
            self.batch_seconds.labels(model),
        )

        def observe(n: int, r: int, elapsed: float) -> None:
            size.observe(n)
            requests.observe(r)
            seconds.observe(elapsed)

        return observe


@dataclass(frozen=True)
class ServedNames:
    embed: str
    rerank: str | None
    sparse: str | None


class EmbeddingsService:
    """Dense embeddings, reranking (cross-encoder or bi-encoder cosine) and SPLADE, each behind a batcher."""

    def __init__(
        self,
        dense: DenseEncoder,
        names: ServedNames,
        registry: CollectorRegistry,
        executor: Executor,
        *,
        reranker: CrossEncoderScorer | None = None,
        sparse: SpladeEncoder | None = None,
        batching: BatchingConfig | None = None,
        limits: Limits | None = None,
    ):
        if names.rerank is not None and reranker is None and names.rerank != names.embed:
            raise ValueError("without a cross-encoder, reranking is served by the embedding model under its name")
        self.dense = dense
        self.reranker = reranker
        self.splade = sparse
        self.names = names
        self.limits = limits or Limits()
        self.metrics = EmbeddingsMetrics(registry)
        self.executor = executor
        cfg = batching or BatchingConfig()

        def batcher(name: str, fn: Callable[[list[Encoded]], Sequence[T]]) -> MicroBatcher[Encoded, T]:
            b: MicroBatcher[Encoded, T] = MicroBatcher(
                name,
                fn,
                executor,
                max_batch_size=cfg.max_batch_size,
                max_wait_s=cfg.max_wait_s,
                max_queue=cfg.max_queue,
                observer=self.metrics.observer(name),
            )
            self.metrics.queued.labels(name).set_function(lambda: b.queued)
            return b

        self.dense_batcher = batcher(names.embed, dense.embed)
        self.rerank_batcher = batcher(names.rerank, reranker.score) if reranker and names.rerank else None
        self.sparse_batcher = batcher(names.sparse, sparse.embed) if sparse and names.sparse else None

    @property
    def rerank_method(self) -> RerankMethod | None:
        if self.names.rerank is None:
            return None
        return "cross-encoder" if self.rerank_batcher is not None else "bi-encoder-cosine"

    def batchers(self) -> list[MicroBatcher[Encoded, object]]:
        found = [self.dense_batcher, self.rerank_batcher, self.sparse_batcher]
        return [b for b in found if b is not None]  # type: ignore[misc]

    async def start(self) -> None:
        for b in self.batchers():
            b.start()

    async def stop(self) -> None:
        for b in self.batchers():
            await b.stop()
        self.executor.shutdown(wait=False, cancel_futures=True)

    # ------------------------------------------------------------- models

    def models(self) -> ModelList:
        d, limits = self.dense, self.limits
        bi_encoder = self.rerank_method == "bi-encoder-cosine"
        caps: list[Capability] = ["embeddings", "rerank"] if bi_encoder else ["embeddings"]
        truncation = (
            f"Inputs longer than {d.info.max_tokens} word pieces are cut to their first {d.info.max_tokens} "
            '(send "truncate": false to get a 400 instead).'
        )
        if bi_encoder:
            truncation += " Reranking reads whole passages, in overlapping windows."
        cards = [
            _card(
                self.names.embed,
                d,
                d.info.max_tokens,
                capabilities=caps,
                dimension=d.info.dimension,
                truncation=truncation,
                rerank_method="bi-encoder-cosine" if bi_encoder else None,
                max_inputs_per_request=limits.max_inputs,
                max_documents_per_request=limits.max_rerank_documents if bi_encoder else None,
            )
        ]
        if self.reranker is not None and self.names.rerank is not None:
            r = self.reranker
            truncation = f"Each (query, document) pair is cut to {r.max_tokens} tokens, longest part first."
            cards.append(
                _card(self.names.rerank, r, r.max_tokens, capabilities=["rerank"], truncation=truncation,
                      rerank_method="cross-encoder", max_documents_per_request=limits.max_rerank_documents)
            )  # fmt: skip
        if self.splade is not None and self.names.sparse is not None:
            s = self.splade
            truncation = f'Inputs longer than {s.max_tokens} tokens are cut ("truncate": false: 400).'
            cards.append(
                _card(self.names.sparse, s, s.max_tokens, capabilities=["sparse-embeddings"], dimension=s.vocab_size,
                      truncation=truncation, max_inputs_per_request=limits.max_inputs)
            )  # fmt: skip
        return ModelList(data=cards)

    def _all_names(self) -> list[str]:
        return list(dict.fromkeys(n for n in (self.names.embed, self.names.rerank, self.names.sparse) if n))

    def _check_model(self, model: str | None, expected: str | None, route: str) -> str:
        if expected is None:
            raise NotFound(f"This server has no model for {route}.", param="model", code="model_not_found")
        if model is None or model == expected:
            return expected
        if model in self._all_names():
            raise InvalidRequest(
                f"The model '{model}' does not serve {route}; use '{expected}'.", param="model", code="wrong_model"
            )
        raise ModelNotFound(model, [expected])

    def _check_count(self, n: int, limit: int, param: str) -> None:
        if n > limit:
            raise InvalidRequest(f"{param} has {n} items; this server takes at most {limit}.", param=param)

    # ------------------------------------------------------------- building blocks

    async def _tokenize(self, size: int, fn: Callable[[], T]) -> T:
        return fn() if size <= _INLINE_TOKENIZE_CHARS else await asyncio.to_thread(fn)

    async def embed_inputs(
        self, items: Sequence[str] | Sequence[Sequence[int]], *, truncate: bool | None = None
    ) -> tuple[np.ndarray, int]:
        """Dense vectors (n x dimension, float32) of texts or token arrays, and the tokens read."""
        vectors, tokens = await self._encode("embeddings", self.dense.tokens, self.dense_batcher, items, truncate)
        return np.stack(vectors) if vectors else np.zeros((0, self.dense.info.dimension), np.float32), tokens

    async def rerank_documents(self, query: str, documents: Sequence[str]) -> tuple[list[float], int]:
        """One relevance score per document (higher is better), and the tokens read."""
        if not query:
            raise InvalidRequest("query must not be empty", param="query")
        size = len(query) * len(documents) + sum(map(len, documents))
        if self.rerank_batcher is not None and self.reranker is not None:
            tok = self.reranker.tokens
            pairs = await self._tokenize(size, lambda: tok.pairs(query, documents))
            scores = await self.rerank_batcher.submit(pairs, [len(p) for p in pairs])
            tokens = sum(len(p) for p in pairs)
        else:
            scores, tokens = await self._bi_encoder_scores(query, documents, size)
        self.metrics.inputs.labels("rerank").inc(len(documents))
        self.metrics.tokens.labels("rerank").inc(tokens)
        return scores, tokens

    async def _bi_encoder_scores(self, query: str, documents: Sequence[str], size: int) -> tuple[list[float], int]:
        """Cosine of the query with each passage: the best of the passage's windows, so all of it counts."""
        tok = self.dense.tokens

        def encode() -> tuple[list[Encoded], list[int]]:
            pieces = tok.texts([query], truncate=True)
            owners = []
            for i, doc in enumerate(documents):
                windows, _ = tok.windows(doc, overlap=WINDOW_OVERLAP)
                pieces.extend(windows)
                owners.extend([i] * len(windows))
            return pieces, owners

        pieces, owners = await self._tokenize(size, encode)
        vectors = np.stack(await self.dense_batcher.submit(pieces, [len(p) for p in pieces]))
        vectors /= np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
        cosines = vectors[1:] @ vectors[0]
        best = np.full(len(documents), -np.inf, dtype=np.float32)
        np.maximum.at(best, np.asarray(owners), cosines)
        return [float(s) for s in best], sum(len(p) for p in pieces)

    async def sparse_inputs(
        self, items: Sequence[str] | Sequence[Sequence[int]], *, truncate: bool | None = None
    ) -> tuple[list[Sparse], int]:
        """SPLADE vectors of texts or token arrays, and the tokens read."""
        if self.splade is None or self.sparse_batcher is None:
            raise NotFound("This server has no sparse model.", param="model", code="model_not_found")
        return await self._encode("sparse", self.splade.tokens, self.sparse_batcher, items, truncate)

    async def _encode(
        self,
        endpoint: str,
        tok: TokenizerAdapter,
        batcher: MicroBatcher[Encoded, T],
        items: Sequence[str] | Sequence[Sequence[int]],
        truncate: bool | None,
    ) -> tuple[list[T], int]:
        """Tokenize texts or check token arrays (400 on empty or, without truncation, over-long inputs), run
        them through the model's batcher, count them; the model's outputs in order and the tokens read."""
        truncate = self.limits.truncate if truncate is None else truncate
        _check_not_empty(items)
        if items and isinstance(items[0], str):
            texts = [str(x) for x in items]
            encoded = await self._tokenize(sum(map(len, texts)), lambda: tok.texts(texts, truncate=truncate))
        else:
            encoded = tok.token_ids(items, truncate=truncate)  # type: ignore[arg-type]
        outputs = await batcher.submit(encoded, [len(e) for e in encoded])
        tokens = sum(len(e) for e in encoded)
        self.metrics.inputs.labels(endpoint).inc(len(encoded))
        self.metrics.tokens.labels(endpoint).inc(tokens)
        return outputs, tokens

    def shorten(self, vectors: np.ndarray, dimensions: int | None) -> np.ndarray:
        """`dimensions`: keep the first n components, renormalized when the model's vectors are unit length."""
        full = self.dense.info.dimension
        if dimensions is None or dimensions == full:
            return vectors
        if dimensions > full:
            raise InvalidRequest(
                f"dimensions is {dimensions}; this model's embeddings have {full}.", param="dimensions"
            )
        cut = vectors[:, :dimensions]
        if self.dense.info.normalized:
            cut = cut / np.maximum(np.linalg.norm(cut, axis=1, keepdims=True), 1e-12)
        return np.ascontiguousarray(cut, dtype=np.float32)

    # ------------------------------------------------------------- requests

    async def embed(self, req: EmbeddingRequest) -> EmbeddingResponse:
        name = self._check_model(req.model, self.names.embed, "/v1/embeddings")
        items = req.items()
        self._check_count(len(items), self.limits.max_inputs, "input")
        if req.dimensions is not None:
            self.shorten(np.zeros((0, self.dense.info.dimension), np.float32), req.dimensions)  # fail before work
        vectors, tokens = await self.embed_inputs(items, truncate=req.truncate)
        vectors = self.shorten(vectors, req.dimensions)
        if req.encoding_format == "base64":
            little = vectors.astype("<f4", copy=False)
            data = [
                Embedding.model_construct(index=i, embedding=base64.b64encode(v.tobytes()).decode())
                for i, v in enumerate(little)
            ]
        else:
            data = [Embedding.model_construct(index=i, embedding=v) for i, v in enumerate(vectors.tolist())]
        return EmbeddingResponse(data=data, model=name, usage=EmbeddingUsage(prompt_tokens=tokens, total_tokens=tokens))

    async def rerank(self, req: RerankRequest) -> RerankResponse:
        name = self._check_model(req.model, self.names.rerank, "/v1/rerank")
        self._check_count(len(req.documents), self.limits.max_rerank_documents, "documents")
        docs = req.texts()
        scores, tokens = await self.rerank_documents(req.query, docs)
        order = sorted(range(len(docs)), key=lambda i: (-scores[i], i))
        if req.top_n is not None:
            order = order[: req.top_n]
        results = [
            RerankResult(
                index=i,
                relevance_score=scores[i],
                document=RerankDocument(text=docs[i]) if req.return_documents else None,
            )
            for i in order
        ]
        method = self.rerank_method
        assert method is not None
        return RerankResponse(
            model=name, method=method, results=results, usage=RerankUsage(prompt_tokens=tokens, total_tokens=tokens)
        )

    async def sparse(self, req: SparseEmbeddingRequest) -> SparseEmbeddingResponse:
        name = self._check_model(req.model, self.names.sparse, "/v1/sparse-embeddings")
        items = req.items()
        self._check_count(len(items), self.limits.max_inputs, "input")
        vectors, tokens = await self.sparse_inputs(items, truncate=req.truncate)
        splade = self.splade
        assert splade is not None
        data = [
            SparseEmbedding(
                index=i,
                embedding=SparseVector(indices=v.indices, values=v.values),
                tokens=splade.token_names(v.indices) if req.return_tokens else None,
            )
            for i, v in enumerate(vectors)
        ]
        return SparseEmbeddingResponse(
            data=data, model=name, usage=EmbeddingUsage(prompt_tokens=tokens, total_tokens=tokens)
        )


def _check_not_empty(items: Sequence[str] | Sequence[Sequence[int]]) -> None:
    """The same rule as the wire types, for callers of the building blocks (the in-process client)."""
    for i, item in enumerate(items):
        if len(item) == 0:
            raise InvalidRequest(f"input[{i}] must not be empty", param="input")


def _card(name: str, model: Any, max_tokens: int, **fields: Any) -> ModelCard:
    """A served model's card: where its weights came from and how it runs (`model.path/device/dtype`)."""
    return ModelCard(
        id=name, root=model.path, max_input_tokens=max_tokens, device=model.device, dtype=model.dtype, **fields
    )
