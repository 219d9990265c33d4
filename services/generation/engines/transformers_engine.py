"""A Hugging Face transformers engine with continuous (iteration-level) batching.

This module loads the model and tokenizer, checks requests and compiles their JSON grammars; the
batching loop is `scheduler.ContinuousBatcher`, sampling `sampling`, token-to-text `detokenizer`,
and the cache the batch keeps (and its row and slot surgery) `kv_cache`.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import inspect
import json
import logging
import threading
from collections import OrderedDict
from collections.abc import AsyncIterator
from typing import Any

from services.common.errors import InvalidRequest, NotReady
from services.generation.engines.base import GenerationChunk, ModelInfo, SamplingOptions, check_context_length
from services.generation.engines.sampling import HAS_XGRAMMAR, xgr
from services.generation.engines.scheduler import ContinuousBatcher

log = logging.getLogger(__name__)

MAX_MODEL_LEN_CAP = 8192
_GRAMMAR_CACHE_SIZE = 64


class TransformersEngine(ContinuousBatcher):
    """Continuous-batching engine on top of `AutoModelForCausalLM`."""

    supports_json_schema: bool = HAS_XGRAMMAR

    def __init__(
        self,
        model_path: str,
        *,
        model_id: str,
        max_batch_size: int = 16,
        max_waiting: int = 64,
        max_model_len: int | None = None,
        dtype: str = "auto",
        device: str = "auto",
        num_threads: int | None = None,
        quantization: str | None = None,
    ):
        super().__init__(max_batch_size, max_waiting)
        self.model_path = model_path
        self.model_id = model_id
        self._requested_max_len = max_model_len
        self.dtype_name = dtype
        self.device_name = device
        self.num_threads = num_threads
        self.quantization = quantization
        self.info = ModelInfo(
            id=model_id,
            max_model_len=self._resolve_max_len(self._read_config()),
            engine="transformers",
            root=model_path,
        )

        self._model = None
        self._tokenizer = None
        self._device = None
        self._vocab_size = 0
        self._eos_ids = set()
        self._pad_id = 0
        self._supports_logits_to_keep = False
        self._grammar_compiler: Any = None
        self._grammar_cache: OrderedDict[str, Any] = OrderedDict()
        self._grammar_lock = threading.Lock()

    # ------------------------------------------------------------------ setup

    def _read_config(self) -> Any:
        try:
            from transformers import AutoConfig

            return AutoConfig.from_pretrained(self.model_path)
        except Exception:  # a hub id on an offline host: settled again in start()
            return None

    def _resolve_max_len(self, config: Any) -> int:
        limit = None
        if config is not None:
            text_config = config.get_text_config() if hasattr(config, "get_text_config") else config
            limit = getattr(text_config, "max_position_embeddings", None)
        limit = min(int(limit or 2048), MAX_MODEL_LEN_CAP)
        if self._requested_max_len is not None:
            return min(int(self._requested_max_len), limit) if config is not None else int(self._requested_max_len)
        return limit

    async def start(self) -> None:
        if self._thread is not None:
            return
        await asyncio.to_thread(self._load)
        self._start_worker(f"engine-{self.model_id}")

    def _load(self) -> None:
        import torch
        from transformers import AutoTokenizer, GenerationConfig

        if self.num_threads:
            torch.set_num_threads(self.num_threads)
        if self.device_name == "auto":
            device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        else:
            device = torch.device(self.device_name)
        config = self._read_config()
        if config is not None:  # before the weights load (else right after)
            check_full_attention(config, self._resolve_max_len(config), self.model_path)
        dtype = _torch_dtype(self.dtype_name, device, config)
        tokenizer = AutoTokenizer.from_pretrained(self.model_path)
        # from_pretrained + the quantization (int8 / bnb-4bit / bnb-8bit), on `device`, in eval mode
        from services.common.service import MODEL_LOAD_LOCK
        from services.generation.weights.quantize import load_causal_lm

        with MODEL_LOAD_LOCK:
            model: Any = load_causal_lm(self.model_path, dtype=dtype, device=device, quantization=self.quantization)

        if config is None:
            check_full_attention(model.config, self._resolve_max_len(model.config), self.model_path)
        config = model.config
        self.info = ModelInfo(
            id=self.model_id,
            max_model_len=self._resolve_max_len(config),
            engine="transformers",
            root=self.model_path,
            extra={
                "dtype": str(dtype).removeprefix("torch."),
                "device": str(device),
                "quantization": self.quantization,
            },
        )
        eos: set[int] = set()
        try:
            gen_config = GenerationConfig.from_pretrained(self.model_path)
            eos.update(_as_id_list(gen_config.eos_token_id))
        except Exception:
            eos.update(_as_id_list(getattr(model.generation_config, "eos_token_id", None)))
        eos.update(_as_id_list(getattr(config, "eos_token_id", None)) if not eos else [])
        if tokenizer.eos_token_id is not None:
            eos.add(int(tokenizer.eos_token_id))
        self._eos_ids = eos
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        self._pad_id = int(pad) if pad is not None else 0
        self._vocab_size = int(model.get_output_embeddings().weight.shape[0])
        self._supports_logits_to_keep = "logits_to_keep" in inspect.signature(model.forward).parameters
        if HAS_XGRAMMAR:
            try:
                info = xgr.TokenizerInfo.from_huggingface(
                    tokenizer, vocab_size=self._vocab_size, stop_token_ids=sorted(eos) or None
                )
                self._grammar_compiler = xgr.GrammarCompiler(info)
                self._bitmask = xgr.allocate_token_bitmask(self.max_batch_size, self._vocab_size)
            except Exception:  # unusual tokenizer: serve without structured output
                log.exception("xgrammar unavailable for %s; json_schema disabled", self.model_path)
                self._grammar_compiler = None
        self.supports_json_schema = self._grammar_compiler is not None
        self._tokenizer, self._model, self._device = tokenizer, model, device
        log.info(
            "loaded %s on %s (%s), max_model_len=%d, max_batch_size=%d",
            self.model_path,
            device,
            dtype,
            self.info.max_model_len,
            self.max_batch_size,
        )

    async def stop(self) -> None:
        if self._thread is None:
            return
        await self._stop_worker()
        self._model = None
        gc.collect()
        with contextlib.suppress(Exception):
            import torch

            if torch.cuda.is_available():
                torch.cuda.empty_cache()

    # --------------------------------------------------------------- requests

    async def generate(
        self, request_id: str, prompt_token_ids: list[int], options: SamplingOptions
    ) -> AsyncIterator[GenerationChunk]:
        if self._thread is None or self._model is None:
            raise NotReady("The transformers engine is not started.")
        prompt = [int(t) for t in prompt_token_ids]
        self._validate(prompt, options)
        self._check_capacity()
        grammar = None
        if options.json_schema is not None:
            grammar = await asyncio.to_thread(self._compile_grammar, options.json_schema)
        # aclosing: a caller that stops reading closes the request's own stream at once (that aborts it)
        async with contextlib.aclosing(self._submit(request_id, prompt, options, grammar)) as chunks:
            async for chunk in chunks:
                yield chunk

    def _validate(self, prompt: list[int], options: SamplingOptions) -> None:
        if not prompt:
            raise InvalidRequest("The prompt must contain at least one token.", param="prompt")
        if options.max_tokens < 1:
            raise InvalidRequest("max_tokens must be at least 1.", param="max_tokens")
        check_context_length(len(prompt), options.max_tokens, self.info.max_model_len)
        if self._vocab_size and any(t < 0 or t >= self._vocab_size for t in prompt):
            raise InvalidRequest("The prompt contains token ids outside the vocabulary.", param="prompt")
        if options.json_schema is not None and self._grammar_compiler is None:
            raise InvalidRequest(
                "Structured output (json_schema) is not supported by this engine.", param="response_format"
            )

    def _compile_grammar(self, schema: dict[str, Any]) -> Any:
        # not sorted: the grammar writes properties in the order the schema lists them (as OpenAI's structured
        # outputs do), and a model fills "name" before "description" better than the other way round
        key = json.dumps(schema)
        with self._grammar_lock:
            cached = self._grammar_cache.get(key)
            if cached is not None:
                self._grammar_cache.move_to_end(key)
                return cached
        try:
            compiled = self._grammar_compiler.compile_json_schema(key, any_whitespace=False)
        except Exception as exc:
            raise InvalidRequest(f"Invalid JSON schema: {exc}", param="response_format") from exc
        with self._grammar_lock:
            self._grammar_cache[key] = compiled
            while len(self._grammar_cache) > _GRAMMAR_CACHE_SIZE:
                self._grammar_cache.popitem(last=False)
        return compiled


# ------------------------------------------------------------------ helpers


_DTYPE_ALIASES = {
    "float32": "float32",
    "fp32": "float32",
    "float": "float32",
    "float16": "float16",
    "fp16": "float16",
    "half": "float16",
    "bfloat16": "bfloat16",
    "bf16": "bfloat16",
}


def check_full_attention(config: Any, max_model_len: int, model_path: str) -> None:
    """Refuse a model whose attention is not full on every layer within `max_model_len` tokens.

    The batch keeps one full key/value cache per layer and slices it by slot column (trim, merge,
    drop rows): a sliding-window, chunked or recurrent layer would decode wrong text without an
    error. A window at least `max_model_len` long never slides, so such a model is served.
    """
    from services.generation.weights.errors import WeightsError

    text = config.get_text_config(decoder=True) if hasattr(config, "get_text_config") else config
    window = getattr(text, "sliding_window", None)
    chunk = getattr(text, "attention_chunk_size", None)
    declared = getattr(text, "layer_types", None)
    if declared is None:  # transformers infers the layer kinds from these fields the same way
        kind = "sliding_attention" if window is not None else "chunked_attention" if chunk is not None else None
        declared = [kind] if kind else []
    # The tokens a layer of each kind sees back; a kind not here sees none of the cache we keep.
    limits: dict[str, int] = {k: int(v) for k, v in (("sliding_attention", window), ("chunked_attention", chunk)) if v}
    unsupported = sorted({k for k in declared if k != "full_attention" and limits.get(k, 0) < max_model_len})
    if not unsupported:
        return
    detail = ", ".join(f"{k} ({limits[k]} tokens)" if limits.get(k) else k for k in unsupported)
    hint = " or set INFERAG_GEN_MAX_MODEL_LEN at most the window" if set(unsupported) <= set(limits) else ""
    raise WeightsError(
        f"{model_path} has layers with {detail}; the transformers engine supports full attention only "
        f"(its cache would decode wrong text within max_model_len={max_model_len}). Serve it with the vLLM "
        f"engine (INFERAG_GEN_ENGINE=vllm){hint}.",
        code="unsupported_attention",
    )


def _torch_dtype(name: str, device: Any, config: Any) -> Any:
    """`auto`: on CPU bf16 where the CPU has native bf16 arithmetic (AMX / AVX512-BF16), else fp32;
    on GPU bf16 for checkpoints stored in bf16 (where supported), else fp16."""
    import torch

    if name == "auto":
        if device.type != "cuda":
            from services.common.cpu import cpu_auto_dtype

            return getattr(torch, cpu_auto_dtype())
        stored = getattr(config, "dtype", None) or getattr(config, "torch_dtype", None)
        if str(stored).removeprefix("torch.") == "bfloat16" and torch.cuda.is_bf16_supported():
            return torch.bfloat16
        return torch.float16
    try:
        return getattr(torch, _DTYPE_ALIASES[name.lower()])
    except KeyError:
        raise ValueError(f"Unknown dtype {name!r}; use auto, float32, float16 or bfloat16.") from None


def _as_id_list(value: Any) -> list[int]:
    if value is None:
        return []
    if isinstance(value, int):
        return [value]
    return [int(v) for v in value]
