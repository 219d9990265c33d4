"""Citation markers (`[1]`, `[1, 2]`, `[1][2]`) and the quote that supports each cited source.

One marker grammar for `/rag/query`, `rag:` chat and the agent. A cited source's quote is the
sentence of that source closest to the answer sentence citing it: embedding similarity first, the
share of the claim's words it holds breaking near-ties; it is always an exact substring of the
source, at document offsets.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable, Container, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from inferag_protocol.rag import Citation, Hit, Quote

from .context import Span, overlap, sentence_spans, split_sentences, unit_rows, words

MARKER = re.compile(r"\[\s*(\d{1,3}(?:\s*[,;]\s*\d{1,3})*)\s*\]")
_PARTIAL = re.compile(r"\[[\d,;\s]*")
_LEADING = re.compile(r"\s*\[\s*(\d{1,3}(?:\s*[,;]\s*\d{1,3})*)\s*\]")
_MAX_MARKER = 16  # longest "[1, 2, 3]" kept waiting in a stream before it is known not to be a marker

Embed = Callable[[Sequence[str]], Awaitable[Sequence[Any]]]  # one vector per text


def marker_numbers(match: re.Match[str]) -> list[int]:
    return [int(p) for p in re.split(r"[,;]", match.group(1))]


def cited_numbers(text: str) -> list[int]:
    """Source numbers cited in `text`, in order of first appearance."""
    seen: dict[int, None] = {}
    for match in MARKER.finditer(text):
        for n in marker_numbers(match):
            seen.setdefault(n, None)
    return list(seen)


def _keep_valid(marker: re.Match[str], valid: Container[int]) -> str:
    numbers = [n for n in marker_numbers(marker) if n in valid]
    return f"[{', '.join(map(str, numbers))}]" if numbers else ""


def drop_invalid_markers(text: str, n_sources: int) -> str:
    """`text` without the cited numbers outside 1..n_sources (a marker left empty goes)."""
    valid = range(1, n_sources + 1)
    return MARKER.sub(lambda m: _keep_valid(m, valid), text)


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
                if len(self.pending) <= _MAX_MARKER and _PARTIAL.fullmatch(self.pending):
                    break  # may still become a marker: wait for more text
                out.append(self.pending[0])
                self.pending = self.pending[1:]
                continue
            match = MARKER.fullmatch(self.pending[: end + 1])
            out.append(_keep_valid(match, self.valid) if match else "[")
            self.pending = self.pending[end + 1 :] if match else self.pending[1:]
        return "".join(out)

    def flush(self) -> str:
        rest, self.pending = self.pending, ""
        return rest


def citation(number: int, hit: Hit, quote: Span | None = None) -> Citation:
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
        quote=Quote(text=quote.text, start=quote.start, end=quote.end) if quote else None,
    )


@dataclass
class Quotable:
    """What a quote for one source is chosen from: its sentences (and their embeddings, if known)."""

    spans: list[Span]
    vectors: np.ndarray | None = None

    @classmethod
    def of(cls, hit: Hit) -> Quotable:
        return cls(sentence_spans(hit))


def claims(answer: str) -> list[tuple[str, list[int]]]:
    """The answer's sentences (markers removed) with the numbers each cites; markers that open a sentence
    ("… 41 hours. [1] The other …") belong to the one before it."""
    out: list[tuple[str, list[int]]] = []
    for a, b in split_sentences(answer):
        sentence = answer[a:b]
        while out and (lead := _LEADING.match(sentence)):
            out[-1][1].extend(n for n in marker_numbers(lead) if n not in out[-1][1])
            sentence = sentence[lead.end() :]
        numbers = cited_numbers(sentence)
        claim = " ".join(MARKER.sub(" ", sentence).split())
        if words(claim) or not out:
            out.append((claim, numbers))
        else:
            out[-1][1].extend(n for n in numbers if n not in out[-1][1])
    return [(claim, numbers) for claim, numbers in out if numbers]


async def choose_quotes(answer: str, sources: Mapping[int, Quotable], embed: Embed | None) -> dict[int, Span]:
    """For each source the answer cites (by number in `sources`), the sentence that supports it best."""
    cited = [(claim, [n for n in numbers if n in sources and sources[n].spans]) for claim, numbers in claims(answer)]
    cited = [(claim, numbers) for claim, numbers in cited if numbers]
    if not cited:
        return {}
    needed = sorted({n for _, numbers in cited for n in numbers})
    claim_vectors: np.ndarray | None = None
    vectors: dict[int, np.ndarray] = {}
    if embed is not None:
        missing = [n for n in needed if sources[n].vectors is None]
        texts = [c for c, _ in cited] + [s.text for n in missing for s in sources[n].spans]
        rows = unit_rows(await embed(texts))
        claim_vectors, at = rows[: len(cited)], len(cited)
        for n in needed:
            known = sources[n].vectors
            if known is None:
                known = rows[at : at + len(sources[n].spans)]
                at += len(sources[n].spans)
            vectors[n] = known
    best: dict[int, tuple[tuple[float, float, float], Span]] = {}
    for k, (claim, numbers) in enumerate(cited):
        claim_words = words(claim)
        for n in numbers:
            spans = sources[n].spans
            sims = vectors[n] @ claim_vectors[k] if claim_vectors is not None else np.zeros(len(spans))
            for span, sim in zip(spans, sims, strict=True):
                key = (round(float(sim), 2), overlap(claim_words, words(span.text)), float(sim))
                if n not in best or key > best[n][0]:
                    best[n] = (key, span)
    return {n: span for n, (_, span) in best.items()}
