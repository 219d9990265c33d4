"""App factory of the embeddings service: `build_app(settings)`; models load in the lifespan."""

from __future__ import annotations

import asyncio
import logging
from concurrent.futures import ThreadPoolExecutor

from fastapi import FastAPI
from prometheus_client import CollectorRegistry

from services.common.logging import setup_logging
from services.common.service import MODEL_LOAD_LOCK, build_service_app, serve

from .engines.base import resolve_device, resolve_dtype, set_threads
from .engines.cross_encoder import CrossEncoderScorer
from .engines.dense import DenseEncoder
from .engines.splade import SpladeEncoder
from .models import BI_ENCODER, DEFAULT_SPARSE_MODEL, DISABLED, resolve_model, served_name
from .router import router
from .serving import BatchingConfig, EmbeddingsService, Limits, ServedNames
from .settings import EmbeddingsSettings

log = logging.getLogger(__name__)


def load_models(
    settings: EmbeddingsSettings,
) -> tuple[DenseEncoder, CrossEncoderScorer | None, SpladeEncoder | None, ServedNames]:
    """Load every configured model (blocking: call it off the event loop)."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # "Loading weights" bars, once per model, in a server log
    device = resolve_device(settings.device)
    dtype = resolve_dtype(settings.dtype, device)
    set_threads(settings.num_threads, device)
    dense = DenseEncoder(resolve_model(settings.embed_model), device=device, dtype=dtype)
    embed_name = served_name(settings.embed_model, settings.embed_model_name)

    reranker = None
    rerank_name: str | None = embed_name  # the bi-encoder ranks under the embedding model's name
    choice = settings.rerank_model.strip()
    if choice.lower() == DISABLED:
        rerank_name = None
    elif choice and choice.lower() != BI_ENCODER:
        reranker = CrossEncoderScorer(resolve_model(choice), device=device, dtype=dtype)
        rerank_name = served_name(choice, settings.rerank_model_name)

    splade = None
    sparse_name: str | None = None
    sparse_choice = settings.sparse_model.strip() or DEFAULT_SPARSE_MODEL
    if sparse_choice.lower() != DISABLED:
        splade = SpladeEncoder(resolve_model(sparse_choice), device=device, dtype=dtype)
        sparse_name = served_name(sparse_choice, settings.sparse_model_name)

    names = ServedNames(embed=embed_name, rerank=rerank_name, sparse=sparse_name)
    distinct = [embed_name, *([rerank_name] if reranker else []), *([sparse_name] if sparse_name else [])]
    if len(set(distinct)) != len(distinct):
        raise ValueError(f"served model names must differ: {names}")
    _warm_up(dense, reranker, splade)
    return dense, reranker, splade, names


def _warm_up(dense: DenseEncoder, reranker: CrossEncoderScorer | None, splade: SpladeEncoder | None) -> None:
    """One tiny call per model, so the first request does not pay for lazy initialisation."""
    dense.embed(dense.tokens.texts(["warm up"], truncate=True))
    if reranker is not None:
        reranker.score(reranker.tokens.pairs("warm", ["up"]))
    if splade is not None:
        splade.embed(splade.tokens.texts(["warm up"], truncate=True))


def _load_in_turn(
    settings: EmbeddingsSettings,
) -> tuple[DenseEncoder, CrossEncoderScorer | None, SpladeEncoder | None, ServedNames]:
    with MODEL_LOAD_LOCK:  # not while another service of this process builds a model
        return load_models(settings)


async def load_service(settings: EmbeddingsSettings, registry: CollectorRegistry) -> EmbeddingsService:
    """Load the models and start their batchers."""
    dense, reranker, splade, names = await asyncio.to_thread(_load_in_turn, settings)
    # One model thread for all models: on a CPU they would only fight over the same cores.
    executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="emb-model")
    service = EmbeddingsService(
        dense,
        names,
        registry,
        executor,
        reranker=reranker,
        sparse=splade,
        batching=BatchingConfig(settings.batch_size, settings.max_wait_ms / 1000, settings.max_queue),
        limits=Limits(settings.max_inputs, settings.max_rerank_documents, settings.truncate),
    )
    await service.start()
    log.info(
        "embeddings ready: %s (dense, %d dims), rerank: %s (%s), sparse: %s; %s %s",
        names.embed,
        dense.info.dimension,
        names.rerank,
        service.rerank_method,
        names.sparse,
        dense.device,
        dense.dtype,
    )
    return service


def build_app(settings: EmbeddingsSettings | None = None, registry: CollectorRegistry | None = None) -> FastAPI:
    """The service as an ASGI app; `registry` lets the gateway share one metrics registry."""
    settings = settings or EmbeddingsSettings()
    registry = registry or CollectorRegistry()

    async def close(service: EmbeddingsService) -> None:
        await service.stop()

    return build_service_app("embeddings", settings, registry, lambda: load_service(settings, registry), close, router)


def main() -> None:
    settings = EmbeddingsSettings()
    setup_logging(settings.log_level, settings.log_json)
    serve(build_app(settings), settings)


if __name__ == "__main__":
    main()
