"""Numbered sources of one run and the `[n]` markers of the final answer.

Every chunk a tool shows the model gets one number for the whole run, so the
answer can cite sources found in different hops; the same chunk keeps its number.
"""

from __future__ import annotations

import re

from services.rag.types import StoredChunk

from .protocol import Citation

_MARKER = re.compile(r"\[\s*(\d{1,4}(?:\s*[,;]\s*\d{1,4})*)\s*\]")


class SourceBook:
    def __init__(self) -> None:
        self._numbers: dict[tuple[str, str], int] = {}
        self._items: dict[int, Citation] = {}

    def add(self, chunk: StoredChunk, collection: str, score: float | None = None) -> int:
        key = (collection, chunk.id)
        number = self._numbers.get(key)
        if number is None:
            number = len(self._items) + 1
            self._numbers[key] = number
            self._items[number] = Citation(
                number=number,
                doc_id=chunk.doc_id,
                collection=collection,
                text=chunk.text,
                start=chunk.start,
                end=chunk.end,
                score=score,
                chunk_id=chunk.id,
                source=chunk.source,
            )
        return number

    def get(self, number: int) -> Citation | None:
        return self._items.get(number)

    def __len__(self) -> int:
        return len(self._items)


def cited_numbers(answer: str) -> list[int]:
    """The numbers of `[1]`, `[2, 3]`, `[4][5]` markers, in order of first appearance."""
    seen: dict[int, None] = {}
    for match in _MARKER.finditer(answer):
        for part in re.split(r"[,;]", match.group(1)):
            seen.setdefault(int(part), None)
    return list(seen)


def resolve_citations(answer: str, book: SourceBook) -> tuple[list[Citation], list[int]]:
    """(citations of the cited numbers that exist, by number; cited numbers that do not)."""
    found, invalid = [], []
    for number in cited_numbers(answer):
        citation = book.get(number)
        if citation is None:
            invalid.append(number)
        else:
            found.append(citation)
    return sorted(found, key=lambda c: c.number), sorted(invalid)
