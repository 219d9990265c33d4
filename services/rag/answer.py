"""`/rag/query`: retrieve → rerank → a selected context → an answer with quoted citations.

`Answerer.prepare` is the one grounding step (model, retrieval query, numbered sources, the exact
messages); the whole answer (`answer`) and the streamed one (`stream`, typed `QueryEvent`s) both
start from it. Every `[n]` that reaches the client names a source that was given: markers naming
no source are removed as the text streams, so the citations and the answer always agree. Each cited
source carries the sentence that supports it (`quote`). With no source above the score threshold
the answer says it does not know, without asking the model.
"""

from __future__ import annotations

import time
from collections.abc import AsyncGenerator, Callable
from dataclasses import dataclass

from inferag_protocol.rag import (
    Citation,
    CitationsEvent,
    DeltaEvent,
    DoneEvent,
    ErrorEvent,
    Hit,
    QueryEvent,
    QueryRequest,
    QueryResponse,
    RetrievalEvent,
    Usage,
)
from services.common.errors import error_for
from services.common.http import peeked
from services.generation.protocol import ChatCompletionChunk, ChatCompletionRequest

from .citations import CitationFilter, Quotable, choose_quotes, citation, cited_numbers, drop_invalid_markers
from .context import Embedder, SourceContext, select_context
from .generator import Generator
from .metrics import RagMetrics, Timings
from .prompt import NO_ANSWER, answer_messages
from .retrieval import Searcher, best_sources
from .settings import RagSettings

REWRITE_PROMPT = (
    "Rewrite the user's last question as one standalone search query that can be understood without the "
    "conversation. Reply with the query only."
)
EXPAND_PROMPT = "Write {n} different rephrasings of this search query, one per line, with no numbering:\n{query}"


@dataclass
class Prepared:
    """Everything an answer starts from: what the model is asked, exactly, and from which sources."""

    model: str
    query: str  # the retrieval query (rewritten from the conversation when asked)
    contexts: list[SourceContext]  # the numbered sources, as the prompt shows them
    messages: list[dict[str, str]]  # the exact chat messages sent to the generation service
    timings: Timings

    def sources(self) -> list[Citation]:
        return [citation(c.number, c.hit) for c in self.contexts]


class Answerer:
    def __init__(
        self,
        retriever: Searcher,
        generator: Generator,
        embedder: Embedder,
        count_tokens: Callable[[str], int],
        settings: RagSettings,
        metrics: RagMetrics,
    ):
        self.retriever, self.generator, self.embedder = retriever, generator, embedder
        self.count_tokens, self.settings, self.metrics = count_tokens, settings, metrics
        self._default_model: str | None = settings.generation_model

    async def model(self, requested: str | None) -> str:
        if requested:
            return requested
        if self._default_model is None:
            self._default_model = (await self.generator.models())[0]
        return self._default_model

    # ------------------------------------------------------------ stages

    async def _ask(self, model: str, prompt: str, max_tokens: int) -> str:
        request = ChatCompletionRequest.model_validate(
            {"model": model, "messages": [{"role": "user", "content": prompt}], "max_tokens": max_tokens,
             "temperature": 0}
        )  # fmt: skip
        result = await self.generator.chat(request)
        return (result.choices[0].message.content or "").strip()

    async def search_queries(self, req: QueryRequest, model: str) -> list[str]:
        """The query to retrieve with (rewritten from the conversation when asked) and its expansions."""
        query = req.question().strip()
        history = (req.messages or [])[:-1]
        if req.rewrite_query and history:
            convo = "\n".join(f"{m.role}: {m.content}" for m in req.messages or [])
            rewritten = await self._ask(model, f"{REWRITE_PROMPT}\n\n{convo}", 64)
            query = rewritten.splitlines()[0].strip().strip('"') if rewritten else query
        queries = [query]
        if req.expand_queries:
            prompt = EXPAND_PROMPT.format(n=req.expand_queries, query=query)
            text = await self._ask(model, prompt, 48 * req.expand_queries)
            extra = [line.strip(" -*\t") for line in text.splitlines() if line.strip(" -*\t")]
            queries += [q for q in dict.fromkeys(extra) if q != query][: req.expand_queries]
        return queries

    async def sources(self, req: QueryRequest, queries: list[str], timings: Timings) -> list[Hit]:
        """The request's sources from the retrieval stage (`min_score` the default threshold)."""
        threshold = req.score_threshold if req.score_threshold is not None else self.settings.min_score
        return await best_sources(
            self.retriever, req.targets(), queries, keep=req.rerank_top_n, top_k=req.top_k, mode=req.mode,
            fusion=req.fusion, filter=req.filter, rerank=req.rerank, score_threshold=threshold, timings=timings,
        )  # fmt: skip

    async def prepare(self, req: QueryRequest) -> Prepared:
        """The grounding step both ways of answering share: model, query, selected sources, messages."""
        timings = Timings(self.metrics)
        model = await self.model(req.model)
        queries = await self.search_queries(req, model)
        hits = await self.sources(req, queries, timings)
        with timings.stage("context"):
            contexts = await select_context(
                queries[0], hits, self.embedder, mode=req.context or self.settings.context_mode,
                budget_tokens=req.context_tokens or self.settings.context_tokens, count_tokens=self.count_tokens,
            )  # fmt: skip
        history = [{"role": m.role, "content": m.content} for m in (req.messages or [])[:-1]]
        return Prepared(model, queries[0], contexts, answer_messages(req.question(), contexts, history), timings)

    def request(self, req: QueryRequest, prep: Prepared, *, stream: bool) -> ChatCompletionRequest:
        """The generation request for `prep`: greedy and bounded unless the request says otherwise."""
        return ChatCompletionRequest.model_validate(
            {
                "model": prep.model,
                "messages": prep.messages,
                "max_tokens": req.max_tokens or self.settings.answer_max_tokens,
                "temperature": 0 if req.temperature is None else req.temperature,
                "top_p": req.top_p,
                "seed": req.seed,
                "stream": stream,
                "stream_options": {"include_usage": True} if stream else None,
            }
        )

    async def cited(self, text: str, prep: Prepared) -> list[Citation]:
        """The sources `text` cites, in order of first citation, each with its supporting quote."""
        numbers = [n for n in cited_numbers(text) if 1 <= n <= len(prep.contexts)]
        if not numbers:
            return []
        with prep.timings.stage("quote"):
            quotable = {c.number: Quotable(c.spans, c.vectors) for c in prep.contexts}
            quotes = await choose_quotes(text, quotable, self.embedder.embed)
        return [citation(n, prep.contexts[n - 1].hit, quotes.get(n)) for n in numbers]

    # ------------------------------------------------------------ the two ways to answer

    async def answer(self, req: QueryRequest) -> QueryResponse:
        prep = await self.prepare(req)
        timings = prep.timings
        usage, finish = Usage(), "stop"
        if prep.contexts:
            with timings.stage("generate"):
                result = await self.generator.chat(self.request(req, prep, stream=False))
            text = drop_invalid_markers(result.choices[0].message.content or "", len(prep.contexts))
            finish = result.choices[0].finish_reason or "stop"
            usage = Usage.model_validate(result.usage.model_dump())
            timings["ttft"] = timings["generate"]
        else:
            text = NO_ANSWER
        cited = await self.cited(text, prep)
        timings.since_start("total")
        return QueryResponse(
            model=prep.model, answer=text, citations=cited, sources=prep.sources(), query=prep.query, usage=usage,
            timings=dict(timings), finish_reason=finish,
        )  # fmt: skip

    async def stream(self, req: QueryRequest) -> AsyncGenerator[QueryEvent, None]:
        """Typed events: retrieval, delta…, citations, done. Failures before generation starts (a full
        generation service: 429) raise here, so they get an HTTP status; later ones end in an `error` event."""
        prep = await self.prepare(req)
        chunks: AsyncGenerator[ChatCompletionChunk, None] | None = None
        started = time.perf_counter()
        if prep.contexts:
            chunks = await peeked(self.generator.chat_stream(self.request(req, prep, stream=True)))
        return self._events(prep, chunks, started)

    async def _events(
        self, prep: Prepared, chunks: AsyncGenerator[ChatCompletionChunk, None] | None, started: float
    ) -> AsyncGenerator[QueryEvent, None]:
        timings = prep.timings
        try:
            yield RetrievalEvent(query=prep.query, sources=prep.sources())
            usage, finish, text = Usage(), "stop", ""
            if chunks is None:
                text = NO_ANSWER
                yield DeltaEvent(text=text)
            else:
                cleaner = CitationFilter(len(prep.contexts))
                async for chunk in chunks:
                    if chunk.usage is not None:
                        usage = Usage.model_validate(chunk.usage.model_dump())
                    for choice in chunk.choices:
                        piece = cleaner.feed(choice.delta.content or "")
                        finish = choice.finish_reason or finish
                        if piece:
                            if "ttft" not in timings:
                                timings.since_start("ttft")
                            text += piece
                            yield DeltaEvent(text=piece)
                timings.record("generate", time.perf_counter() - started)
                if rest := cleaner.flush():
                    text += rest
                    yield DeltaEvent(text=rest)
            yield CitationsEvent(citations=await self.cited(text, prep))
            timings.since_start("total")
            yield DoneEvent(model=prep.model, usage=usage, timings=dict(timings), finish_reason=finish)
        except Exception as exc:
            yield ErrorEvent(error=error_for(exc)[1]["error"])
        finally:
            if chunks is not None:
                await chunks.aclose()
