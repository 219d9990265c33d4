"""Weights at startup: LoRA adapters merged (cached), then quantized; plus LoRA fine-tuning.

Public API (heavy imports stay lazy inside the functions):

* `merge`: `AdapterSpec`, `parse_adapters`, `prepare_weights`, `write_merged`, `merge_adapters`
* `quantize`: `load_causal_lm`, `quantize_int8`, `save_int8`, `load_int8`, `Int8Linear`,
  `linear_weight_bytes`, `check_vllm_quantization`, `check_transformers_quantization`
* `finetune`: `train_lora`, `TrainResult`
* `startup`: `prepare_served_weights`, `ServedWeights` (what the app calls)
* `cli`: the `weights` typer app (`python -m services.generation.weights.cli --help`)
"""

from __future__ import annotations

from .errors import UnsupportedQuantization, WeightsError
from .merge import AdapterSpec, PreparedWeights, parse_adapters, prepare_weights
from .startup import ServedWeights, prepare_served_weights

__all__ = [
    "AdapterSpec",
    "PreparedWeights",
    "ServedWeights",
    "UnsupportedQuantization",
    "WeightsError",
    "parse_adapters",
    "prepare_served_weights",
    "prepare_weights",
]
