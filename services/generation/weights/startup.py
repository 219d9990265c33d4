"""The startup pipeline in one call, for the generation app: validate the quantization, merge, report.

    served = prepare_served_weights(model=settings.model, model_path=resolved_path,
                                    adapters=settings.adapters, quantization=settings.quantization,
                                    engine=settings.engine, cache_dir=...)
    engine = build_engine(settings, served.path, model_id)   # + quantization=served.quantization
    GenerationService(..., model_details=served.details())

The quantization is checked *before* the merge, so a combination the engine can't run
fails in a second, not after minutes of merging.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from .merge import AdapterSpec, PreparedWeights, parse_adapters, prepare_weights

log = logging.getLogger(__name__)


@dataclass
class ServedWeights:
    path: str  # the folder the engine loads
    prepared: PreparedWeights
    quantization: str | None  # canonical method name for the engine (what vLLM / load_causal_lm gets)
    engine: str
    model: str  # the `model` setting as the user wrote it

    def details(self) -> dict[str, Any]:
        """What `/v1/models` reports about the weights (merged into the model card's `details`)."""
        return {
            "base": self.model,
            "adapters": [{"path": a["path"], "weight": a["weight"]} for a in self.prepared.adapters],
            "quantization": self.quantization,
            "weights_cache_hit": self.prepared.cache_hit if self.prepared.adapters else None,
        }


def default_cache_dir(data_dir: str | Path) -> Path:
    return Path(data_dir) / "weights"


def prepare_served_weights(
    *,
    model: str,
    model_path: str,
    adapters: str | Sequence[str | AdapterSpec] | None,
    quantization: str | None,
    engine: Literal["transformers", "vllm"] | str,
    cache_dir: str | Path,
    has_cuda: bool | None = None,
) -> ServedWeights:
    """Validate, merge (or reuse the cached merge) and describe the weights to serve. Blocking: run in a thread."""
    from .quantize import check_transformers_quantization, check_vllm_quantization  # imports torch

    if has_cuda is None:
        import torch

        has_cuda = torch.cuda.is_available()
    specs = parse_adapters(adapters)
    if engine == "vllm":
        method = check_vllm_quantization(
            quantization, has_cuda=has_cuda, model_path=model_path, has_adapters=bool(specs)
        )
    else:
        method = check_transformers_quantization(quantization, has_cuda=has_cuda)
    prepared = prepare_weights(model_path, specs, Path(cache_dir))
    if specs:
        log.info(
            "serving %s + %d adapter(s) from %s (%s)",
            model,
            len(specs),
            prepared.path,
            "cache hit" if prepared.cache_hit else "merged now",
        )
    return ServedWeights(path=prepared.path, prepared=prepared, quantization=method, engine=str(engine), model=model)
