"""The startup pipeline in one call, for the generation app: validate the quantization, merge, report.

    adapters, default = served_adapters(settings.model, settings.adapters, settings.default_adapter)
    served = prepare_served_weights(model=settings.model, model_path=resolved_path,
                                    adapters=adapters, quantization=settings.quantization,
                                    engine=settings.engine, cache_dir=..., default_adapter=default)
    engine = build_engine(settings, served.path, model_id)   # + quantization=served.quantization
    GenerationService(..., model_details=served.details())

The quantization is checked *before* the merge, so a combination the engine can't run
fails in a second, not after minutes of merging.

The packaged default model gets the packaged grounded-answering adapter (by default;
`INFERAG_GEN_DEFAULT_ADAPTER=none` turns it off) when the user names no adapters
(`INFERAG_GEN_ADAPTERS`, where `grounded-smollm2` may be listed too).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from ..models import NO_ADAPTER, PACKAGED_ADAPTERS, PACKAGED_DEFAULT
from .errors import WeightsError
from .merge import AdapterSpec, PreparedWeights, parse_adapters, prepare_weights

log = logging.getLogger(__name__)


@dataclass
class ServedWeights:
    path: str  # the folder the engine loads
    prepared: PreparedWeights
    quantization: str | None  # canonical method name for the engine (what vLLM / load_causal_lm gets)
    engine: str
    model: str  # the `model` setting as the user wrote it
    default_adapter: str | None = None  # the packaged adapter merged by default, if it was

    def details(self) -> dict[str, Any]:
        """What `/v1/models` reports about the weights (merged into the model card's `details`)."""
        return {
            "base": self.model,
            "adapters": [{"path": a["path"], "weight": a["weight"]} for a in self.prepared.adapters],
            "default_adapter": self.default_adapter,
            "quantization": self.quantization,
            "weights_cache_hit": self.prepared.cache_hit if self.prepared.adapters else None,
        }


def packaged_adapter(name: str) -> str:
    """The folder of a packaged adapter; a clear error when the package lacks its files."""
    folder = PACKAGED_ADAPTERS[name]
    if not (folder / "adapter_config.json").is_file() or not (folder / "adapter_model.safetensors").is_file():
        raise WeightsError(
            f"The packaged adapter '{name}' is missing from {folder}; reinstall the package, or serve the plain "
            f"model with INFERAG_GEN_DEFAULT_ADAPTER={NO_ADAPTER}.",
            param="default_adapter",
        )
    return str(folder)


def served_adapters(
    model: str, adapters: str | Sequence[str | AdapterSpec] | None, default_adapter: str = NO_ADAPTER
) -> tuple[list[AdapterSpec], str | None]:
    """(adapters to merge, the packaged default adapter if it is one of them).

    The user's adapters when given (a packaged adapter's name stands for its folder); otherwise, for the
    packaged default model, the packaged default adapter unless it is `none`.
    """
    specs = parse_adapters(adapters)
    if specs:
        resolved = [
            AdapterSpec(packaged_adapter(s.path), s.weight) if s.path in PACKAGED_ADAPTERS else s for s in specs
        ]
        return resolved, None
    if model == PACKAGED_DEFAULT and default_adapter != NO_ADAPTER:
        return [AdapterSpec(packaged_adapter(default_adapter))], default_adapter
    return [], None


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
    default_adapter: str | None = None,
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
    return ServedWeights(
        path=prepared.path,
        prepared=prepared,
        quantization=method,
        engine=str(engine),
        model=model,
        default_adapter=default_adapter,
    )
