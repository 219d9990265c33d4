"""Continuous (iteration-level) batching over a causal LM, for the transformers engine.

One background thread runs the loop; the asyncio side only enqueues requests (`_submit`) and reads
chunks from per-request queues. The running batch is one left-padded batch: a 2D attention mask
with one column per cache slot, explicit position ids (real tokens counted per row) and a
`kv_cache.GrowingCache`. Between decode steps the loop

* drops finished and aborted rows (`kv_cache.select_rows`, then `kv_cache.trim` of slot columns
  that are padding for every remaining row),
* admits waiting requests up to `max_batch_size`, prefills them together (left padded, logits only
  for the last position), samples their first token and merges their cache into the batch
  (`kv_cache.merge`: both sides left-padded to the wider one),
* runs ONE forward pass with the last token of every running row.

Each row (`Seq`) keeps its own sampling parameters, seeded `torch.Generator`, incremental
detokenizer, stop-string scanner and (for structured output) xgrammar matcher. The engine that
subclasses `ContinuousBatcher` loads the model and sets the attributes declared below.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import threading
from collections import deque
from collections.abc import AsyncGenerator
from dataclasses import dataclass, field
from typing import Any

from services.common.errors import EngineError, InferagError, NotReady, Overloaded
from services.generation.engines import sampling
from services.generation.engines.base import (
    EngineStats,
    FinishReason,
    GenerationChunk,
    ModelInfo,
    SamplingOptions,
    TokenLogprob,
)
from services.generation.engines.detokenizer import IncrementalDetokenizer, find_stop, held_back

log = logging.getLogger(__name__)

# Padded prompt tokens one prefill pass may take (at least one request is always admitted).
PREFILL_TOKEN_BUDGET = 8192
# The same when a request asks for prompt logprobs: that prefill keeps the logits of every position
# ([tokens, vocab] floats: 400 MB at 2048 tokens and SmolLM2's 49k vocabulary).
PROMPT_LOGPROBS_TOKEN_BUDGET = 2048


@dataclass(eq=False)
class Seq:
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
    detok: IncrementalDetokenizer | None = None
    text: str = ""  # decoded output text so far (before stop-string cutting)
    sent: int = 0  # characters of `text` already emitted
    finished: bool = False
    abort_requested: bool = False  # set from any thread
    greedy: bool = True
    prompt_set: set[int] = field(default_factory=set)
    prompt_logprobs: list[TokenLogprob | None] | None = None  # computed at prefill, sent on the first chunk


class ContinuousBatcher:
    """The batching loop and its request queue; the subclass loads the model and starts the worker."""

    # Set by the engine once the model is loaded.
    info: ModelInfo
    _model: Any
    _tokenizer: Any
    _device: Any
    _eos_ids: set[int]
    _pad_id: int
    _supports_logits_to_keep: bool
    _bitmask: Any  # xgrammar token bitmask, one row per batch slot

    def __init__(self, max_batch_size: int, max_waiting: int):
        if max_batch_size < 1:
            raise ValueError("max_batch_size must be >= 1")
        self.max_batch_size = max_batch_size
        self.max_waiting = max_waiting
        self.num_threads: int | None = None
        self._token_str_cache: dict[int, str] = {}

        self._lock = threading.Lock()
        self._cond = threading.Condition(self._lock)
        self._waiting: deque[Seq] = deque()
        self._active: dict[int, Seq] = {}  # every not-yet-finished request, by key
        self._keys = itertools.count()
        self._thread: threading.Thread | None = None
        self._stopping = False

        # Worker-owned batch state.
        self._running: list[Seq] = []
        self._prefilling = 0
        self._cache: Any = None
        self._mask: Any = None  # [batch, slots] long
        self._bitmask = None

        self.batch_sizes: dict[int, int] = {}
        self.num_aborted = 0
        self.num_finished = 0
        self.num_failed = 0

    # ------------------------------------------------------------- lifecycle

    def _start_worker(self, name: str) -> None:
        self._stopping = False
        self._thread = threading.Thread(target=self._worker, name=name, daemon=True)
        self._thread.start()

    async def _stop_worker(self) -> None:
        """Stop the loop; whatever did not finish ends as aborted."""
        thread = self._thread
        if thread is None:
            return
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        await asyncio.to_thread(thread.join)
        self._thread = None
        with self._lock:
            leftovers = list(self._active.values())
            self._active.clear()
            self._waiting.clear()
        for seq in leftovers:
            seq.finished = True
            self._emit(seq, self._final_abort_chunk(seq))
        self._running = []
        self._cache = self._mask = None

    # --------------------------------------------------------------- requests

    def stats(self) -> EngineStats:
        with self._lock:
            waiting = len(self._waiting)
        running = sum(1 for seq in self._running if not seq.finished) + self._prefilling
        return EngineStats(running=running, waiting=waiting, batch_sizes=dict(self.batch_sizes))

    async def _submit(
        self, request_id: str, prompt: list[int], options: SamplingOptions, grammar: Any
    ) -> AsyncGenerator[GenerationChunk, None]:
        """Queue a validated request and yield its chunks; closing the iterator early aborts it."""
        seq = Seq(
            key=next(self._keys),
            request_id=request_id,
            prompt=prompt,
            options=options,
            loop=asyncio.get_running_loop(),
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

    def _request_abort(self, seq: Seq) -> None:
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

    def _admit(self) -> list[Seq]:
        room = self.max_batch_size - len(self._running)
        new: list[Seq] = []
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

    def _prefill(self, new: list[Seq]) -> None:
        import torch

        from services.generation.engines import kv_cache

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
        cache = kv_cache.GrowingCache()
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
            kv_cache.zero_padding(cache, mask)
        for row, seq in enumerate(new):
            if seq.options.prompt_logprobs is not None:
                logits = out.logits[row, width - len(seq.prompt) :]
                seq.prompt_logprobs = sampling.prompt_logprobs(
                    logits, seq.prompt, seq.options.prompt_logprobs, self._token_str
                )
        self._sample_and_emit(new, out.logits[:, -1, :])

        keep = [row for row, seq in enumerate(new) if not seq.finished]
        if not keep:
            return
        if len(keep) < len(new):
            index = torch.tensor(keep, device=dev)
            kv_cache.select_rows(cache, index)
            mask = mask.index_select(0, index)
        cache, mask = kv_cache.trim(cache, mask)
        joined = [new[row] for row in keep]
        if self._cache is None or not self._running:
            self._cache, self._mask, self._running = cache, mask, joined
        else:
            self._cache, self._mask = kv_cache.merge(self._cache, self._mask, cache, mask)
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

        from services.generation.engines import kv_cache

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
        kv_cache.select_rows(self._cache, index)
        self._mask = self._mask.index_select(0, index)
        self._cache, self._mask = kv_cache.trim(self._cache, self._mask)
        self._running = [self._running[row] for row in keep]

    def _fail_all_running(self, exc: Exception) -> None:
        for seq in self._running:
            self._fail(seq, exc)
        self._running, self._cache, self._mask = [], None, None

    def _fail(self, seq: Seq, exc: Exception) -> None:
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

    # ------------------------------------------------------------- per row

    def _init_seq(self, seq: Seq) -> None:
        opts = seq.options
        seq.greedy = sampling.is_greedy(opts)
        if not seq.greedy:
            seq.generator = sampling.row_generator(opts, self._device)
        if seq.grammar is not None:
            seq.matcher = sampling.xgr.GrammarMatcher(seq.grammar)
        if opts.repetition_penalty != 1.0:
            seq.prompt_set = set(seq.prompt)
        seq.detok = IncrementalDetokenizer(self._tokenizer, seq.prompt)

    def _sample_and_emit(self, seqs: list[Seq], logits: Any) -> None:
        """Sample one token per row, then update and notify each request."""
        try:
            tokens, logprob_rows = sampling.sample(seqs, logits, self._bitmask, self._token_str)
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

    def _token_str(self, token_id: int) -> str:
        text = self._token_str_cache.get(token_id)
        if text is None:
            decoded = self._tokenizer.decode([token_id], skip_special_tokens=False, clean_up_tokenization_spaces=False)
            text = str(decoded)
            if len(self._token_str_cache) < 200_000:
                self._token_str_cache[token_id] = text
        return text

    def _advance(self, seq: Seq, token: int, logprob: TokenLogprob | None) -> None:
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
            hit = find_stop(seq.text, opts.stop, seq.sent)
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
        held = 0 if finish is not None else held_back(seq.text, opts.stop, seq.sent)
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

    def _final_abort_chunk(self, seq: Seq) -> GenerationChunk:
        return GenerationChunk(
            text="",
            token_ids=[],
            finish_reason="abort",
            prompt_tokens=len(seq.prompt),
            completion_tokens=len(seq.output),
        )

    def _emit(self, seq: Seq, item: GenerationChunk | BaseException) -> None:
        try:
            seq.loop.call_soon_threadsafe(seq.queue.put_nowait, item)
        except RuntimeError:  # the consumer's loop is gone: nobody is listening any more
            if not seq.finished:
                seq.abort_requested = True
