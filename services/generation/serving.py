"""The serving layer: OpenAI requests in, a response or an async iterator of typed chunks out.

`chat_chunks` gives a chat's typed chunks whatever `stream` says (the Responses API runs on it);
`score` gives prompt logprobs (perplexity).

Engine-agnostic: it renders the chat template, validates lengths, fans out `n`,
parses tool calls and keeps the metrics. Nothing here is SSE: the router encodes the
chunks for HTTP, and in-process callers (the RAG generator) use the objects as they are.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field, replace
from typing import Any, TypeVar

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily
from prometheus_client.registry import Collector

from services.common.errors import InvalidRequest, ModelNotFound, Overloaded
from services.common.http import peeked
from services.common.metrics import LATENCY_BUCKETS

from . import tools as toolfmt
from .engines.base import Engine, GenerationChunk, SamplingOptions, TokenLogprob, check_context_length
from .protocol import (
    INT64_MIN,
    ChatChoice,
    ChatChunkChoice,
    ChatCompletionChunk,
    ChatCompletionRequest,
    ChatCompletionResponse,
    ChatDelta,
    ChoiceLogprobs,
    CompletionChoice,
    CompletionLogprobs,
    CompletionRequest,
    CompletionResponse,
    DeltaToolCall,
    ModelCard,
    ModelList,
    PromptLogprob,
    PromptLogprobs,
    ResponseMessage,
    TokenLogprobOut,
    TopLogprob,
    Usage,
)
from .reasoning import ReasoningParser, ReasoningSplitter, split_reasoning

T = TypeVar("T")
# Prompts longer than this many characters are rendered and tokenized on a worker thread, not the event loop.
_INLINE_PREPARE_CHARS = 20_000


async def _sized(chars: int, prepare: Callable[[], T]) -> T:
    """Rendering and tokenizing a long prompt takes seconds (20 s for 5 MB without whitespace): on a worker
    thread then; a short one inline, not queued behind ingestion work on the shared worker threads."""
    return prepare() if chars <= _INLINE_PREPARE_CHARS else await asyncio.to_thread(prepare)


class GenerationMetrics:
    def __init__(self, registry: CollectorRegistry, engine: Engine):
        self.requests = Counter(
            "inferag_generation_requests_total", "Generation requests by endpoint and outcome.",
            ["endpoint", "outcome"], registry=registry,
        )  # fmt: skip
        self.ttft = Histogram(
            "inferag_generation_time_to_first_token_seconds", "Time from request to the first generated token.",
            buckets=LATENCY_BUCKETS, registry=registry,
        )  # fmt: skip
        self.e2e = Histogram(
            "inferag_generation_request_seconds", "Time from request to the last token.",
            buckets=LATENCY_BUCKETS, registry=registry,
        )  # fmt: skip
        self.prompt_tokens = Counter("inferag_generation_prompt_tokens_total", "Prompt tokens.", registry=registry)
        self.generated_tokens = Counter("inferag_generation_tokens_total", "Tokens generated.", registry=registry)
        Gauge("inferag_generation_requests_running", "Requests being decoded by the engine.", registry=registry
              ).set_function(lambda: engine.stats().running)  # fmt: skip
        Gauge("inferag_generation_requests_waiting", "Requests queued in the engine.", registry=registry
              ).set_function(lambda: engine.stats().waiting)  # fmt: skip
        registry.register(_BatchCollector(engine))


class _BatchCollector(Collector):
    """Decode steps by batch size, as the engine counts them (shows that requests share batches)."""

    def __init__(self, engine: Engine):
        self.engine = engine

    def collect(self) -> Iterator[CounterMetricFamily]:
        family = CounterMetricFamily(
            "inferag_generation_decode_steps", "Engine decode steps by batch size.", labels=["batch_size"]
        )
        for size, steps in sorted(self.engine.stats().batch_sizes.items()):
            family.add_metric([str(size)], steps)
        yield family


@dataclass
class _Prepared:
    request_id: str
    prompt_ids: list[int]
    options: list[SamplingOptions]  # one per choice
    tools: list[Any] = field(default_factory=list)
    forced_tool: bool = False
    # A prompt per choice instead of `prompt_ids` for all (scoring several texts at once).
    prompts: list[list[int]] | None = None

    def prompt_of(self, choice: int) -> list[int]:
        return self.prompts[choice] if self.prompts is not None else self.prompt_ids


@dataclass
class _ChoiceState:
    text: str = ""
    token_ids: int = 0
    logprobs: list[TokenLogprob] = field(default_factory=list)
    finish_reason: str | None = None
    prompt_tokens: int = 0
    prompt_logprobs: list[TokenLogprob | None] | None = None
    # streaming tool-call detection
    carry: str = ""
    tool_buffer: str | None = None
    reasoner: ReasoningSplitter | None = None


class GenerationService:
    def __init__(
        self,
        engine: Engine,
        tokenizer: Any,
        registry: CollectorRegistry,
        *,
        served_names: list[str] | None = None,
        max_inflight: int = 256,
        default_max_tokens: int | None = None,
        model_details: dict[str, Any] | None = None,
        reasoning_parser: ReasoningParser | None = None,
    ):
        self.engine = engine
        self.tokenizer = tokenizer
        self.names = [engine.info.id, *(served_names or [])]
        self.max_inflight = max_inflight
        self.default_max_tokens = default_max_tokens
        self.model_details = model_details or {}
        self.reasoning_parser = reasoning_parser
        self.metrics = GenerationMetrics(registry, engine)
        self.inflight = 0
        eos = getattr(tokenizer, "eos_token_id", None)
        self._eos_ids = (eos,) if isinstance(eos, int) else ()

    # ------------------------------------------------------------- models

    def models(self) -> ModelList:
        info = self.engine.info
        return ModelList(
            data=[
                ModelCard(
                    id=name,
                    root=info.root,
                    max_model_len=info.max_model_len,
                    engine=info.engine,
                    details={**info.extra, **self.model_details} or None,
                )  # fmt: skip
                for name in self.names
            ]
        )

    def _check_model(self, model: str) -> None:
        if model not in self.names:
            raise ModelNotFound(model, self.names)

    def resolve_model(self, model: str | None) -> str:
        """The served name `model` asks for (None: the default one); ModelNotFound for others."""
        if model is None:
            return self.names[0]
        self._check_model(model)
        return model

    # ------------------------------------------------------------- chat

    def render_chat(
        self, req: ChatCompletionRequest, *, add_generation_prompt: bool = True, continue_final_message: bool = False
    ) -> tuple[list[int], list[Any], bool]:
        """Chat template → prompt token ids; also which tools are active and whether one is forced."""
        use_tools = bool(req.tools) and req.tool_choice != "none"
        tools = list(req.tools or []) if use_tools else []
        messages: list[dict[str, Any]] = []
        for m in req.messages:
            role = "system" if m.role == "developer" else m.role
            content = toolfmt.render_tool_calls(m) if m.tool_calls else m.text()
            messages.append({"role": role, "content": content})
        template = getattr(self.tokenizer, "chat_template", None) or ""
        kwargs: dict[str, Any] = {}
        if tools:
            if "tools" in template:
                kwargs["tools"] = [t.model_dump(exclude_none=True) for t in tools]
            else:
                prompt = toolfmt.tools_system_prompt(tools)
                if messages[0]["role"] == "system":
                    messages[0] = {"role": "system", "content": f"{messages[0]['content']}\n\n{prompt}"}
                else:
                    messages.insert(0, {"role": "system", "content": prompt})
        if continue_final_message:  # the last message stays open: no new turn after it
            kwargs["continue_final_message"] = True
            add_generation_prompt = False
        try:
            ids = self.tokenizer.apply_chat_template(
                messages, add_generation_prompt=add_generation_prompt, tokenize=True, return_dict=False, **kwargs
            )
        except Exception as exc:  # jinja errors: roles the template refuses, etc.
            raise InvalidRequest(
                f"messages could not be rendered by the chat template: {exc}", param="messages"
            ) from exc
        if isinstance(ids, dict) or hasattr(ids, "input_ids"):
            ids = ids["input_ids"]
        forced = use_tools and (req.tool_choice == "required" or not isinstance(req.tool_choice, str | None))
        return list(ids), tools, forced

    def _options(
        self,
        req: ChatCompletionRequest | CompletionRequest,
        prompt_len: int,
        max_tokens: int | None,
        logprobs: int | None,
        json_schema: dict[str, Any] | None,
    ) -> list[SamplingOptions]:
        limit = self.engine.info.max_model_len
        param = "messages" if isinstance(req, ChatCompletionRequest) else "prompt"
        check_context_length(prompt_len, max_tokens, limit, param=param)
        if max_tokens is None:
            max_tokens = limit - prompt_len
            if self.default_max_tokens:
                max_tokens = min(max_tokens, self.default_max_tokens)
        if json_schema is not None and not self.engine.supports_json_schema:
            raise InvalidRequest(
                f"The {self.engine.info.engine} engine does not support structured output.", param="response_format"
            )
        top_k = req.top_k if req.top_k and req.top_k > 0 else 0
        base = SamplingOptions(
            max_tokens=max_tokens,
            temperature=1.0 if req.temperature is None else req.temperature,
            top_p=1.0 if req.top_p is None else req.top_p,
            top_k=top_k,
            seed=req.seed,
            presence_penalty=req.presence_penalty,
            frequency_penalty=req.frequency_penalty,
            repetition_penalty=req.repetition_penalty or 1.0,
            stop=tuple(req.stop_list()),
            stop_token_ids=() if req.ignore_eos else self._eos_ids,
            logprobs=logprobs,
            json_schema=json_schema,
            ignore_eos=req.ignore_eos,
            prompt_logprobs=req.prompt_logprobs,
        )
        if req.n == 1:
            return [base]
        return [replace(base, seed=choice_seed(req.seed, i)) for i in range(req.n)]

    async def _prepare_chat(self, req: ChatCompletionRequest) -> _Prepared:
        return await _sized(sum(len(m.text()) for m in req.messages), lambda: self.prepare_chat(req))

    def prepare_chat(self, req: ChatCompletionRequest) -> _Prepared:
        self._check_model(req.model)
        ids, tools, forced = self.render_chat(
            req, add_generation_prompt=req.add_generation_prompt, continue_final_message=req.continue_final_message
        )
        schema: dict[str, Any] | None = None
        fmt = req.response_format
        if forced:
            schema = toolfmt.forced_call_schema(tools, req.tool_choice)  # type: ignore[arg-type]
        elif fmt is not None and fmt.type == "json_object":
            schema = {"type": "object"}
        elif fmt is not None and fmt.type == "json_schema" and fmt.json_schema is not None:  # "text" ignores it
            schema = fmt.json_schema.schema_ or {"type": "object"}
        logprobs = (req.top_logprobs or 0) if req.logprobs else None
        options = self._options(req, len(ids), req.completion_limit(), logprobs, schema)
        return _Prepared(f"chatcmpl-{uuid.uuid4().hex}", ids, options, tools, forced)

    async def chat(self, req: ChatCompletionRequest) -> ChatCompletionResponse | AsyncIterator[ChatCompletionChunk]:
        """The response, or with `stream` its chunks (the usage chunk last when asked); admission and
        request errors raise here, before the first chunk."""
        if req.stream:
            return await self.chat_chunks(req)
        prep = await self._prepare_chat(req)
        states = await self._run_all(prep, "chat")
        choices = []
        for i, st in enumerate(states):
            reasoning, text = None, st.text
            if self.reasoning_parser:
                reasoning, text = split_reasoning(st.text, self.reasoning_parser)
            content: str | None = text
            calls = None
            finish = st.finish_reason
            if prep.tools:
                content, parsed = toolfmt.parse_tool_calls(text, forced=prep.forced_tool)
                if parsed:
                    calls, finish = parsed, "tool_calls"
            choices.append(
                ChatChoice(
                    index=i,
                    message=ResponseMessage(
                        content=content, reasoning=reasoning, reasoning_content=reasoning, tool_calls=calls
                    ),
                    logprobs=ChoiceLogprobs(content=_chat_logprobs(st.logprobs))
                    if prep.options[i].logprobs is not None
                    else None,
                    finish_reason=finish,
                )
            )
        return ChatCompletionResponse(
            id=prep.request_id, model=req.model, choices=choices, usage=_usage(states),
            prompt_logprobs=_prompt_logprobs_out(states),
        )  # fmt: skip

    async def chat_chunks(self, req: ChatCompletionRequest) -> AsyncGenerator[ChatCompletionChunk, None]:
        """A streamed chat as typed chunks, whatever `req.stream` says (the Responses API's input)."""
        prep = await self._prepare_chat(req)
        return await peeked(self._chat_stream(req, prep))

    async def _chat_stream(
        self, req: ChatCompletionRequest, prep: _Prepared
    ) -> AsyncGenerator[ChatCompletionChunk, None]:
        created = int(time.time())

        def chunk(index: int, delta: ChatDelta, finish: str | None = None, logprobs: Any = None) -> ChatCompletionChunk:
            return ChatCompletionChunk(
                id=prep.request_id,
                created=created,
                model=req.model,
                choices=[ChatChunkChoice(index=index, delta=delta, finish_reason=finish, logprobs=logprobs)],
            )

        parser = self.reasoning_parser
        states = [_ChoiceState(reasoner=ReasoningSplitter(parser) if parser else None) for _ in prep.options]
        async with contextlib.aclosing(await self._started(prep, "chat")) as merged:
            for i in range(len(states)):
                yield chunk(i, ChatDelta(role="assistant", content=""))
            async for i, out in merged:
                st = states[i]
                _absorb(st, out)
                lp = ChoiceLogprobs(content=_chat_logprobs(out.logprobs)) if out.logprobs else None
                text = out.text
                if st.reasoner is not None:
                    reasoning, text = st.reasoner.feed(text)
                    if out.finish_reason is not None:
                        tail = st.reasoner.flush()
                        reasoning, text = reasoning + tail[0], text + tail[1]
                    if reasoning:
                        yield chunk(i, ChatDelta(reasoning=reasoning, reasoning_content=reasoning))
                if prep.tools:
                    text = _tool_filter(st, text, prep.forced_tool)
                if text or lp:
                    yield chunk(i, ChatDelta(content=text), logprobs=lp)
                if out.finish_reason is not None:
                    finish: str = out.finish_reason
                    if prep.tools:
                        rest, calls = _tool_finish(st, prep.forced_tool)
                        if rest:
                            yield chunk(i, ChatDelta(content=rest))
                        if calls:
                            finish = "tool_calls"
                            deltas = [
                                DeltaToolCall(index=k, id=c.id, type="function", function=c.function.model_dump())
                                for k, c in enumerate(calls)
                            ]
                            yield chunk(i, ChatDelta(tool_calls=deltas))
                    yield chunk(i, ChatDelta(), finish=finish)
        if _wants_usage(req):
            usage = _usage(states)
            yield ChatCompletionChunk(id=prep.request_id, created=created, model=req.model, choices=[], usage=usage)

    # ------------------------------------------------------------- completions

    def prepare_completion(self, req: CompletionRequest) -> _Prepared:
        self._check_model(req.model)
        if isinstance(req.prompt, str):
            ids = self.tokenizer.encode(req.prompt, add_special_tokens=False)
        elif isinstance(req.prompt[0], str):
            ids = self.tokenizer.encode(req.prompt[0], add_special_tokens=False)
        else:
            vocab = len(self.tokenizer)
            if any(not 0 <= int(t) < vocab for t in req.prompt):
                raise InvalidRequest(f"prompt token ids must be in [0, {vocab})", param="prompt")
            ids = [int(t) for t in req.prompt]
        if not ids:
            raise InvalidRequest("prompt must not be empty", param="prompt")
        options = self._options(req, len(ids), req.max_tokens or 16, req.logprobs, None)
        return _Prepared(f"cmpl-{uuid.uuid4().hex}", ids, options)

    async def completions(self, req: CompletionRequest) -> CompletionResponse | AsyncIterator[CompletionResponse]:
        prep: _Prepared = await _sized(len(str(req.prompt)), lambda: self.prepare_completion(req))
        echo = self.tokenizer.decode(prep.prompt_ids) if req.echo else ""
        if req.stream:
            return await self._prime(self._completion_stream(req, prep, echo))
        states = await self._run_all(prep, "completions")
        return CompletionResponse(
            id=prep.request_id,
            model=req.model,
            choices=[
                CompletionChoice(
                    index=i,
                    text=echo + st.text,
                    finish_reason=st.finish_reason,
                    logprobs=_completion_logprobs(st.logprobs, len(echo)) if req.logprobs is not None else None,
                )  # fmt: skip
                for i, st in enumerate(states)
            ],
            usage=_usage(states),
            prompt_logprobs=_prompt_logprobs_out(states),
        )

    async def _completion_stream(
        self, req: CompletionRequest, prep: _Prepared, echo: str
    ) -> AsyncGenerator[CompletionResponse, None]:
        created = int(time.time())
        states = [_ChoiceState() for _ in prep.options]
        sent_echo: set[int] = set()
        async with contextlib.aclosing(await self._started(prep, "completions")) as merged:
            async for i, out in merged:
                _absorb(states[i], out)
                text = out.text
                if echo and i not in sent_echo:
                    text = echo + text
                    sent_echo.add(i)
                choice = CompletionChoice(
                    index=i, text=text, finish_reason=out.finish_reason,
                    logprobs=_completion_logprobs(out.logprobs or [], 0) if req.logprobs is not None else None,
                )  # fmt: skip
                yield CompletionResponse(id=prep.request_id, created=created, model=req.model, choices=[choice])
        if _wants_usage(req):
            usage = _usage(states)
            yield CompletionResponse(id=prep.request_id, created=created, model=req.model, choices=[], usage=usage)

    # ------------------------------------------------------------- engine plumbing

    def _admit(self, n: int) -> None:
        if self.inflight + n > self.max_inflight:
            raise Overloaded(
                f"The server is at capacity ({self.max_inflight} sequences in flight); retry shortly.", retry_after=1
            )
        self.inflight += n

    async def _merged(self, prep: _Prepared, endpoint: str) -> AsyncGenerator[tuple[int, GenerationChunk], None]:
        """Run every choice's engine stream concurrently and interleave their chunks.

        Closing this iterator (client gone, error) cancels the engine streams,
        which aborts the requests in the engine.
        """
        n = len(prep.options)
        self._admit(n)
        start = time.perf_counter()
        first = True
        outcome = "error"
        queue: asyncio.Queue[tuple[int, GenerationChunk | BaseException | None]] = asyncio.Queue()

        async def pump(i: int) -> None:
            rid = prep.request_id if n == 1 else f"{prep.request_id}-{i}"
            try:
                async for out in self.engine.generate(rid, prep.prompt_of(i), prep.options[i]):
                    queue.put_nowait((i, out))
                queue.put_nowait((i, None))
            except asyncio.CancelledError:
                raise
            except BaseException as exc:  # handed to the consumer, which re-raises it
                queue.put_nowait((i, exc))

        tasks = [asyncio.create_task(pump(i)) for i in range(n)]
        self.metrics.prompt_tokens.inc(sum(len(prep.prompt_of(i)) for i in range(n)))
        try:
            done = 0
            while done < n:
                i, item = await queue.get()
                if item is None:
                    done += 1
                    continue
                if isinstance(item, BaseException):
                    raise item
                if first and item.token_ids:
                    self.metrics.ttft.observe(time.perf_counter() - start)
                    first = False
                self.metrics.generated_tokens.inc(len(item.token_ids))
                yield i, item
            outcome = "ok"
        except (asyncio.CancelledError, GeneratorExit):
            outcome = "aborted"
            raise
        finally:
            for t in tasks:
                t.cancel()
            # Wait for the engine streams to unwind so their aborts reach the engine.
            with contextlib.suppress(BaseException):
                await asyncio.gather(*tasks, return_exceptions=True)
            self.inflight -= n
            self.metrics.e2e.observe(time.perf_counter() - start)
            self.metrics.requests.labels(endpoint, outcome).inc()

    async def score(self, prompts: list[list[int]], top_n: int, endpoint: str) -> list[list[TokenLogprob | None]]:
        """The prompt logprobs of each prompt (`top_n` alternatives per token), all handed to the engine at
        once so it prefills them together; no text is returned (one token is sampled and dropped)."""
        for i, ids in enumerate(prompts):
            check_context_length(len(ids), None, self.engine.info.max_model_len, param="input", what=f"Input {i}")
        options = SamplingOptions(max_tokens=1, temperature=0.0, prompt_logprobs=top_n)
        prep = _Prepared(f"score-{uuid.uuid4().hex}", [], [options] * len(prompts), prompts=prompts)
        found: list[list[TokenLogprob | None]] = [[] for _ in prompts]
        async for i, out in self._merged(prep, endpoint):
            if out.prompt_logprobs is not None:
                found[i] = out.prompt_logprobs
        return found

    async def _started(self, prep: _Prepared, endpoint: str) -> AsyncGenerator[tuple[int, GenerationChunk], None]:
        """`_merged`, already admitted and past its first chunk.

        Streams call this before their first event, so a full server (429) or an engine
        refusal still becomes an HTTP error instead of an error event.
        """
        return await peeked(self._merged(prep, endpoint))

    async def _run_all(self, prep: _Prepared, endpoint: str) -> list[_ChoiceState]:
        states = [_ChoiceState() for _ in prep.options]
        async for i, out in self._merged(prep, endpoint):
            _absorb(states[i], out)
        return states

    async def _prime(self, chunks: AsyncGenerator[T, None]) -> AsyncIterator[T]:
        """Pull a stream's first chunk now, so admission errors raise before a response starts;
        a later failure raises from the iterator (the router turns it into an error event)."""
        return await peeked(chunks)


# ------------------------------------------------------------- helpers


def choice_seed(seed: int | None, index: int) -> int | None:
    """`seed + index` for choice `index` of `n`, wrapped to stay inside int64 (vLLM's bound)."""
    if seed is None:
        return None
    return (seed + index - INT64_MIN) % 2**64 + INT64_MIN


def _absorb(st: _ChoiceState, out: GenerationChunk) -> None:
    if out.prompt_logprobs is not None:
        st.prompt_logprobs = out.prompt_logprobs
    st.text += out.text
    st.token_ids = out.completion_tokens
    st.prompt_tokens = out.prompt_tokens
    if out.logprobs:
        st.logprobs.extend(out.logprobs)
    if out.finish_reason is not None:
        st.finish_reason = out.finish_reason


def _wants_usage(req: ChatCompletionRequest | CompletionRequest) -> bool:
    """A stream ends with a chunk that has no choices, only the usage, when the request asks."""
    return bool(req.stream_options and req.stream_options.include_usage)


def _usage(states: list[_ChoiceState]) -> Usage:
    prompt = states[0].prompt_tokens if states else 0
    completion = sum(s.token_ids for s in states)
    return Usage(prompt_tokens=prompt, completion_tokens=completion, total_tokens=prompt + completion)


def _prompt_logprobs_out(states: list[_ChoiceState]) -> PromptLogprobs | None:
    """vLLM's `prompt_logprobs`: per prompt token {token id: logprob, rank, text} of its own token and the
    alternatives (the prompt is shared by every choice)."""
    items = states[0].prompt_logprobs if states else None
    if items is None:
        return None
    out: PromptLogprobs = []
    for item in items:
        if item is None:
            out.append(None)
            continue
        entry = {str(tid): PromptLogprob(logprob=lp, rank=rank, decoded_token=tok)
                 for rank, (tid, tok, lp) in enumerate(item.top, start=1)}  # fmt: skip
        entry[str(item.token_id)] = PromptLogprob(logprob=item.logprob, rank=item.rank, decoded_token=item.token)
        out.append(entry)
    return out


def _chat_logprobs(items: list[TokenLogprob]) -> list[TokenLogprobOut]:
    return [
        TokenLogprobOut(
            token=t.token,
            logprob=t.logprob,
            bytes=list(t.token.encode()),
            top_logprobs=[TopLogprob(token=s, logprob=lp, bytes=list(s.encode())) for _, s, lp in t.top],
        )  # fmt: skip
        for t in items
    ]


def _completion_logprobs(items: list[TokenLogprob], offset: int) -> CompletionLogprobs:
    out = CompletionLogprobs()
    for t in items:
        out.tokens.append(t.token)
        out.token_logprobs.append(t.logprob)
        out.top_logprobs.append({s: lp for _, s, lp in t.top} or None)
        out.text_offset.append(offset)
        offset += len(t.token)
    return out


def _tool_filter(st: _ChoiceState, text: str, forced: bool) -> str:
    """Pass content through while holding back anything that may be a tool call."""
    if forced:
        st.tool_buffer = (st.tool_buffer or "") + text
        return ""
    if st.tool_buffer is not None:
        st.tool_buffer += text
        return ""
    pending = st.carry + text
    at = pending.find(toolfmt.OPEN)
    if at >= 0:
        st.tool_buffer, st.carry = pending[at:], ""
        return pending[:at]
    keep = toolfmt.holdback(pending)
    st.carry = pending[len(pending) - keep :]
    return pending[: len(pending) - keep]


def _tool_finish(st: _ChoiceState, forced: bool) -> tuple[str, list[Any]]:
    if st.tool_buffer is None:
        return st.carry, []
    content, calls = toolfmt.parse_tool_calls(st.tool_buffer, forced=forced)
    return (content or "") if not calls else "", calls
