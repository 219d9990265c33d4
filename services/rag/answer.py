"""`/rag/query`: retrieve → rerank → a prompt with numbered sources → an answer with citations.

Every `[n]` that reaches the client names a source that was given: markers naming no
source are removed from the text as it streams (`CitationFilter`), so the `citations`
event and the answer always agree. With no source above the score threshold the
answer says it does not know, without asking the model.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import AsyncGenerator, AsyncIterator
from typing import Any

from services.common.errors import error_for
from services.common.http import peeked
from services.common.sse import sse_event

from .generator import Generator
from .metrics import RagMetrics, Timings
from .protocol import Citation, QueryRequest, QueryResponse, Usage
from .retrieval import Retriever
from .settings import RagSettings
from .types import Hit

NO_ANSWER = "I don't know: nothing in the knowledge base is relevant enough to answer this question."
SYSTEM_PROMPT = (
    "You answer questions using only the numbered sources below. After each statement, cite the sources it "
    "comes from with their numbers in square brackets, like [1] or [2][3]. If the sources do not contain the "
    "answer, say that you don't know. Answer in the language of the question."
)
REWRITE_PROMPT = (
    "Rewrite the user's last question as one standalone search query that can be understood without the "
    "conversation. Reply with the query only."
)
EXPAND_PROMPT = "Write {n} different rephrasings of this search query, one per line, with no numbering:\n{query}"
_MARKER = re.compile(r"\[(\d{1,3}(?:\s*,\s*\d{1,3})*)\]")
_MAX_MARKER = 16  # longest "[1, 2, 3]" kept waiting in a stream before it is known not to be a marker


def cited_numbers(text: str) -> list[int]:
    """Source numbers cited in `text` (`[1]`, `[1, 2]`, `[1][2]`), in order of first appearance."""
    seen: dict[int, None] = {}
    for match in _MARKER.finditer(text):
        for part in match.group(1).split(","):
            seen.setdefault(int(part), None)
    return list(seen)


def _keep_valid(marker: re.Match[str], valid: range) -> str:
    numbers = [n for n in (int(p) for p in marker.group(1).split(",")) if n in valid]
    return f"[{', '.join(map(str, numbers))}]" if numbers else ""


def drop_invalid_markers(text: str, n_sources: int) -> str:
    valid = range(1, n_sources + 1)
    return _MARKER.sub(lambda m: _keep_valid(m, valid), text)


class CitationFilter:
    """Streams text through, holding back a possible `[n]` until it is complete, minus invalid numbers."""

    def __init__(self, n_sources: int):
        self.valid = range(1, n_sources + 1)
        self.pending = ""

    def feed(self, text: str) -> str:
        self.pending += text
        out = []
        while self.pending:
            start = self.pending.find("[")
            if start < 0:
                out.append(self.pending)
                self.pending = ""
                break
            out.append(self.pending[:start])
            self.pending = self.pending[start:]
            end = self.pending.find("]")
            if end < 0:
                if len(self.pending) <= _MAX_MARKER and re.fullmatch(r"\[[\d,\s]*", self.pending):
                    break  # may still become a marker: wait for more text
                out.append(self.pending[0])
                self.pending = self.pending[1:]
                continue
            candidate = self.pending[: end + 1]
            match = _MARKER.fullmatch(candidate)
            out.append(_keep_valid(match, self.valid) if match else candidate[0])
            self.pending = self.pending[end + 1 :] if match else self.pending[1:]
        return "".join(out)

    def flush(self) -> str:
        rest, self.pending = self.pending, ""
        return rest


def _citation(number: int, hit: Hit) -> Citation:
    return Citation(
        number=number,
        id=hit.id,
        collection=hit.collection,
        doc_id=hit.doc_id,
        source=hit.source,
        text=hit.text,
        start=hit.start,
        end=hit.end,
        score=hit.score,
        metadata=hit.metadata,
        graph=hit.graph,
    )


class Answerer:
    def __init__(self, retriever: Retriever, generator: Generator, settings: RagSettings, metrics: RagMetrics):
        self.retriever, self.generator, self.settings, self.metrics = retriever, generator, settings, metrics
        self._default_model: str | None = settings.generation_model

    async def model(self, requested: str | None) -> str:
        if requested:
            return requested
        if self._default_model is None:
            self._default_model = (await self.generator.models())[0]
        return self._default_model

    # ------------------------------------------------------------ stages

    async def _ask(self, model: str, prompt: str, max_tokens: int) -> str:
        body = {"model": model, "messages": [{"role": "user", "content": prompt}], "max_tokens": max_tokens,
                "temperature": 0}  # fmt: skip
        result = await self.generator.chat(body)
        return str(result["choices"][0]["message"].get("content") or "").strip()

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
        """Retrieved (union over the queries, best score per chunk), reranked and thresholded sources."""
        runs = await asyncio.gather(
            *(
                self.retriever.retrieve(
                    req.targets(), q, top_k=req.top_k, mode=req.mode, fusion=req.fusion, filter=req.filter,
                    timings=timings,
                )  # fmt: skip
                for q in queries
            )
        )
        best: dict[str, Hit] = {}
        for hit in (h for run in runs for h in run):
            if hit.id not in best or hit.score > best[hit.id].score:
                best[hit.id] = hit
        hits = sorted(best.values(), key=lambda h: -h.score)[: req.top_k]
        threshold = req.score_threshold if req.score_threshold is not None else self.settings.min_score
        if self.retriever.should_rerank(req.rerank, threshold is not None):
            hits = await self.retriever.rerank(queries[0], hits, req.rerank_top_n, timings)
        if threshold is not None:
            hits = [h for h in hits if h.score >= threshold]
        return self._fit(hits[: req.rerank_top_n])

    def _fit(self, hits: list[Hit]) -> list[Hit]:
        """The best sources that fit the prompt budget; the first always (cut to the budget if need be)."""
        budget = self.settings.context_chars
        kept: list[Hit] = []
        used = 0
        for hit in hits:
            if kept and used + len(hit.text) > budget:
                break
            if len(hit.text) > budget:
                hit = hit.model_copy(update={"text": hit.text[:budget], "end": hit.start + budget})
            kept.append(hit)
            used += len(hit.text)
        return kept

    def messages(self, req: QueryRequest, sources: list[Hit]) -> list[dict[str, str]]:
        numbered = "\n\n".join(
            f"[{i}] ({h.source or h.doc_id})\n{h.text}" for i, h in enumerate(sources, start=1)
        )
        history = [{"role": m.role, "content": m.content} for m in (req.messages or [])[:-1] if m.role != "system"]
        system = SYSTEM_PROMPT + "\n\nSources:\n\n" + numbered
        return [{"role": "system", "content": system}, *history, {"role": "user", "content": req.question()}]

    def _generation_body(self, req: QueryRequest, model: str, sources: list[Hit]) -> dict[str, Any]:
        body: dict[str, Any] = {"model": model, "messages": self.messages(req, sources)}
        for key in ("max_tokens", "temperature", "top_p", "seed"):
            if getattr(req, key) is not None:
                body[key] = getattr(req, key)
        return body

    # ------------------------------------------------------------ the two ways to answer

    async def _ground(self, req: QueryRequest) -> tuple[Timings, str, str, list[Hit]]:
        """What both ways of answering start with: timings, the model, the retrieval query and the sources."""
        timings = Timings(self.metrics)
        model = await self.model(req.model)
        queries = await self.search_queries(req, model)
        return timings, model, queries[0], await self.sources(req, queries, timings)

    async def answer(self, req: QueryRequest) -> QueryResponse:
        timings, model, query, sources = await self._ground(req)
        usage, finish = Usage(), "stop"
        if sources:
            with timings.stage("generate"):
                result = await self.generator.chat(self._generation_body(req, model, sources))
            text = drop_invalid_markers(str(result["choices"][0]["message"].get("content") or ""), len(sources))
            finish = result["choices"][0].get("finish_reason") or "stop"
            usage = Usage.model_validate(result.get("usage") or {})
            timings["ttft"] = timings["generate"]
        else:
            text = NO_ANSWER
        timings.since_start("total")
        given = [_citation(i, h) for i, h in enumerate(sources, start=1)]
        cited = [given[n - 1] for n in cited_numbers(text)]
        return QueryResponse(
            model=model, answer=text, citations=cited, sources=given, query=query, usage=usage,
            timings=dict(timings), finish_reason=finish,
        )  # fmt: skip

    async def stream(self, req: QueryRequest) -> AsyncIterator[str]:
        """Typed SSE events: retrieval, delta…, citations, done. Failures before generation starts (a full
        generation service: 429) raise here, so they get an HTTP status; later ones end in an `error` event."""
        timings, model, query, sources = await self._ground(req)
        given = [_citation(i, h) for i, h in enumerate(sources, start=1)]
        chunks: AsyncGenerator[dict[str, Any], None] | None = None
        started = time.perf_counter()
        if sources:
            body = {**self._generation_body(req, model, sources), "stream_options": {"include_usage": True}}
            chunks = await peeked(self.generator.chat_stream(body))
        return self._events(model, query, given, timings, chunks, started)

    async def _events(
        self,
        model: str,
        query: str,
        given: list[Citation],
        timings: Timings,
        chunks: AsyncGenerator[dict[str, Any], None] | None,
        started: float,
    ) -> AsyncIterator[str]:
        try:
            yield sse_event("retrieval", {"query": query, "sources": [c.model_dump(mode="json") for c in given]})
            usage, finish, text = Usage(), "stop", ""
            if chunks is None:
                text = NO_ANSWER
                yield sse_event("delta", {"text": text})
            else:
                cleaner = CitationFilter(len(given))
                async for chunk in chunks:
                    if chunk.get("usage"):
                        usage = Usage.model_validate(chunk["usage"])
                    for choice in chunk.get("choices", []):
                        piece = cleaner.feed(choice.get("delta", {}).get("content") or "")
                        finish = choice.get("finish_reason") or finish
                        if piece:
                            if "ttft" not in timings:
                                timings.since_start("ttft")
                            text += piece
                            yield sse_event("delta", {"text": piece})
                timings.record("generate", time.perf_counter() - started)
                if rest := cleaner.flush():
                    text += rest
                    yield sse_event("delta", {"text": rest})
            cited = [given[n - 1] for n in cited_numbers(text)]
            yield sse_event("citations", {"citations": [c.model_dump(mode="json") for c in cited]})
            timings.since_start("total")
            yield sse_event("done", {"model": model, "usage": usage.model_dump(), "timings": dict(timings),
                                     "finish_reason": finish})  # fmt: skip
        except Exception as exc:
            yield sse_event("error", error_for(exc)[1])
        finally:
            if chunks is not None:
                await chunks.aclose()
