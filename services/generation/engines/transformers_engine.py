"""A Hugging Face transformers engine with continuous (iteration-level) batching.

One background thread owns the model and runs the batching loop; the asyncio side
only enqueues requests and reads chunks from per-request queues.

The running batch is one left-padded batch: a 2D attention mask with one column per
cache slot, explicit position ids (real tokens counted per row) and a `DynamicCache` (kv_cache.GrowingCache)
whose per-layer key/value tensors are shaped `[batch, kv_heads, slots, head_dim]`.
Between decode steps the loop

* drops finished and aborted rows (`index_select` on every layer, then trims slot
  columns that are padding for every remaining row),
* admits waiting requests up to `max_batch_size`, prefills them together (left
  padded, logits only for the last position), samples their first token and merges
  their cache into the batch (both sides left-padded to the wider one),
* runs ONE forward pass with the last token of every running row.

Each row keeps its own sampling parameters, seeded `torch.Generator`, incremental
detokenizer, stop-string scanner and (for structured output) xgrammar matcher.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import inspect
import itertools
import json
import logging
import threading
from collections import OrderedDict, deque
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from services.common.errors import EngineError, InferagError, InvalidRequest, NotReady, Overloaded
from services.generation.engines.base import (
    EngineStats,
    FinishReason,
    GenerationChunk,
    ModelInfo,
    SamplingOptions,
    TokenLogprob,
)

log = logging.getLogger(__name__)

try:  # structured output is optional
    import xgrammar as xgr

    HAS_XGRAMMAR = True
except ImportError:  # pragma: no cover - xgrammar is a dependency of the image
    xgr = None  # type: ignore[assignment]
    HAS_XGRAMMAR = False

MAX_MODEL_LEN_CAP = 8192
# Padded prompt tokens one prefill pass may take (at least one request is always admitted).
PREFILL_TOKEN_BUDGET = 8192
# The same when a request asks for prompt logprobs: that prefill keeps the logits of every position
# ([tokens, vocab] floats: 400 MB at 2048 tokens and SmolLM2's 49k vocabulary).
PROMPT_LOGPROBS_TOKEN_BUDGET = 2048
# Logprobs of tokens ruled out entirely (-inf) are reported as this, like vLLM does.
LOGPROB_FLOOR = -9999.0
# Prompt tokens used as context when decoding the first generated tokens.
_DETOK_CONTEXT = 5
_GRAMMAR_CACHE_SIZE = 64
# Tokens per row top-k/top-p look at before falling back to sorting the whole vocabulary.
_TOP_CANDIDATES = 256


class _IncrementalDetokenizer:
    """Turns token ids into text deltas, holding back incomplete UTF-8 characters.

    Decodes a small sliding window (`prefix..end`) and emits what the newest tokens add
    to the text of `prefix..read`, so merged tokens and multi-byte characters come out
    right without re-decoding the whole output each step.
    """

    def __init__(self, tokenizer: Any, prompt_ids: Sequence[int]):
        self._tok = tokenizer
        self._ids: list[int] = list(prompt_ids[-_DETOK_CONTEXT:]) if prompt_ids else []
        self._prefix = 0
        self._read = len(self._ids)

    def _decode(self, ids: list[int]) -> str:
        if not ids:
            return ""
        return str(self._tok.decode(ids, skip_special_tokens=True, clean_up_tokenization_spaces=False))

    def push(self, token_id: int) -> str:
        self._ids.append(token_id)
        prefix_text = self._decode(self._ids[self._prefix : self._read])
        new_text = self._decode(self._ids[self._prefix :])
        if len(new_text) > len(prefix_text) and not new_text.endswith("\ufffd"):
            delta = new_text[len(prefix_text) :]
            self._ids = self._ids[self._read :]
            self._prefix, self._read = 0, len(self._ids)
            return delta
        return ""

    def flush(self) -> str:
        """Whatever is still held back (possibly an incomplete character)."""
        if self._read >= len(self._ids):
            return ""
        prefix_text = self._decode(self._ids[self._prefix : self._read])
        new_text = self._decode(self._ids[self._prefix :])
        self._ids = self._ids[len(self._ids) :]
        self._prefix = self._read = 0
        return new_text[len(prefix_text) :]


@dataclass(eq=False)
class _Seq:
    """One request, from enqueue to its last chunk."""

    key: int
    request_id: str
    prompt: list[int]
    options: SamplingOptions
    loop: asyncio.AbstractEventLoop
    queue: asyncio.Queue[Any]
    grammar: Any = None
    # --- worker-owned state ---
    output: list[int] = field(default_factory=list)
    last_token: int = 0
    generator: Any = None
    matcher: Any = None
    detok: _IncrementalDetokenizer | None = None
    text: str = ""  # decoded output text so far (before stop-string cutting)
    sent: int = 0  # characters of `text` already emitted
    finished: bool = False
    abort_requested: bool = False  # set from any thread
    greedy: bool = True
    prompt_set: set[int] = field(default_factory=set)
    prompt_logprobs: list[TokenLogprob | None] | None = None  # computed at prefill, sent on the first chunk


class TransformersEngine:
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
        if max_batch_size < 1:
            raise ValueError("max_batch_size must be >= 1")
        self.model_path = model_path
        self.model_id = model_id
        self.max_batch_size = max_batch_size
        self.max_waiting = max_waiting
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

        self._model: Any = None
        self._tokenizer: Any = None
        self._device: Any = None
        self._vocab_size = 0
        self._eos_ids: set[int] = set()
        self._pad_id = 0
        self._supports_logits_to_keep = False
        self._grammar_compiler: Any = None
        self._grammar_cache: OrderedDict[str, Any] = OrderedDict()
        self._grammar_lock = threading.Lock()
        self._token_str_cache: dict[int, str] = {}

        self._lock = threading.Lock()
        self._cond = threading.Condition(self._lock)
        self._waiting: deque[_Seq] = deque()
        self._active: dict[int, _Seq] = {}  # every not-yet-finished request, by key
        self._keys = itertools.count()
        self._thread: threading.Thread | None = None
        self._stopping = False

        # Worker-owned batch state.
        self._running: list[_Seq] = []
        self._prefilling = 0
        self._cache: Any = None
        self._mask: Any = None  # [batch, slots] long
        self._bitmask: Any = None

        self.batch_sizes: dict[int, int] = {}
        self.num_aborted = 0
        self.num_finished = 0
        self.num_failed = 0

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
        self._stopping = False
        self._thread = threading.Thread(target=self._worker, name=f"engine-{self.model_id}", daemon=True)
        self._thread.start()

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
        thread = self._thread
        if thread is None:
            return
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        await asyncio.to_thread(thread.join)
        self._thread = None
        # Whatever did not finish ends as aborted.
        with self._lock:
            leftovers = list(self._active.values())
            self._active.clear()
            self._waiting.clear()
        for seq in leftovers:
            seq.finished = True
            self._emit(
                seq,
                GenerationChunk(
                    "", [], finish_reason="abort", prompt_tokens=len(seq.prompt), completion_tokens=len(seq.output)
                ),
            )
        self._running = []
        self._cache = self._mask = None
        self._model = None
        gc.collect()
        with contextlib.suppress(Exception):
            import torch

            if torch.cuda.is_available():
                torch.cuda.empty_cache()

    # --------------------------------------------------------------- requests

    def stats(self) -> EngineStats:
        with self._lock:
            waiting = len(self._waiting)
        running = sum(1 for seq in self._running if not seq.finished) + self._prefilling
        return EngineStats(running=running, waiting=waiting, batch_sizes=dict(self.batch_sizes))

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

        loop = asyncio.get_running_loop()
        seq = _Seq(
            key=next(self._keys),
            request_id=request_id,
            prompt=prompt,
            options=options,
            loop=loop,
            queue=asyncio.Queue(),
            grammar=grammar,
        )
        with self._cond:
            if self._stopping:
                raise NotReady("The transformers engine is stopping.")
            self._check_capacity()
            self._waiting.append(seq)
            self._active[seq.key] = seq
            self._cond.notify_all()

        done = False
        try:
            while True:
                item = await seq.queue.get()
                if isinstance(item, BaseException):
                    done = True
                    raise item
                if item.finish_reason is not None:
                    done = True
                yield item
                if done:
                    return
        finally:
            if not done:
                self._request_abort(seq)

    def _check_capacity(self) -> None:
        """Raise Overloaded when more than `max_waiting` requests would wait for a batch slot.

        Requests the next step admits (free slots in the batch) do not count as waiting, so
        `max_waiting=0` still serves up to `max_batch_size` requests at once. Takes no lock.
        """
        running = sum(1 for seq in self._running if not seq.finished) + self._prefilling
        free = max(0, self.max_batch_size - running)
        if len(self._waiting) - free >= self.max_waiting:
            raise Overloaded(f"Too many requests waiting ({len(self._waiting)}); try again shortly.", retry_after=1.0)

    async def abort(self, request_id: str) -> None:
        with self._lock:
            seqs = [s for s in self._active.values() if s.request_id == request_id]
        for seq in seqs:
            self._request_abort(seq)

    def _request_abort(self, seq: _Seq) -> None:
        """Abort from any thread: drop it from the queue now, or from the batch at the next step."""
        with self._cond:
            if seq.finished or seq.abort_requested:
                return
            seq.abort_requested = True
            if seq in self._waiting:
                self._waiting.remove(seq)
                self._active.pop(seq.key, None)
                seq.finished = True
                self.num_aborted += 1
                self._emit(seq, self._final_abort_chunk(seq))
            self._cond.notify_all()

    def _validate(self, prompt: list[int], options: SamplingOptions) -> None:
        max_len = self.info.max_model_len
        if not prompt:
            raise InvalidRequest("The prompt must contain at least one token.", param="prompt")
        if len(prompt) >= max_len:
            raise InvalidRequest(
                f"The prompt is {len(prompt)} tokens; this model's maximum context length is {max_len} tokens.",
                param="messages",
                code="context_length_exceeded",
            )
        if options.max_tokens < 1:
            raise InvalidRequest("max_tokens must be at least 1.", param="max_tokens")
        if len(prompt) + options.max_tokens > max_len:
            raise InvalidRequest(
                f"This model's maximum context length is {max_len} tokens; the prompt ({len(prompt)}) plus "
                f"max_tokens ({options.max_tokens}) is more.",
                param="max_tokens",
                code="context_length_exceeded",
            )
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

    # ---------------------------------------------------------------- worker

    def _worker(self) -> None:
        import torch

        if self.num_threads:
            torch.set_num_threads(self.num_threads)
        with torch.inference_mode():
            while True:
                with self._cond:
                    while not self._stopping and not self._waiting and not self._running:
                        self._cond.wait()
                    if self._stopping:
                        return
                try:
                    self._step()
                except Exception as exc:  # never let the loop die
                    log.exception("engine step failed; failing the running batch")
                    self._fail_all_running(exc)

    def _step(self) -> None:
        self._drop_rows()
        new = self._admit()
        if new:
            self._prefilling = len(new)
            try:
                self._prefill(new)
            except Exception as exc:
                log.exception("prefill failed for %d request(s)", len(new))
                for seq in new:
                    self._fail(seq, exc)
            finally:
                self._prefilling = 0
            self._drop_rows()
        if self._running:
            self._decode()
            self._drop_rows()

    def _admit(self) -> list[_Seq]:
        room = self.max_batch_size - len(self._running)
        new: list[_Seq] = []
        longest = 0
        scoring = False  # some request of this prefill wants prompt logprobs: every position's logits are kept
        with self._lock:
            while self._waiting and len(new) < room:
                seq = self._waiting[0]
                longest_if = max(longest, len(seq.prompt))
                wants = scoring or seq.options.prompt_logprobs is not None
                budget = PROMPT_LOGPROBS_TOKEN_BUDGET if wants else PREFILL_TOKEN_BUDGET
                if new and longest_if * (len(new) + 1) > budget:
                    break
                self._waiting.popleft()
                new.append(seq)
                longest, scoring = longest_if, wants
        return new

    def _prefill(self, new: list[_Seq]) -> None:
        import torch

        from services.generation.engines.kv_cache import GrowingCache

        dev = self._device
        width = max(len(s.prompt) for s in new)
        ids = torch.full((len(new), width), self._pad_id, dtype=torch.long)
        mask = torch.zeros((len(new), width), dtype=torch.long)
        for row, seq in enumerate(new):
            ids[row, width - len(seq.prompt) :] = torch.tensor(seq.prompt, dtype=torch.long)
            mask[row, width - len(seq.prompt) :] = 1
            self._init_seq(seq)
        ids, mask = ids.to(dev), mask.to(dev)
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        cache = GrowingCache()
        scoring = any(seq.options.prompt_logprobs is not None for seq in new)
        kwargs: dict[str, Any] = {"logits_to_keep": 1} if self._supports_logits_to_keep and not scoring else {}
        out = self._model(
            input_ids=ids,
            attention_mask=mask,
            position_ids=positions,
            past_key_values=cache,
            use_cache=True,
            **kwargs,
        )
        cache = out.past_key_values
        if width > 1 and not bool(mask.all()):
            # Padding slots never get attended to, but keep them finite and zero anyway.
            pad = (mask == 0)[:, None, :, None]
            for layer in cache.layers:
                layer.keys.masked_fill_(pad, 0)
                layer.values.masked_fill_(pad, 0)
        for row, seq in enumerate(new):
            if seq.options.prompt_logprobs is not None:
                logits = out.logits[row, width - len(seq.prompt) :]
                seq.prompt_logprobs = prompt_logprobs(logits, seq.prompt, seq.options.prompt_logprobs, self._token_str)
        self._sample_and_emit(new, out.logits[:, -1, :])

        keep = [row for row, seq in enumerate(new) if not seq.finished]
        if not keep:
            return
        if len(keep) < len(new):
            index = torch.tensor(keep, device=dev)
            _select_rows(cache, index)
            mask = mask.index_select(0, index)
        cache, mask = _trim(cache, mask)
        joined = [new[row] for row in keep]
        if self._cache is None or not self._running:
            self._cache, self._mask, self._running = cache, mask, joined
        else:
            self._cache, self._mask = _merge(self._cache, self._mask, cache, mask)
            self._running = self._running + joined

    def _decode(self) -> None:
        import torch

        seqs = self._running
        batch = len(seqs)
        dev = self._device
        input_ids = torch.tensor([[s.last_token] for s in seqs], dtype=torch.long, device=dev)
        positions = self._mask.sum(dim=1, keepdim=True)
        mask = torch.cat([self._mask, torch.ones((batch, 1), dtype=self._mask.dtype, device=dev)], dim=1)
        out = self._model(
            input_ids=input_ids,
            attention_mask=mask,
            position_ids=positions,
            past_key_values=self._cache,
            use_cache=True,
        )
        self._cache = out.past_key_values
        self._mask = mask
        self.batch_sizes[batch] = self.batch_sizes.get(batch, 0) + 1
        self._sample_and_emit(seqs, out.logits[:, -1, :])

    def _drop_rows(self) -> None:
        """Remove finished and aborted rows from the batch and trim all-padding slots."""
        import torch

        if not self._running:
            return
        keep: list[int] = []
        for row, seq in enumerate(self._running):
            if seq.abort_requested and not seq.finished:
                seq.finished = True
                with self._lock:
                    self._active.pop(seq.key, None)
                    self.num_aborted += 1
                self._emit(seq, self._final_abort_chunk(seq))
            if not seq.finished:
                keep.append(row)
        if len(keep) == len(self._running):
            return
        if not keep:
            self._running, self._cache, self._mask = [], None, None
            return
        index = torch.tensor(keep, device=self._device)
        _select_rows(self._cache, index)
        self._mask = self._mask.index_select(0, index)
        self._cache, self._mask = _trim(self._cache, self._mask)
        self._running = [self._running[row] for row in keep]

    def _fail_all_running(self, exc: Exception) -> None:
        for seq in self._running:
            self._fail(seq, exc)
        self._running, self._cache, self._mask = [], None, None

    def _fail(self, seq: _Seq, exc: Exception) -> None:
        if seq.finished:
            return
        seq.finished = True
        with self._lock:
            self._active.pop(seq.key, None)
            self.num_failed += 1
        err = exc if isinstance(exc, InferagError) else EngineError(f"Generation failed: {exc}")
        if err is not exc:
            err.__cause__ = exc
        self._emit(seq, err)

    # -------------------------------------------------------------- sampling

    def _init_seq(self, seq: _Seq) -> None:
        import torch

        opts = seq.options
        seq.greedy = opts.temperature <= 1e-5
        if not seq.greedy:
            gen = torch.Generator(device=self._device)
            if opts.seed is not None:
                gen.manual_seed(int(opts.seed) & 0xFFFF_FFFF_FFFF_FFFF)
            else:
                gen.seed()
            seq.generator = gen
        if seq.grammar is not None:
            seq.matcher = xgr.GrammarMatcher(seq.grammar)
        if opts.repetition_penalty != 1.0:
            seq.prompt_set = set(seq.prompt)
        seq.detok = _IncrementalDetokenizer(self._tokenizer, seq.prompt)

    def _sample_and_emit(self, seqs: list[_Seq], logits: Any) -> None:
        """Sample one token per row, then update and notify each request."""
        try:
            tokens, logprob_rows = self._sample(seqs, logits)
        except Exception as exc:
            log.exception("sampling failed")
            for seq in seqs:
                self._fail(seq, exc)
            return
        for row, seq in enumerate(seqs):
            if seq.finished:
                continue
            try:
                self._advance(seq, tokens[row], logprob_rows[row])
            except Exception as exc:
                log.exception("post-processing failed for %s", seq.request_id)
                self._fail(seq, exc)

    def _sample(self, seqs: list[_Seq], logits: Any) -> tuple[list[int], list[TokenLogprob | None]]:
        import torch

        logits = logits.float()
        vocab = logits.shape[-1]

        # Structured output: forbid tokens the grammar does not allow.
        constrained = [row for row, s in enumerate(seqs) if s.matcher is not None and not s.finished]
        if constrained:
            for row in constrained:
                seqs[row].matcher.fill_next_token_bitmask(self._bitmask, row)
            bitmask = self._bitmask if self._bitmask.device == logits.device else self._bitmask.to(logits.device)
            xgr.apply_token_bitmask_inplace(logits, bitmask, indices=constrained)

        # Penalties, row by row (only rows that ask for them).
        for row, seq in enumerate(seqs):
            opts = seq.options
            if opts.repetition_penalty != 1.0:
                seen = seq.prompt_set.union(seq.output)
                ids = torch.tensor(sorted(seen), dtype=torch.long, device=logits.device)
                picked = logits[row, ids]
                penalty = opts.repetition_penalty
                penalized = torch.where(picked > 0, picked / penalty, picked * penalty)
                # A tiny penalty (5e-324) is 0 in float32: x / 0 is +inf (NaN after log_softmax) and
                # -inf * 0 is NaN (argmax picks it, past the grammar's mask). Keep -inf, cap the rest.
                finite = penalized.clamp(max=torch.finfo(logits.dtype).max)
                logits[row, ids] = torch.where(picked == float("-inf"), picked, finite)
            if (opts.presence_penalty or opts.frequency_penalty) and seq.output:
                out = torch.tensor(seq.output, dtype=torch.long, device=logits.device)
                counts = torch.bincount(out, minlength=vocab)[:vocab].to(logits.dtype)
                logits[row] -= opts.frequency_penalty * counts + opts.presence_penalty * (counts > 0).to(logits.dtype)

        # Temperature, then top-k / top-p on the rows that sample.
        temps = [1.0 if s.greedy else float(s.options.temperature) for s in seqs]
        if any(t != 1.0 for t in temps):
            logits /= torch.tensor(temps, dtype=logits.dtype, device=logits.device)[:, None]
        filtering = [not s.greedy and ((0 < s.options.top_k < vocab) or s.options.top_p < 1.0) for s in seqs]
        if any(filtering):
            rows = [row for row, f in enumerate(filtering) if f]
            index = torch.tensor(rows, device=logits.device)
            logits[index] = _top_k_top_p(
                logits.index_select(0, index),
                [seqs[r].options.top_k if 0 < seqs[r].options.top_k < vocab else 0 for r in rows],
                [float(seqs[r].options.top_p) for r in rows],
            )

        logprobs = torch.log_softmax(logits, dim=-1)
        tokens = logits.argmax(dim=-1).tolist()
        sampling = [row for row, seq in enumerate(seqs) if not seq.greedy]
        if sampling:
            # Inverse-CDF sampling with one uniform draw per row from that row's own generator:
            # cheap, and a seeded row draws the same numbers whatever else is in the batch.
            index = torch.tensor(sampling, device=logits.device)
            probs = logprobs.index_select(0, index).exp()
            cdf = probs.cumsum(dim=-1)
            draws = torch.cat(
                [torch.rand(1, generator=seqs[r].generator, device=logits.device, dtype=cdf.dtype) for r in sampling]
            )
            picks = torch.searchsorted(cdf, (draws * cdf[:, -1]).unsqueeze(-1), right=True).squeeze(-1)
            picks = picks.clamp_(max=vocab - 1)
            impossible = probs.gather(1, picks.unsqueeze(-1)).squeeze(-1) <= 0  # rounding at the very top
            picks = torch.where(impossible, probs.argmax(dim=-1), picks)
            for row, pick in zip(sampling, picks.tolist(), strict=True):
                tokens[row] = int(pick)

        results: list[TokenLogprob | None] = []
        for row, seq in enumerate(seqs):
            n = seq.options.logprobs
            if n is None:
                results.append(None)
                continue
            token = tokens[row]
            chosen = max(float(logprobs[row, token]), LOGPROB_FLOOR)
            top: list[tuple[int, str, float]] = []
            if n > 0:
                values, ids = logprobs[row].topk(min(int(n), vocab))
                top = [
                    (int(i), self._token_str(int(i)), max(float(v), LOGPROB_FLOOR))
                    for v, i in zip(values.tolist(), ids.tolist(), strict=True)
                ]
            results.append(TokenLogprob(token_id=token, token=self._token_str(token), logprob=chosen, top=top))
        return tokens, results

    def _token_str(self, token_id: int) -> str:
        text = self._token_str_cache.get(token_id)
        if text is None:
            decoded = self._tokenizer.decode([token_id], skip_special_tokens=False, clean_up_tokenization_spaces=False)
            text = str(decoded)
            if len(self._token_str_cache) < 200_000:
                self._token_str_cache[token_id] = text
        return text

    def _advance(self, seq: _Seq, token: int, logprob: TokenLogprob | None) -> None:
        """Record a sampled token, work out text and finish state, emit one chunk."""
        opts = seq.options
        seq.output.append(token)
        seq.last_token = token
        finish: FinishReason | None = None
        stop_reason: str | int | None = None
        add_text = True

        if seq.matcher is not None:
            if not seq.matcher.accept_token(token):
                raise EngineError(f"Token {token} was rejected by the JSON grammar.")
            if seq.matcher.is_terminated():
                finish = "stop"
                add_text = token not in self._eos_ids
        if finish is None:
            if token in opts.stop_token_ids:
                finish, stop_reason, add_text = "stop", token, False
            elif not opts.ignore_eos and token in self._eos_ids:
                finish, add_text = "stop", False

        assert seq.detok is not None
        if add_text:
            seq.text += seq.detok.push(token)
        if finish is None and opts.stop:
            hit = _find_stop(seq.text, opts.stop, seq.sent)
            if hit is not None:
                cut, stop_str = hit
                seq.text = seq.text[:cut]
                finish, stop_reason = "stop", stop_str
        if finish is None and (
            len(seq.output) >= opts.max_tokens or len(seq.prompt) + len(seq.output) >= self.info.max_model_len
        ):
            finish = "length"

        if finish is not None and not isinstance(stop_reason, str):
            seq.text += seq.detok.flush()  # anything held back as a possibly incomplete character
        held = 0 if finish is not None else _held_back(seq.text, opts.stop, seq.sent)
        end = len(seq.text) - held
        delta = seq.text[seq.sent : end]
        seq.sent = max(seq.sent, end)

        chunk = GenerationChunk(
            text=delta,
            token_ids=[token],
            logprobs=[logprob] if logprob is not None else None,
            finish_reason=finish,
            stop_reason=stop_reason,
            prompt_tokens=len(seq.prompt),
            completion_tokens=len(seq.output),
            prompt_logprobs=seq.prompt_logprobs,
        )
        seq.prompt_logprobs = None  # sent once, on the first chunk
        if finish is not None:
            seq.finished = True
            with self._lock:
                self._active.pop(seq.key, None)
                self.num_finished += 1
        self._emit(seq, chunk)

    def _final_abort_chunk(self, seq: _Seq) -> GenerationChunk:
        return GenerationChunk(
            text="",
            token_ids=[],
            finish_reason="abort",
            prompt_tokens=len(seq.prompt),
            completion_tokens=len(seq.output),
        )

    def _emit(self, seq: _Seq, item: GenerationChunk | BaseException) -> None:
        try:
            seq.loop.call_soon_threadsafe(seq.queue.put_nowait, item)
        except RuntimeError:  # the consumer's loop is gone: nobody is listening any more
            if not seq.finished:
                seq.abort_requested = True


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


def prompt_logprobs(
    logits: Any, prompt: Sequence[int], top_n: int, token_str: Callable[[int], str]
) -> list[TokenLogprob | None]:
    """Each prompt token's logprob given the tokens before it, from the prefill's logits ([len(prompt), vocab]).

    Position i of the logits predicts token i + 1, so the first token has none (None), as in vLLM;
    `rank` is 1 + the number of tokens the model found likelier, and `top_n` alternatives come with each.
    """
    import torch

    result: list[TokenLogprob | None] = [None]
    if len(prompt) < 2:
        return result
    logprobs = torch.log_softmax(logits[:-1].float(), dim=-1)
    target = torch.tensor(prompt[1:], dtype=torch.long, device=logprobs.device)
    chosen = logprobs.gather(1, target[:, None])
    ranks = ((logprobs > chosen).sum(dim=-1) + 1).tolist()
    chosen_list = chosen.squeeze(1).tolist()
    top: list[list[tuple[int, str, float]]] = [[] for _ in target]
    if top_n > 0:
        values, ids = logprobs.topk(min(top_n, logprobs.shape[-1]), dim=-1)
        top = [
            [(i, token_str(i), max(v, LOGPROB_FLOOR)) for v, i in zip(vs, is_, strict=True)]
            for vs, is_ in zip(values.tolist(), ids.tolist(), strict=True)
        ]
    for pos, token in enumerate(prompt[1:]):
        result.append(
            TokenLogprob(
                token_id=int(token),
                token=token_str(int(token)),
                logprob=max(chosen_list[pos], LOGPROB_FLOOR),
                top=top[pos],
                rank=int(ranks[pos]),
            )  # fmt: skip
        )
    return result


def _find_stop(text: str, stops: Sequence[str], sent: int) -> tuple[int, str] | None:
    """Earliest stop string in the not-yet-emitted part of `text`: (cut index, stop)."""
    best: tuple[int, str] | None = None
    for stop in stops:
        if not stop:
            continue
        idx = text.find(stop, max(0, sent - len(stop) + 1))
        if idx != -1 and (best is None or idx < best[0]):
            best = (max(idx, sent), stop)
    return best


def _held_back(text: str, stops: Sequence[str], sent: int) -> int:
    """Length of the longest tail of `text` that could be the start of a stop string."""
    longest = 0
    for stop in stops:
        for n in range(min(len(stop) - 1, len(text) - sent), longest, -1):
            if stop.startswith(text[len(text) - n :]):
                longest = n
                break
    return longest


def _top_k_top_p(logits: Any, top_ks: list[int], top_ps: list[float]) -> Any:
    """Mask (to -inf) what top-k, then top-p (on the renormalised top-k distribution), rule out.

    `logits` is [rows, vocab]; a top_k of 0 and a top_p of 1 mean off. Works on the best
    `_TOP_CANDIDATES` (or top_k) tokens per row and only sorts the whole vocabulary when the
    nucleus of some row is wider than that.
    """
    import torch

    rows, vocab = logits.shape
    dev = logits.device
    width = min(vocab, max([_TOP_CANDIDATES, *top_ks]))
    k = torch.tensor([kk if kk > 0 else vocab for kk in top_ks], device=dev)
    p = torch.tensor(top_ps, dtype=logits.dtype, device=dev)
    full_lse = torch.logsumexp(logits, dim=-1, keepdim=True)

    def nucleus(values: Any) -> tuple[Any, Any]:
        ranks = torch.arange(values.shape[-1], device=dev)[None, :]
        outside_k = ranks >= k[:, None]
        kept = values.masked_fill(outside_k, float("-inf"))
        # Renormalise over the top-k where a top-k applies, over the whole vocabulary otherwise.
        lse = torch.where(k[:, None] < vocab, torch.logsumexp(kept, dim=-1, keepdim=True), full_lse)
        probs = (kept - lse).exp()
        return outside_k, probs

    values, order = logits.topk(width, dim=-1)
    outside_k, probs = nucleus(values)
    if width < vocab:
        covered = probs.sum(dim=-1)
        if bool(((k >= vocab) & (p < 1.0) & (covered < p)).any()):  # a nucleus wider than the candidates
            values, order = logits.sort(dim=-1, descending=True)
            outside_k, probs = nucleus(values)
    ahead = probs.cumsum(dim=-1) - probs  # probability mass ranked before each token
    remove = outside_k | ((ahead > p[:, None]) & (p[:, None] < 1.0))
    remove[:, 0] = False
    values = values.masked_fill(remove, float("-inf"))
    return torch.full_like(logits, float("-inf")).scatter_(-1, order, values)


def _select_rows(cache: Any, index: Any) -> None:
    for layer in cache.layers:
        if layer.keys is None or layer.keys.numel() == 0:
            continue
        layer.keys = layer.keys.index_select(0, index)
        layer.values = layer.values.index_select(0, index)


def _trim(cache: Any, mask: Any) -> tuple[Any, Any]:
    """Drop leading slot columns that are padding for every row."""
    used = mask.any(dim=0).nonzero()
    if used.numel() == 0:
        return cache, mask
    first = int(used[0, 0])
    if first == 0:
        return cache, mask
    for layer in cache.layers:
        if layer.keys is None or layer.keys.numel() == 0:
            continue
        layer.keys = layer.keys[:, :, first:, :].contiguous()
        layer.values = layer.values[:, :, first:, :].contiguous()
    return cache, mask[:, first:].contiguous()


def _merge(cache_a: Any, mask_a: Any, cache_b: Any, mask_b: Any) -> tuple[Any, Any]:
    """Stack two left-padded batches (a on top of b), padding the narrower one on the left."""
    import torch
    import torch.nn.functional as F

    width = max(mask_a.shape[1], mask_b.shape[1])
    pad_a, pad_b = width - mask_a.shape[1], width - mask_b.shape[1]
    for layer_a, layer_b in zip(cache_a.layers, cache_b.layers, strict=True):
        keys_a, values_a = layer_a.keys, layer_a.values
        keys_b, values_b = layer_b.keys, layer_b.values
        if pad_a:
            keys_a, values_a = F.pad(keys_a, (0, 0, pad_a, 0)), F.pad(values_a, (0, 0, pad_a, 0))
        if pad_b:
            keys_b, values_b = F.pad(keys_b, (0, 0, pad_b, 0)), F.pad(values_b, (0, 0, pad_b, 0))
        layer_a.keys = torch.cat([keys_a, keys_b], dim=0)
        layer_a.values = torch.cat([values_a, values_b], dim=0)
    mask = torch.cat([F.pad(mask_a, (pad_a, 0)), F.pad(mask_b, (pad_b, 0))], dim=0)
    return cache_a, mask
