"""Numbered sources of one run and the `[n]` markers of the final answer.

Every chunk a tool shows the model gets one number for the whole run, so the
answer can cite sources found in different hops; the same chunk keeps its number.
The sentences shown of each source are what its quote is chosen from.
"""

from __future__ import annotations

from inferag_protocol.rag import Citation, Quote, StoredChunk
from services.rag.citations import Embed, Quotable, choose_quotes, cited_numbers
from services.rag.context import Span, sentence_spans


class SourceBook:
    def __init__(self) -> None:
        self._numbers: dict[tuple[str, str], int] = {}
        self._items: dict[int, Citation] = {}
        self._quotable: dict[int, Quotable] = {}

    def add(
        self, chunk: StoredChunk, collection: str, score: float | None = None, shown: list[Span] | None = None
    ) -> int:
        """The chunk's number (a new one the first time); `shown` are its sentences the model saw."""
        key = (collection, chunk.id)
        number = self._numbers.get(key)
        if number is None:
            number = len(self._items) + 1
            self._numbers[key] = number
            self._items[number] = Citation(
                number=number, id=chunk.id, collection=collection, doc_id=chunk.doc_id, source=chunk.source,
                text=chunk.text, start=chunk.start, end=chunk.end, score=score, metadata=chunk.metadata,
            )  # fmt: skip
            self._quotable[number] = Quotable([])
        seen = self._quotable[number].spans
        seen.extend(s for s in (shown if shown is not None else sentence_spans(chunk)) if s not in seen)
        seen.sort(key=lambda s: s.start)
        return number

    def get(self, number: int) -> Citation | None:
        return self._items.get(number)

    def all(self) -> list[Citation]:
        return list(self._items.values())

    def __len__(self) -> int:
        return len(self._items)

    async def cite(self, answer: str, embed: Embed | None) -> tuple[list[Citation], list[int]]:
        """(citations of the cited numbers that exist, by number, each with its quote; cited numbers
        that name no source)."""
        numbers = cited_numbers(answer)
        found = sorted(n for n in numbers if n in self._items)
        invalid = sorted(n for n in numbers if n not in self._items)
        quotes = await choose_quotes(answer, {n: self._quotable[n] for n in found}, embed) if found else {}
        citations = []
        for n in found:
            quote = quotes.get(n)
            update = {"quote": Quote(text=quote.text, start=quote.start, end=quote.end)} if quote else {}
            citations.append(self._items[n].model_copy(update=update))
        return citations, invalid
