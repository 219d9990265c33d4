"""App factory of the generation service: `build_app(settings)`; models load in the lifespan."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

from fastapi import FastAPI
from prometheus_client import CollectorRegistry

from services.common.logging import setup_logging
from services.common.service import build_service_app, serve

from .engines.base import Engine
from .models import resolve_model
from .responses.store import ResponseStore
from .router import router
from .serving import GenerationService
from .settings import GenerationSettings
from .weights.startup import default_cache_dir, prepare_served_weights, served_adapters

log = logging.getLogger(__name__)


def build_engine(
    settings: GenerationSettings, model_path: str, model_id: str, quantization: str | None = None
) -> Engine:
    if settings.engine == "vllm":
        from .engines.vllm_engine import VllmEngine

        return VllmEngine(
            model_path,
            model_id=model_id,
            max_model_len=settings.max_model_len,
            kv_cache_bytes=int(settings.kv_cache_gib * 2**30) if settings.kv_cache_gib else None,
            dtype=settings.dtype,
            max_num_seqs=settings.max_batch_size,
            gpu_memory_utilization=settings.gpu_memory_utilization,
            tensor_parallel_size=settings.tensor_parallel_size,
            quantization=quantization,
            enforce_eager=settings.enforce_eager,
        )
    from .engines.transformers_engine import TransformersEngine

    return TransformersEngine(
        model_path,
        model_id=model_id,
        max_batch_size=settings.max_batch_size,
        max_waiting=settings.max_waiting,
        max_model_len=settings.max_model_len,
        dtype=settings.dtype,
        device=settings.device,
        num_threads=settings.num_threads,
        quantization=quantization,
    )


async def load_service(settings: GenerationSettings, registry: CollectorRegistry) -> GenerationService:
    """Resolve the weights, start the engine and wrap it in the serving layer."""
    from transformers import AutoTokenizer

    base_path = await asyncio.to_thread(resolve_model, settings.model, Path(settings.data_dir))
    adapters, default_adapter = served_adapters(settings.model, settings.adapters, settings.default_adapter)
    served = await asyncio.to_thread(
        prepare_served_weights,
        model=settings.model,
        model_path=base_path,
        adapters=adapters,
        default_adapter=default_adapter,
        quantization=settings.quantization,
        engine=settings.engine,
        cache_dir=settings.weights_cache_dir or default_cache_dir(settings.data_dir),
    )
    path = served.path
    model_id = settings.served_model_name or settings.model
    engine = build_engine(settings, path, model_id, served.quantization)
    await engine.start()
    tokenizer = await asyncio.to_thread(AutoTokenizer.from_pretrained, path)
    log.info("generation ready: %s on %s (%s)", model_id, settings.engine, path)
    return GenerationService(
        engine,
        tokenizer,
        registry,
        max_inflight=settings.max_inflight,
        default_max_tokens=settings.default_max_tokens,
        model_details=served.details(),
        reasoning_parser=settings.reasoning_parser,
    )


def build_app(settings: GenerationSettings | None = None, registry: CollectorRegistry | None = None) -> FastAPI:
    """The service as an ASGI app; `registry` lets the gateway share one metrics registry."""
    settings = settings or GenerationSettings()
    registry = registry or CollectorRegistry()

    async def close(service: GenerationService) -> None:
        await service.engine.stop()

    app = build_service_app("generation", settings, registry, lambda: load_service(settings, registry), close, router)
    app.state.responses_store = ResponseStore(settings.responses_store_size, int(settings.responses_store_mib * 2**20))
    return app


def main() -> None:
    settings = GenerationSettings()
    setup_logging(settings.log_level, settings.log_json)
    serve(build_app(settings), settings)


if __name__ == "__main__":
    main()
