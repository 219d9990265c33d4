"""Settings of the embeddings service (environment prefix `INFERAG_EMB_`)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from services.common.settings import CommonSettings

from .models import DEFAULT_EMBED_MODEL, DEFAULT_SPARSE_MODEL

# OpenAI's own cap on inputs per /v1/embeddings request.
OPENAI_MAX_INPUTS = 2048


class EmbeddingsSettings(CommonSettings):
    model_config = SettingsConfigDict(env_prefix="INFERAG_EMB_", env_file=".env", extra="ignore")

    port: int = Field(8001, description="Port to bind.")
    embed_model: str = Field(
        DEFAULT_EMBED_MODEL,
        description="Dense model: the packaged all-minilm-l6-v2, a sentence-transformers folder or a hub id.",
    )
    embed_model_name: str | None = Field(None, description="Name clients send as `model`; default: derived.")
    rerank_model: str = Field(
        "",
        description="'' or 'bi-encoder': rank with the dense model's cosine over the whole passage; "
        "a CrossEncoder folder or hub id (e.g. BAAI/bge-reranker-base); 'none' turns reranking off.",
    )
    rerank_model_name: str | None = Field(None, description="Name of the cross-encoder reranker; default: derived.")
    sparse_model: str = Field(
        DEFAULT_SPARSE_MODEL,
        description="SPLADE model (AutoModelForMaskedLM folder or hub id); default the packaged splade-tiny; "
        "'none' turns /v1/sparse-embeddings off.",
    )
    sparse_model_name: str | None = Field(None, description="Name of the sparse model; default: derived.")
    device: str = Field("auto", description="auto (cuda when available), cpu, cuda or cuda:N.")
    dtype: Literal["auto", "float32", "float16", "bfloat16", "int8"] = Field(
        "auto",
        description="auto: float16 on CUDA; on CPU bfloat16 where it has AMX-BF16 or AVX512-BF16, else float32. "
        "int8: dynamic int8 quantization of the "
        "Linear layers, CPU only.",
    )
    num_threads: int | None = Field(
        None,
        ge=1,
        description="torch intra-op threads on CPU; default: the CPUs less one (at least 1), leaving a core "
        "for the HTTP side and staying fast when other services share the CPUs.",
    )
    batch_size: int = Field(32, ge=1, description="Most inputs (texts, pairs) in one model call.")
    max_wait_ms: float = Field(2.0, ge=0, description="How long an idle model waits for more requests to fill a batch.")
    max_queue: int = Field(
        4096, ge=1, description="Inputs queued per model before 429 (a request on an empty queue always fits)."
    )
    max_inputs: int = Field(
        OPENAI_MAX_INPUTS, ge=1, le=OPENAI_MAX_INPUTS, description="Most inputs in one embeddings request."
    )
    max_rerank_documents: int = Field(1000, ge=1, le=10_000, description="Most documents in one rerank request.")
    truncate: bool = Field(
        True,
        description="Default for requests that do not say: truncate over-long inputs to the model's limit "
        "(true) or answer 400 (false).",
    )
