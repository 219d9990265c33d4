"""vLLM as an in-process engine: a thin adapter over vLLM's v1 `AsyncLLM`.

The serving layer hands us prompt token ids; vLLM schedules, samples and
detokenizes. Each `generate()` call is one vLLM request with `n=1` and
`RequestOutputKind.DELTA` outputs, so every `RequestOutput` maps to one
`GenerationChunk` of new text and tokens.

vLLM is imported lazily (in `start()`), so importing this module is cheap and
works where vLLM is not installed.

On a host without CUDA this runs vLLM's CPU backend, which needs eager mode and
an explicit KV cache size (otherwise it tries to reserve `gpu_memory_utilization`
of *host* RAM); both are forced here.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
import time
from collections import Counter
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

from services.common.errors import EngineError, InvalidRequest, NotReady, Overloaded
from services.generation.engines.base import (
    EngineStats,
    FinishReason,
    GenerationChunk,
    ModelInfo,
    SamplingOptions,
    TokenLogprob,
    check_context_length,
)

if TYPE_CHECKING:
    from vllm.logprobs import Logprob
    from vllm.outputs import CompletionOutput
    from vllm.sampling_params import SamplingParams
    from vllm.v1.engine.async_llm import AsyncLLM

log = logging.getLogger(__name__)

GiB = 1 << 30
DEFAULT_CPU_KV_CACHE_BYTES = 1 * GiB

_FINISH_REASONS: dict[str, FinishReason] = {
    "stop": "stop",
    "length": "length",
    "abort": "abort",
    # vLLM's hallucination guard ended the sequence on purpose; to a client that is a stop.
    "repetition": "stop",
}


class _SchedulerView:
    """What a custom vLLM stat logger saw last: scheduler counts and batch sizes.

    Written from AsyncLLM's output-handler task and read by `stats()`, both on
    the event loop thread, so no locking is needed.
    """

    def __init__(self) -> None:
        self.running = 0
        self.waiting = 0
        self.kv_cache_usage = 0.0
        self.batch_sizes: Counter[int] = Counter()


def _stat_logger_factory(view: _SchedulerView) -> Any:
    """A per-engine `StatLoggerBase` factory that copies scheduler stats into `view`.

    Passing any stat logger to AsyncLLM turns on vLLM's per-step SchedulerStats
    (while `disable_log_stats=True` keeps its own periodic log lines off).
    """
    from vllm.v1.metrics.loggers import StatLoggerBase

    class _ViewStatLogger(StatLoggerBase):
        def __init__(self, vllm_config: Any, engine_index: int = 0) -> None:
            self.engine_index = engine_index

        def record(
            self,
            scheduler_stats: Any,
            iteration_stats: Any,
            mm_cache_stats: Any = None,
            engine_idx: int = 0,
        ) -> None:
            if scheduler_stats is not None:
                view.running = scheduler_stats.num_running_reqs
                view.waiting = scheduler_stats.num_waiting_reqs + scheduler_stats.num_skipped_waiting_reqs
                view.kv_cache_usage = scheduler_stats.kv_cache_usage
            # One IterationStats per engine step; without speculative decoding every
            # sequence that sampled this step produced exactly one token.
            if iteration_stats is not None and iteration_stats.num_generation_tokens > 0:
                view.batch_sizes[iteration_stats.num_generation_tokens] += 1

        def log_engine_initialized(self) -> None:
            pass

    return _ViewStatLogger


class VllmEngine:
    """`Engine` backed by vLLM's `AsyncLLM` running in this process (engine core in a child)."""

    supports_json_schema = True
    # How long the engine-core process gets to exit after SIGTERM before vLLM
    # kills it (vLLM's default is 5 s, which a busy 2-core host can overrun).
    shutdown_timeout_s = 15.0

    def __init__(
        self,
        model_path: str,
        *,
        model_id: str,
        max_model_len: int | None = None,
        kv_cache_bytes: int | None = None,
        dtype: str = "auto",
        max_num_seqs: int = 64,
        gpu_memory_utilization: float = 0.9,
        tensor_parallel_size: int = 1,
        quantization: str | None = None,
        enforce_eager: bool | None = None,
        extra_engine_args: dict[str, Any] | None = None,
    ) -> None:
        self.model_path = model_path
        self.model_id = model_id
        self._max_model_len = max_model_len
        self._kv_cache_bytes = kv_cache_bytes
        self._dtype = dtype
        self._max_num_seqs = max_num_seqs
        self._gpu_memory_utilization = gpu_memory_utilization
        self._tensor_parallel_size = tensor_parallel_size
        self._quantization = quantization
        self._enforce_eager = enforce_eager
        self._extra_engine_args = dict(extra_engine_args or {})

        # Until start() knows better, the configured limit (or 0 = unknown).
        self.info = ModelInfo(id=model_id, max_model_len=max_model_len or 0, engine="vllm", root=model_path)
        self._llm: AsyncLLM | None = None
        self._view = _SchedulerView()
        self._inflight: dict[str, int] = {}  # request id -> number of live generate() calls
        self.startup_seconds: float | None = None

    # -- lifecycle ---------------------------------------------------------

    def engine_args(self) -> dict[str, Any]:
        """The keyword arguments for vLLM's `AsyncEngineArgs` (exposed for logs and tests)."""
        import torch

        on_cpu = not torch.cuda.is_available()
        enforce_eager = True if on_cpu else bool(self._enforce_eager)
        kv_cache_bytes = self._kv_cache_bytes
        if on_cpu and kv_cache_bytes is None and not os.environ.get("VLLM_CPU_KVCACHE_SPACE"):
            kv_cache_bytes = DEFAULT_CPU_KV_CACHE_BYTES
        args: dict[str, Any] = {
            "model": self.model_path,
            "tokenizer": self.model_path,
            "served_model_name": self.model_id,
            "dtype": self._dtype,
            "max_model_len": self._max_model_len,
            "max_num_seqs": self._max_num_seqs,
            "gpu_memory_utilization": self._gpu_memory_utilization,
            "kv_cache_memory_bytes": kv_cache_bytes,
            "tensor_parallel_size": self._tensor_parallel_size,
            "quantization": self._quantization,
            "enforce_eager": enforce_eager,
            # Our stat logger is the only one we want; this also keeps vLLM's
            # default logging/Prometheus loggers from being created twice.
            "disable_log_stats": True,
            "enable_log_requests": False,
        }
        args.update(self._extra_engine_args)
        return args

    async def start(self) -> None:
        if self._llm is not None:
            return
        kwargs = self.engine_args()
        log.info("starting vLLM engine for %s from %s: %s", self.model_id, self.model_path, kwargs)
        t0 = time.perf_counter()
        try:
            # Off the event loop: starting the engine core (spawn processes, load
            # weights, allocate the KV cache) blocks for seconds to minutes.
            # AsyncLLM binds to the loop lazily (its output handler starts with
            # the first request), so building it in a worker thread is safe.
            await asyncio.to_thread(self._create_llm, kwargs)
        except Exception as exc:
            raise EngineError(f"vLLM failed to start: {type(exc).__name__}: {exc}") from exc
        self.startup_seconds = time.perf_counter() - t0
        self.info = self._describe()
        log.info("vLLM engine ready in %.1fs: %s", self.startup_seconds, self.info)

    def _create_llm(self, kwargs: dict[str, Any]) -> None:
        # Stores the AsyncLLM on self instead of returning it: vLLM's first imports
        # keep exception tracebacks whose frame chains (this frame, the thread
        # pool's) would otherwise hold the engine alive after stop().
        from vllm.engine.arg_utils import AsyncEngineArgs
        from vllm.usage.usage_lib import UsageContext
        from vllm.v1.engine.async_llm import AsyncLLM

        self._llm = AsyncLLM.from_engine_args(
            AsyncEngineArgs(**kwargs),
            usage_context=UsageContext.OPENAI_API_SERVER,
            stat_loggers=[_stat_logger_factory(self._view)],
        )

    def _describe(self) -> ModelInfo:
        import vllm

        assert self._llm is not None
        config = self._llm.vllm_config
        model_config = config.model_config
        return ModelInfo(
            id=self.model_id,
            # As the engine core reported it when ready (it may shrink to fit the KV cache).
            max_model_len=int(model_config.max_model_len),
            engine="vllm",
            root=self.model_path,
            extra={
                "vllm_version": vllm.__version__,
                "dtype": str(model_config.dtype).removeprefix("torch."),
                "quantization": model_config.quantization,
                "enforce_eager": model_config.enforce_eager,
                "kv_cache_bytes": config.cache_config.kv_cache_memory_bytes,
                "block_size": config.cache_config.block_size,
                "max_num_seqs": config.scheduler_config.max_num_seqs,
                "startup_seconds": round(self.startup_seconds or 0.0, 2),
            },
        )

    async def stop(self) -> None:
        llm, self._llm = self._llm, None
        if llm is None:
            return
        # Finish every open stream with an "abort" chunk first; once the output
        # handler is gone nothing would ever wake them.
        if self._inflight:
            try:
                await llm.abort(list(self._inflight))
            except Exception:
                log.exception("aborting in-flight requests before shutdown failed")
            await asyncio.sleep(0)
        # Stop consuming engine outputs first: otherwise the output handler sees
        # the engine core go away and logs an "engine dead" traceback.
        handler = llm.output_handler
        if handler is not None and not handler.done():
            handler.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await handler
        # Terminates the engine-core process (and its workers) and waits for them;
        # off the loop, as that takes a few seconds.
        await asyncio.to_thread(llm.shutdown, self.shutdown_timeout_s)
        del llm
        # AsyncLLM sits in reference cycles; collect it now, while the interpreter
        # is whole, rather than in its __del__ during interpreter teardown.
        gc.collect()
        log.info("vLLM engine stopped")

    # -- requests ----------------------------------------------------------

    def _require_llm(self) -> AsyncLLM:
        if self._llm is None:
            raise NotReady("The vLLM engine is not running.")
        if self._llm.errored:
            raise EngineError("The vLLM engine is not running anymore (engine core died).")
        return self._llm

    def sampling_params(self, options: SamplingOptions) -> SamplingParams:
        """Our SamplingOptions as vLLM SamplingParams (one sequence, delta outputs)."""
        from vllm.exceptions import VLLMValidationError
        from vllm.sampling_params import RequestOutputKind, SamplingParams, StructuredOutputsParams

        try:
            structured = StructuredOutputsParams(json=options.json_schema) if options.json_schema is not None else None
            return SamplingParams(
                n=1,
                max_tokens=options.max_tokens,
                temperature=options.temperature,
                top_p=options.top_p,
                top_k=options.top_k if options.top_k > 0 else 0,  # 0 (or -1) = off in vLLM
                seed=options.seed,
                presence_penalty=options.presence_penalty,
                frequency_penalty=options.frequency_penalty,
                repetition_penalty=options.repetition_penalty,
                stop=list(options.stop) or None,
                stop_token_ids=list(options.stop_token_ids) or None,
                ignore_eos=options.ignore_eos,
                logprobs=options.logprobs,
                prompt_logprobs=options.prompt_logprobs,
                structured_outputs=structured,
                detokenize=True,
                skip_special_tokens=True,
                output_kind=RequestOutputKind.DELTA,
            )
        except (VLLMValidationError, ValueError, TypeError) as exc:
            raise InvalidRequest(_message(exc), param=getattr(exc, "parameter", None)) from exc

    async def generate(
        self, request_id: str, prompt_token_ids: list[int], options: SamplingOptions
    ) -> AsyncIterator[GenerationChunk]:
        from vllm.inputs import tokens_input

        llm = self._require_llm()
        n_prompt = len(prompt_token_ids)
        check_context_length(n_prompt, options.max_tokens, self.info.max_model_len)
        params = self.sampling_params(options)
        prompt = tokens_input(list(prompt_token_ids))
        prompt["arrival_time"] = time.time()

        outputs = llm.generate(prompt, params, request_id)
        self._inflight[request_id] = self._inflight.get(request_id, 0) + 1
        completion_tokens = 0
        want_prompt_logprobs = options.prompt_logprobs is not None
        try:
            async for out in outputs:
                completion = out.outputs[0]
                completion_tokens += len(completion.token_ids)
                chunk = self._chunk(completion, options, n_prompt, completion_tokens)
                if chunk is not None and want_prompt_logprobs and out.prompt_logprobs:
                    # vLLM sends them with the first output (DELTA outputs carry them once).
                    chunk.prompt_logprobs = convert_prompt_logprobs(
                        prompt_token_ids, out.prompt_logprobs, options.prompt_logprobs or 0
                    )
                    want_prompt_logprobs = False
                if chunk is not None:
                    yield chunk
        except Exception as exc:  # GeneratorExit/CancelledError pass straight to `finally`
            mapped = _map_error(exc)
            if mapped is exc:
                raise
            raise mapped from exc
        finally:
            count = self._inflight.get(request_id, 0) - 1
            if count > 0:
                self._inflight[request_id] = count
            else:
                self._inflight.pop(request_id, None)
            # If the consumer went away early (aclose()/GeneratorExit, or the task
            # was cancelled), vLLM's own generator aborts the request in the engine
            # when it is closed; close it now instead of at garbage collection.
            # After a normal finish this is a no-op.
            try:
                await outputs.aclose()
            except Exception:
                log.exception("closing the vLLM stream of %s failed", request_id)

    def _chunk(
        self, completion: CompletionOutput, options: SamplingOptions, n_prompt: int, completion_tokens: int
    ) -> GenerationChunk | None:
        reason = completion.finish_reason
        finish: FinishReason | None = None
        if reason is not None:
            if reason == "error":
                raise EngineError("vLLM failed while generating this request.")
            finish = _FINISH_REASONS.get(reason, "stop")
        token_ids = list(completion.token_ids)
        if not token_ids and not completion.text and finish is None:
            return None
        logprobs: list[TokenLogprob] | None = None
        if options.logprobs is not None:
            logprobs = _convert_logprobs(token_ids, completion.logprobs, options.logprobs)
        return GenerationChunk(
            text=completion.text,
            token_ids=token_ids,
            logprobs=logprobs,
            finish_reason=finish,
            stop_reason=completion.stop_reason if finish == "stop" else None,
            prompt_tokens=n_prompt,
            completion_tokens=completion_tokens,
        )

    async def abort(self, request_id: str) -> None:
        """Abort by our request id; its stream then ends with an "abort" chunk."""
        llm = self._llm
        if llm is None:
            return
        await llm.abort(request_id)

    def stats(self) -> EngineStats:
        llm = self._llm
        if llm is None:
            return EngineStats(running=0, waiting=0, batch_sizes={})
        # Requests the frontend still tracks (includes ones the scheduler has not seen yet).
        unfinished = llm.get_num_unfinished_requests()
        running = min(self._view.running, unfinished)
        return EngineStats(running=running, waiting=unfinished - running, batch_sizes=dict(self._view.batch_sizes))


def _convert_logprobs(token_ids: list[int], positions: Any, top_n: int) -> list[TokenLogprob]:
    """vLLM's per-position {token_id: Logprob} dicts as our TokenLogprob list.

    Each dict holds the top `top_n` tokens (rank 1..top_n) plus the sampled token
    (with its true rank) when that one is outside the top.
    """
    result: list[TokenLogprob] = []
    if positions is None:
        return result
    for token_id, position in zip(token_ids, positions, strict=False):
        entries: dict[int, Logprob] = dict(position or {})
        sampled = entries.get(token_id)
        # Best first; the sampled token only counts as an alternative if it ranks in the top N.
        ranked = sorted(entries.items(), key=lambda kv: -kv[1].logprob)
        top_items = [
            (tid, lp) for tid, lp in ranked if not (tid == token_id and lp.rank is not None and lp.rank > top_n)
        ][:top_n]
        result.append(
            TokenLogprob(
                token_id=token_id,
                token=(sampled.decoded_token or "") if sampled is not None else "",
                logprob=float(sampled.logprob) if sampled is not None else float("-inf"),
                top=[(tid, lp.decoded_token or "", float(lp.logprob)) for tid, lp in top_items],
            )
        )
    return result


def convert_prompt_logprobs(prompt: list[int], positions: Any, top_n: int) -> list[TokenLogprob | None]:
    """vLLM's prompt logprobs (per position {token id: Logprob}, None first) as our TokenLogprob list."""
    result: list[TokenLogprob | None] = []
    for token_id, position in zip(prompt, positions, strict=False):
        if not position:
            result.append(None)
            continue
        entries: dict[int, Logprob] = dict(position)
        own = entries.get(token_id)
        ranked = sorted(
            ((tid, lp) for tid, lp in entries.items() if lp.rank is not None and lp.rank <= top_n),
            key=lambda kv: kv[1].rank or 0,
        )
        result.append(
            TokenLogprob(
                token_id=token_id,
                token=(own.decoded_token or "") if own is not None else "",
                logprob=max(float(own.logprob), -9999.0) if own is not None else -9999.0,
                rank=own.rank if own is not None else None,
                top=[(tid, lp.decoded_token or "", max(float(lp.logprob), -9999.0)) for tid, lp in ranked],
            )
        )
    return result


def _message(exc: BaseException) -> str:
    # VLLMValidationError's str() appends "(parameter=..., value=...)"; clients get the sentence.
    return str(exc.args[0]) if exc.args else str(exc)


def _map_error(exc: Exception) -> Exception:
    """Any exception out of vLLM's generate() as one of our domain errors."""
    from vllm.exceptions import GracefulHTTPError, VLLMClientError
    from vllm.v1.engine.exceptions import EngineDeadError, EngineGenerateError

    if isinstance(exc, InvalidRequest | EngineError | NotReady | Overloaded):
        return exc
    if isinstance(exc, EngineDeadError):
        return EngineError("The vLLM engine core died; see the server log for the cause.")
    if isinstance(exc, VLLMClientError):
        return InvalidRequest(_message(exc), param=getattr(exc, "parameter", None))
    if isinstance(exc, GracefulHTTPError):
        if int(exc.http_status) in (429, 503):
            return Overloaded(exc.message)
        return EngineError(exc.message)
    if isinstance(exc, EngineGenerateError):
        cause = exc.__cause__
        # Input validation that vLLM raises as plain ValueError/TypeError (e.g. a
        # JSON schema the grammar backend rejects) surfaces wrapped in EngineGenerateError.
        if isinstance(cause, ValueError | TypeError):
            return InvalidRequest(str(cause))
        return EngineError(f"vLLM failed to generate: {type(cause).__name__ if cause else 'error'}: {cause}")
    if isinstance(exc, ValueError):
        return InvalidRequest(str(exc))
    return EngineError(f"vLLM error: {type(exc).__name__}: {exc}")
