"""What the model reads of the retrieved sources: whole chunks, or the sentences closest to the question.

`select_context` is the one function of this role. In `sentences` mode (extractive compression, as in
RECOMP) every retrieved chunk is split into sentences, the question and the sentences are embedded
once, and the best sentences are taken with their neighbours until the token budget is spent; each
source then shows its chosen sentences in document order. In `chunks` mode each source shows its whole
chunk, best first, while the budget lasts. Either way a `SourceContext` says exactly what the prompt
shows for one numbered source, and where its sentences are in the document (for quoted citations).

Contract: the training-set builder (examples/grounded/) renders its examples through `select_context`
and `prompt.answer_messages`, so the adapter sees exactly the prompt the service sends. Keep both
signatures, or change the builder with them.
"""

from __future__ import annotations

import functools
import re
import unicodedata
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
from segtok.segmenter import split_single

from inferag_protocol.rag import ContextMode, Hit, StoredChunk

GAP = " … "  # between sentences of one source that are not next to each other in the document

# A line's list or heading marker, left out of the sentence (a quote starts at the words).
_LINE_MARK = re.compile(r"^\s*(?:[-*+•>#|]+|\d{1,3}[.)])?\s*")
# French puts a space before ? and !; segtok does not split there.
_SPACED_END = re.compile(r"(?<=\S) [?!]+(?=\s+[«\"(\[]?[A-ZÀ-ÖØ-Þ0-9])")
_LONG = 400  # characters: longer sentences (tables, run-on text) are cut at word boundaries
_WORD = re.compile(r"\w+", re.UNICODE)
_ACCENTS = re.compile(r"[\u0300-\u036f]")  # combining marks, once NFKD has split them off
_BLANKS = re.compile(r"[ \t]*\n\s*")


class Embedder(Protocol):
    """What selection needs of `services.embeddings.client.Embedder` (which satisfies it)."""

    async def embed(self, texts: Sequence[str]) -> Sequence[Any]:
        """One vector (a sequence of floats) per text."""
        ...


class CachedEmbeddings:
    """Sentence embeddings kept in an LRU in front of an embedder: the same chunks come back query after
    query, so their sentences are embedded once (a 384-float vector is 1.5 KB; 20,000 are 30 MB)."""

    def __init__(self, embedder: Embedder, size: int = 20_000):
        self.embedder, self.size = embedder, size
        self._vectors: OrderedDict[str, np.ndarray] = OrderedDict()

    async def embed(self, texts: Sequence[str]) -> list[np.ndarray]:
        missing = [t for t in dict.fromkeys(texts) if t not in self._vectors]
        if missing:
            for text, row in zip(missing, unit_rows(await self.embedder.embed(missing)), strict=True):
                self._vectors[text] = row
        out = []
        for text in texts:
            self._vectors.move_to_end(text)
            out.append(self._vectors[text])
        while len(self._vectors) > self.size:
            self._vectors.popitem(last=False)
        return out


@dataclass(frozen=True)
class Span:
    """A piece of a document: `document[start:end] == text`."""

    start: int
    end: int
    text: str


@dataclass
class SourceContext:
    """One numbered source as the prompt shows it."""

    number: int  # 1-based, as cited: [number]
    hit: Hit
    text: str  # exactly what the prompt shows for this source (after its "[n] " marker)
    spans: list[Span]  # the sentences shown, in document order, with document offsets
    vectors: np.ndarray | None = field(default=None, repr=False)  # their embeddings, when computed


@functools.lru_cache(maxsize=8192)  # the same chunks come back query after query
def split_sentences(text: str) -> tuple[tuple[int, int], ...]:
    """(start, end) of each sentence of `text`, in order: lines first (slides, lists), then sentences
    within a line (segtok, with French spaced ?/!); list markers and surrounding blanks are left out."""
    out: list[tuple[int, int]] = []
    pos = 0
    for line in text.splitlines(keepends=True):
        base, pos = pos, pos + len(line)
        mark = _LINE_MARK.match(line)
        start = mark.end() if mark else 0
        body = line[start:].rstrip()
        if not _WORD.search(body):
            continue
        cursor = 0
        for sentence in split_single(body, join_on_lowercase=True):
            at = body.find(sentence, cursor)
            if at < 0 or not sentence.strip():
                continue
            cursor = at + len(sentence)
            for a, b in _spaced_ends(sentence):
                out.extend(_cut_long(body, base + start, at + a, at + b))
    return tuple(out)


def _spaced_ends(sentence: str) -> list[tuple[int, int]]:
    pieces, last = [], 0
    for m in _SPACED_END.finditer(sentence):
        pieces.append((last, m.end()))
        last = m.end()
        while last < len(sentence) and sentence[last].isspace():
            last += 1
    pieces.append((last, len(sentence)))
    return [(a, b) for a, b in pieces if sentence[a:b].strip()]


def _cut_long(body: str, base: int, a: int, b: int) -> list[tuple[int, int]]:
    """Pieces of at most about `_LONG` characters, cut after a space."""
    pieces = []
    while b - a > _LONG:
        cut = body.rfind(" ", a + _LONG // 2, a + _LONG)
        cut = cut if cut > a else a + _LONG
        pieces.append((base + a, base + len(body[a:cut].rstrip()) + a))
        a = cut
        while a < b and body[a].isspace():
            a += 1
    if a < b:
        pieces.append((base + a, base + b))
    return pieces


def sentence_spans(chunk: StoredChunk) -> list[Span]:
    """The sentences of a chunk, with document offsets."""
    return [Span(chunk.start + a, chunk.start + b, chunk.text[a:b]) for a, b in split_sentences(chunk.text)]


@functools.lru_cache(maxsize=16384)
def words(text: str) -> frozenset[str]:
    """Lower-cased, unaccented words of three letters or more, or any number (for lexical overlap)."""
    plain = _ACCENTS.sub("", unicodedata.normalize("NFKD", text.lower()))
    return frozenset(w for w in _WORD.findall(plain) if len(w) > 2 or w.isdigit())


def overlap(a: frozenset[str], b: frozenset[str]) -> float:
    """Share of `a`'s words found in `b`."""
    return len(a & b) / len(a) if a else 0.0


def unit_rows(vectors: Sequence[Any]) -> np.ndarray:
    matrix = np.asarray(vectors, dtype=np.float32)
    norms = np.linalg.norm(matrix, axis=1, keepdims=True)
    return matrix / np.where(norms == 0, 1, norms)


def shown_text(hit: Hit, spans: Sequence[Span]) -> str:
    """The spans as one text: runs of neighbouring sentences as in the document (blank lines dropped),
    gaps marked `GAP`."""
    parts: list[str] = []
    run_start = run_end = None
    for i, span in enumerate(spans):
        if run_start is None:
            run_start = span.start
        elif span.start != _next_start(hit, spans[i - 1]):
            parts.append(hit.text[run_start - hit.start : run_end - hit.start])  # type: ignore[operator]
            run_start = span.start
        run_end = span.end
    if run_start is not None:
        parts.append(hit.text[run_start - hit.start : run_end - hit.start])  # type: ignore[operator]
    return GAP.join(_BLANKS.sub("\n", p) for p in parts)


def _next_start(hit: Hit, span: Span) -> int:
    """Where the sentence after `span` starts (its end plus the blanks and list marks between)."""
    rest = hit.text[span.end - hit.start :]
    skipped = len(rest) - len(rest.lstrip())
    mark = _LINE_MARK.match(rest[skipped:])
    return span.end + skipped + (mark.end() if mark else 0)


# How much the question's words (weighted by their rarity among the candidates) count next to the
# embedding similarity, and how much a sentence of a better-ranked chunk is preferred: the dense model
# alone misses numbers, names and non-English text that retrieval's BM25 side found.
LEXICAL_WEIGHT = 0.5
RANK_WEIGHT = 0.1


def relevance(question: str, texts: Sequence[str], similarity: np.ndarray, ranks: Sequence[int]) -> list[float]:
    """A score per candidate sentence: cosine similarity to the question, plus the IDF-weighted share of the
    question's words it holds, plus a prior for the retrieval rank of its chunk."""
    bags = [words(t) for t in texts]
    df: dict[str, int] = {}
    for bag in bags:
        for w in bag:
            df[w] = df.get(w, 0) + 1
    asked = words(question)
    idf = {w: np.log(1 + len(bags) / (1 + df.get(w, 0))) for w in asked}
    total = sum(idf.values()) or 1.0
    return [
        float(similarity[k]) + LEXICAL_WEIGHT * sum(idf[w] for w in asked & bag) / total + RANK_WEIGHT / (1 + ranks[k])
        for k, bag in enumerate(bags)
    ]


async def select_context(
    question: str,
    hits: list[Hit],
    embedder: Embedder,
    *,
    mode: ContextMode,
    budget_tokens: int,
    count_tokens: Callable[[str], int],
) -> list[SourceContext]:
    """The numbered sources of the prompt, best first, within `budget_tokens` (the first source always).

    Sources with nothing selected are left out, so numbers are dense (1..n) in the order shown.
    """
    if not hits:
        return []
    spans = [sentence_spans(h) for h in hits]
    if mode == "chunks":
        return _chunks(hits, spans, budget_tokens, count_tokens)
    flat = [(i, j) for i, s in enumerate(spans) for j in range(len(s))]
    if not flat:
        return _chunks(hits, spans, budget_tokens, count_tokens)
    texts = [spans[i][j].text for i, j in flat]
    vectors = unit_rows(await embedder.embed([question, *texts]))
    scores = relevance(question, texts, vectors[1:] @ vectors[0], [i for i, _ in flat])
    order = sorted(range(len(flat)), key=lambda k: (-scores[k], k))
    chosen: set[tuple[int, int]] = set()
    used = 0
    for k in order:
        i, j = flat[k]
        if (i, j) not in chosen:
            cost = count_tokens(spans[i][j].text)
            if chosen and used + cost > budget_tokens:
                break
            chosen.add((i, j))
            used += cost
        for n in (j - 1, j + 1):  # its neighbours, for context, while they fit
            if 0 <= n < len(spans[i]) and (i, n) not in chosen:
                cost = count_tokens(spans[i][n].text)
                if used + cost <= budget_tokens:
                    chosen.add((i, n))
                    used += cost
        if used >= budget_tokens:
            break
    row = {pair: 1 + k for k, pair in enumerate(flat)}
    contexts: list[SourceContext] = []
    for i, hit in enumerate(hits):
        picked = sorted(j for (a, j) in chosen if a == i)
        if not picked:
            continue
        shown = [spans[i][j] for j in picked]
        contexts.append(
            SourceContext(
                number=len(contexts) + 1,
                hit=hit,
                text=shown_text(hit, shown),
                spans=shown,
                vectors=vectors[[row[(i, j)] for j in picked]],
            )
        )
    return contexts


def _chunks(
    hits: list[Hit], spans: list[list[Span]], budget: int, count_tokens: Callable[[str], int]
) -> list[SourceContext]:
    """Whole chunks while they fit; the first always, cut to its sentences that fit."""
    contexts: list[SourceContext] = []
    used = 0
    for hit, shown in zip(hits, spans, strict=True):
        cost = count_tokens(hit.text)
        if contexts and used + cost > budget:
            break
        if not contexts and cost > budget:
            kept: list[Span] = []
            total = 0
            for span in shown:
                total += count_tokens(span.text)
                if kept and total > budget:
                    break
                kept.append(span)
            shown = kept
            text = shown_text(hit, kept) if kept else hit.text
        else:
            text = hit.text
        contexts.append(SourceContext(number=len(contexts) + 1, hit=hit, text=text, spans=shown))
        used += cost
    return contexts
