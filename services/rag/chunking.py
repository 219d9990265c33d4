"""Split a source text into chunks that fit the embedding model.

Sizes are counted in word pieces of the embedding model's tokenizer. Every chunk is an exact
slice of the source (`source[start:end] == text`), stripped of surrounding whitespace, and no
chunk is longer than the model's limit: whatever the strategy, each chunk is re-counted alone
at the end and cut further if needed, because a substring may tokenize differently than it
did in context.
"""

from __future__ import annotations

import asyncio
import re
from collections import deque
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal, Self, TypeVar

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, StringConstraints, ValidationError, model_validator
from tokenizers import Encoding, Tokenizer

from inferag_protocol.rag import Chunk
from services.common.errors import InvalidRequest

Strategy = Literal["fixed", "overlap", "recursive", "markdown", "semantic"]
Embed = Callable[[list[str]], Awaitable[list[list[float]]]]

DEFAULT_CHUNK_SIZE = 200
# Texts shorter than this are split on the event loop: a thread hop costs more than the work.
_INLINE_CHARS = 20_000
_GIL_FREE_CHARS = 2_000
# Longer spans are tokenized a segment at a time: time and memory stay linear and bounded whatever the
# text (a 20 MB upload without whitespace was tens of millions of one-character pieces).
_SEGMENT_CHARS = 65_536
# Pieces measured alone are cached up to this length (words, lines, whole paragraphs repeat), up to
# _CACHE_CHARS characters of them in all.
_CACHED_CHARS = 8192
_CACHE_CHARS = 8_000_000

# Paragraphs, lines, sentences, words, characters. Regexes so that "\r\n" line ends and blank
# lines holding spaces count as breaks; CJK sentence ends need no following space.
_DEFAULT_SEPARATORS = [
    r"\n[^\S\n]*\n",
    r"\n",
    r"(?<=[.!?…])\s+|(?<=[。！？])",
    r"\s+",
    "",
]
_SENTENCE_END = re.compile(r"[.!?…]+[\"'”’»)\]]*(?=\s)|[。！？]+|\n[^\S\n]*\n")
_FENCE = re.compile(r" {0,3}(`{3,}|~{3,})")
_HEADING = re.compile(r" {0,3}(#{1,6})(?:[ \t]+(.*?))?[ \t]*")
_CLOSING_HASHES = re.compile(r"(?:^|[ \t]+)#+$")


class ChunkingParams(BaseModel):
    """How to split a document: the `chunking` object of chunk and ingestion requests."""

    model_config = ConfigDict(extra="forbid")

    strategy: Strategy = "recursive"
    chunk_size: int = Field(
        DEFAULT_CHUNK_SIZE,
        ge=16,
        description="Target size in tokens of the embedding tokenizer; at most the model's input limit.",
    )
    chunk_overlap: int = Field(
        0,
        ge=0,
        description="Tokens shared by neighbouring chunks ('overlap', 'recursive', 'markdown'). "
        "Defaults to chunk_size // 5 for 'overlap', 0 otherwise.",
    )
    separators: list[Annotated[str, StringConstraints(max_length=64)]] | None = Field(
        None,
        min_length=1,
        max_length=32,
        description="Literal separators tried in order ('recursive', 'markdown'); '' splits characters.",
    )
    breakpoint_percentile: float = Field(
        90.0,
        ge=50,
        le=99,
        description="'semantic': cut where neighbouring sentences are further apart than this percentile.",
    )

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        given = self.model_fields_set
        if self.strategy == "overlap" and "chunk_overlap" not in given:
            self.chunk_overlap = self.chunk_size // 5
        if self.chunk_overlap >= self.chunk_size:
            raise ValueError(
                f"chunk_overlap ({self.chunk_overlap}) must be smaller than chunk_size ({self.chunk_size})"
            )
        # Refuse what the strategy would silently ignore, so a client learns it early.
        if self.chunk_overlap and self.strategy in ("fixed", "semantic"):
            raise ValueError(f"chunk_overlap does not apply to strategy '{self.strategy}' (use 'overlap')")
        if self.separators is not None and self.strategy not in ("recursive", "markdown"):
            raise ValueError("separators apply only to strategies 'recursive' and 'markdown'")
        if "breakpoint_percentile" in given and self.strategy != "semantic":
            raise ValueError("breakpoint_percentile applies only to strategy 'semantic'")
        return self


def parse_chunking(data: Mapping[str, Any] | None) -> ChunkingParams:
    """ChunkingParams from a raw `chunking` object, errors as InvalidRequest naming the field."""
    try:
        return ChunkingParams.model_validate(data or {})
    except ValidationError as exc:
        first = exc.errors()[0]
        loc = ".".join(str(p) for p in first["loc"])
        param = f"chunking.{loc}" if loc else "chunking"
        raise InvalidRequest(f"{param}: {first['msg']}", param=param) from exc


@dataclass
class _Piece:
    start: int
    end: int
    metadata: dict[str, Any] = field(default_factory=dict)
    tokens: int = 0


class _Merge:
    """LangChain's `TextSplitter._merge_splits` on source offsets, one piece at a time: neighbouring
    pieces are joined while the sum of their token counts fits `size`, and each new chunk starts with
    the last pieces of the one before that add up to at most `overlap` tokens."""

    def __init__(self, size: int, overlap: int):
        self.size, self.overlap = size, overlap
        self.window: deque[tuple[int, int, int]] = deque()  # (start, end, tokens)
        self.total = 0

    def add(self, start: int, end: int, tokens: int) -> list[_Piece]:
        out = []
        if self.window and self.total + tokens > self.size:
            out.append(_Piece(self.window[0][0], self.window[-1][1]))
            while self.window and (self.total > self.overlap or (self.total + tokens > self.size and self.total > 0)):
                self.total -= self.window.popleft()[2]
        self.window.append((start, end, tokens))
        self.total += tokens
        return out

    def flush(self) -> list[_Piece]:
        out = [_Piece(self.window[0][0], self.window[-1][1])] if self.window else []
        self.window.clear()
        self.total = 0
        return out


def _cut_points(pattern: re.Pattern[str], text: str, start: int, end: int) -> list[int]:
    """Where `pattern` matches inside text[start:end] (the separator starts the next piece)."""
    return sorted({m.start() for m in pattern.finditer(text, start, end) if start < m.start() < end})


T = TypeVar("T")


class Chunker:
    """Splits texts with one embedding model's tokenizer; strategies are picked per call."""

    def __init__(self, tokenizer: Any, max_tokens: int, embed: Embed | None = None):
        """`tokenizer`: a transformers fast tokenizer or a `tokenizers.Tokenizer`; `embed` is needed by 'semantic'."""
        backend = tokenizer if isinstance(tokenizer, Tokenizer) else tokenizer.backend_tokenizer
        # A private copy: transformers leaves truncation and padding switched on in the shared
        # backend after a call, which would silently cut our counts.
        self._tok = Tokenizer.from_str(backend.to_str())
        self._tok.no_truncation()
        self._tok.no_padding()
        self.max_tokens = max_tokens
        self._embed = embed
        self._counts: dict[str, int] = {}
        self._cached_chars = 0

    @classmethod
    def for_model(cls, model_folder: str | Path, max_input_tokens: int = 256, embed: Embed | None = None) -> Chunker:
        """A chunker for the model in a local folder; its limit leaves room for [CLS] and [SEP]."""
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(str(model_folder))
        return cls(tokenizer, max_input_tokens - tokenizer.num_special_tokens_to_add(pair=False), embed)

    def count_tokens(self, text: str) -> int:
        """Word pieces in `text`, special tokens excluded."""
        return len(self._encode(text).ids)

    def _encode(self, text: str) -> Encoding:
        if len(text) < _GIL_FREE_CHARS:
            return self._tok.encode(text, add_special_tokens=False)
        # `encode` holds the GIL for its whole run (a second per megabyte), which would stall the
        # event loop even from a worker thread; `encode_batch` releases it.
        return self._tok.encode_batch([text], add_special_tokens=False)[0]

    async def chunk(self, text: str, params: ChunkingParams) -> list[Chunk]:
        """Chunks of `text` in source order; [] for blank text."""
        size, overlap = self._budget(params)
        if not text.strip():
            return []
        if params.strategy != "semantic":
            return await self._run(text, self._split, text, params, size, overlap)
        if self._embed is None:
            raise InvalidRequest(
                "The 'semantic' strategy needs an embedding model, and none is configured here.",
                param="chunking.strategy",
            )
        sentences, counts = await self._run(text, self._sentences, text, size)
        vectors = await self._embed([text[p.start : p.end] for p in sentences])
        if len(vectors) != len(sentences):
            raise RuntimeError(f"embed returned {len(vectors)} vectors for {len(sentences)} sentences")
        groups = _group(sentences, vectors, params.breakpoint_percentile, size, counts)
        return await self._run(text, self._finish, text, groups, size)

    def _budget(self, params: ChunkingParams) -> tuple[int, int]:
        size, overlap = params.chunk_size, params.chunk_overlap
        if size > self.max_tokens:
            if "chunk_size" in params.model_fields_set:
                raise InvalidRequest(
                    f"chunking.chunk_size must be at most {self.max_tokens}, the embedding model's input limit "
                    f"(got {size}).",
                    param="chunking.chunk_size",
                )
            # The default only: a smaller model gets its own limit rather than an error.
            size = self.max_tokens
            if overlap >= size:
                overlap = size // 5
        return size, overlap

    async def _run(self, text: str, fn: Callable[..., T], *args: Any) -> T:
        if len(text) < _INLINE_CHARS:
            return fn(*args)
        return await asyncio.to_thread(fn, *args)

    def _split(self, text: str, params: ChunkingParams, size: int, overlap: int) -> list[Chunk]:
        if params.strategy == "fixed":
            pieces = self._windows(text, size, 0)
        elif params.strategy == "overlap":
            pieces = self._windows(text, size, overlap)
        elif params.strategy == "markdown":
            pieces = self._markdown(text, size, overlap, params.separators)
        else:
            pieces = self._recursive(text, 0, len(text), size, overlap, params.separators)
        return self._finish(text, pieces, size)

    def _windows(self, text: str, size: int, overlap: int, start: int = 0, end: int | None = None) -> list[_Piece]:
        """Windows of text[start:end] of at most `size` tokens sharing about `overlap`, cut where a word
        starts. The text is tokenized a segment at a time (from where the next window starts), so any
        length runs in bounded memory."""
        end = len(text) if end is None else end
        pieces: list[_Piece] = []
        pos, span = start, _SEGMENT_CHARS
        while True:
            stop = min(end, pos + span)
            last = stop == end
            encoding = self._encode(text[pos:stop])
            starts = [pos + a for a, _ in encoding.offsets]
            n = len(starts)
            words = encoding.word_ids
            # A cut inside a word re-tokenizes both halves differently ("##ands" alone is "and", "##s"),
            # so windows end at the last word start that fits; only a word longer than a window is cut.
            word_start_at_or_before = [0] * (n + 1)
            for i in range(1, n):
                word_start_at_or_before[i] = i if words[i] != words[i - 1] else word_start_at_or_before[i - 1]
            word_start_at_or_before[n] = n
            # Before the segment's end, its last word may go on past it: windows are settled before that word.
            settled = n if last else word_start_at_or_before[n - 1] if n else 0
            first = 0
            while first + size < settled:
                cut = word_start_at_or_before[first + size]
                if cut <= first:
                    cut = first + size
                # The window runs up to the next cut, so text between tokens (spaces, marks the
                # tokenizer drops) belongs to a chunk too.
                pieces.append(_Piece(starts[first] if first else pos, starts[cut]))
                # The next window starts at the first word start inside the overlap, so chunks share at most `overlap`.
                lowest = max(cut - overlap, first + 1)
                first = next((j for j in range(lowest, cut) if word_start_at_or_before[j] == j), cut)
            if last:
                pieces.append(_Piece(starts[first] if first else pos, end))
                return pieces
            if first:
                pos, span = starts[first], _SEGMENT_CHARS
            else:  # not one window settled in the segment (very long tokens): take more text
                span *= 2

    def _recursive(
        self, text: str, start: int, end: int, size: int, overlap: int, separators: list[str] | None
    ) -> list[_Piece]:
        """LangChain's recursive character splitting (its algorithm, on offsets, with token counts): cut
        at the first separator found, merge the small pieces, split the big ones with the finer
        separators; the character level ('') becomes token windows instead of one piece per character."""
        seps = [re.escape(s) for s in separators] if separators is not None else _DEFAULT_SEPARATORS
        patterns = [re.compile(s) if s else None for s in seps]
        return self._split_span(text, start, end, patterns, size, overlap)

    def _split_span(
        self, text: str, start: int, end: int, patterns: list[re.Pattern[str] | None], size: int, overlap: int
    ) -> list[_Piece]:
        for i, pattern in enumerate(patterns):
            if pattern is None:
                return self._windows(text, size, overlap, start, end)
            points = _cut_points(pattern, text, start, end)
            if points:
                finer = patterns[i + 1 :]
                break
        else:  # nothing cuts it: as it is, and the final fitting pass cuts it if it must
            return [_Piece(start, end)]
        out: list[_Piece] = []
        merge = _Merge(size, overlap)
        bounds = [start, *points, end]
        for a, b in zip(bounds, bounds[1:], strict=False):
            tokens = self._count_upto(text, a, b, size)
            if tokens <= size:
                out += merge.add(a, b, tokens)
                continue
            out += merge.flush()
            # Without finer separators the piece goes as it is; the final fitting pass cuts it.
            out += self._split_span(text, a, b, finer, size, overlap) if finer else [_Piece(a, b)]
        return out + merge.flush()

    def _count_upto(self, text: str, start: int, end: int, limit: int) -> int:
        """Tokens of text[start:end] alone when at most `limit`; past it, some count over `limit`, found
        without tokenizing more than a segment or so of a long span."""
        if end - start <= _CACHED_CHARS:
            piece = text[start:end]
            n = self._counts.get(piece)
            if n is None:
                self._cached_chars += len(piece)
                if self._cached_chars > _CACHE_CHARS:
                    self._counts.clear()
                    self._cached_chars = len(piece)
                n = self._counts[piece] = len(self._encode(piece).ids)
            return n
        seen = 0
        for pos in range(start, end, _SEGMENT_CHARS):
            seen += len(self._encode(text[pos : min(end, pos + _SEGMENT_CHARS)]).ids)
            if seen > limit:
                return seen
        # Few tokens in many characters (very long words): count the span whole.
        return len(self._encode(text[start:end]).ids)

    def _markdown(self, text: str, size: int, overlap: int, separators: list[str] | None) -> list[_Piece]:
        pieces: list[_Piece] = []
        for section in _sections(text):
            if self._count_upto(text, section.start, section.end, size) <= size:
                pieces.append(section)
                continue
            for sub in self._recursive(text, section.start, section.end, size, overlap, separators):
                sub.metadata = {"headings": list(section.metadata["headings"])}
                pieces.append(sub)
        return pieces

    def _sentences(self, text: str, size: int) -> tuple[list[_Piece], list[int]]:
        """Sentences (paragraph ends count as sentence ends), each cut to fit `size`, and their token counts."""
        bounds = [0, *(m.end() for m in _SENTENCE_END.finditer(text)), len(text)]
        pieces = self._fit(text, [_Piece(a, b) for a, b in zip(bounds, bounds[1:], strict=False) if b > a], size)
        return pieces, [p.tokens for p in pieces]

    def _finish(self, text: str, pieces: Iterable[_Piece], size: int) -> list[Chunk]:
        # Cutting an overlap window that was too long alone can start a piece after the next window's start.
        fitted = sorted(self._fit(text, pieces, size), key=lambda p: (p.start, p.end))
        return [
            Chunk(text=text[p.start : p.end], start=p.start, end=p.end, tokens=p.tokens, metadata=p.metadata)
            for p in fitted
        ]

    def _fit(self, text: str, pieces: Iterable[_Piece], size: int) -> list[_Piece]:
        """Strip each piece, drop blank ones, and cut those over `size` tokens counted alone; sets `tokens`."""
        stripped = [_Piece(*_strip(text, p.start, p.end), p.metadata) for p in pieces]
        stripped = [p for p in stripped if p.start < p.end]
        out: list[_Piece] = []
        for batch in _batches(stripped, _SEGMENT_CHARS * 4):
            # One batch call (parallel in the Rust tokenizer) settles the common case: the piece fits.
            short = [p for p in batch if p.end - p.start <= _SEGMENT_CHARS]
            encodings = self._tok.encode_batch([text[p.start : p.end] for p in short], add_special_tokens=False)
            counts = {id(p): len(e.ids) for p, e in zip(short, encodings, strict=True)}
            for piece in batch:
                tokens = counts.get(id(piece))
                if tokens is None:
                    tokens = self._count_upto(text, piece.start, piece.end, size)
                todo = [(piece.start, piece.end, tokens)]
                while todo:
                    start, end, tokens = todo.pop()
                    # A single character is never cut (no real tokenizer makes 16 pieces of one).
                    if tokens <= size or end - start == 1:
                        out.append(_Piece(start, end, dict(piece.metadata), tokens))
                        continue
                    cuts = [_strip(text, w.start, w.end) for w in self._windows(text, size, 0, start, end)]
                    if len(cuts) < 2:  # counted alone it is too long, yet in windows it fits: halve it
                        middle = (start + end) // 2
                        cuts = [_strip(text, start, middle), _strip(text, middle, end)]
                    for a, b in reversed([(a, b) for a, b in cuts if a < b]):
                        todo.append((a, b, self._count_upto(text, a, b, size)))
        return out

def _batches(pieces: list[_Piece], chars: int) -> Iterable[list[_Piece]]:
    """Consecutive runs of pieces of about `chars` characters in all (tokenized together)."""
    batch: list[_Piece] = []
    total = 0
    for piece in pieces:
        batch.append(piece)
        total += piece.end - piece.start
        if total >= chars:
            yield batch
            batch, total = [], 0
    if batch:
        yield batch


def _strip(text: str, start: int, end: int) -> tuple[int, int]:
    while start < end and text[start].isspace():
        start += 1
    while end > start and text[end - 1].isspace():
        end -= 1
    return start, end


def _sections(text: str) -> list[_Piece]:
    """Spans from one ATX heading to the next, with their heading path; `#` in code fences is not a heading."""
    sections: list[_Piece] = [_Piece(0, 0, {"headings": []})]
    path: list[tuple[int, str]] = []
    fence: str | None = None
    body_seen = False  # anything but blank lines since the last heading
    offset = 0
    for line in text.splitlines(keepends=True):
        start, offset = offset, offset + len(line)
        content = line.rstrip("\r\n\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029")
        opened = _FENCE.match(content)
        if fence is not None:
            closes = opened and opened.group(1)[0] == fence[0] and len(opened.group(1)) >= len(fence)
            if closes and opened and not content[opened.end() :].strip():
                fence = None
            body_seen = True
            continue
        if opened and not (opened.group(1)[0] == "`" and "`" in content[opened.end() :]):
            fence = opened.group(1)
            body_seen = True
            continue
        heading = _HEADING.fullmatch(content)
        if heading is None:
            body_seen = body_seen or bool(content.strip())
            continue
        level = len(heading.group(1))
        title = _CLOSING_HASHES.sub("", heading.group(2) or "").strip()
        previous = sections[-1]
        if not body_seen and path and level > path[-1][0]:
            # A heading with nothing under it but a subheading: keep it with its child.
            path = [h for h in path if h[0] < level] + [(level, title)]
            previous.metadata = {"headings": [t for _, t in path]}
        else:
            previous.end = start
            path = [h for h in path if h[0] < level] + [(level, title)]
            sections.append(_Piece(start, start, {"headings": [t for _, t in path]}))
        body_seen = False
    sections[-1].end = len(text)
    return [s for s in sections if text[s.start : s.end].strip()]


def _group(
    sentences: list[_Piece], vectors: list[list[float]], percentile: float, size: int, counts: list[int]
) -> list[_Piece]:
    """Consecutive sentences joined until the topic shifts or the group would pass `size` tokens."""
    if not sentences:
        return []
    matrix = np.asarray(vectors, dtype=np.float64)
    matrix /= np.maximum(np.linalg.norm(matrix, axis=1, keepdims=True), 1e-12)
    distances = 1.0 - np.sum(matrix[:-1] * matrix[1:], axis=1)
    threshold = float(np.percentile(distances, percentile)) if len(distances) else 0.0
    groups = [_Piece(sentences[0].start, sentences[0].end)]
    tokens = counts[0]
    for i in range(1, len(sentences)):
        # Sentences are split at whitespace or punctuation, where word pieces do not cross, so
        # the sum is the group's count; the final fitting pass re-counts anyway.
        if distances[i - 1] > threshold or tokens + counts[i] > size:
            groups.append(_Piece(sentences[i].start, sentences[i].end))
            tokens = counts[i]
        else:
            groups[-1].end = sentences[i].end
            tokens += counts[i]
    return groups
