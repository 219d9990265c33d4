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
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal, Self, TypeVar

import numpy as np
from langchain_text_splitters import RecursiveCharacterTextSplitter
from pydantic import BaseModel, ConfigDict, Field, StringConstraints, ValidationError, model_validator
from tokenizers import Encoding, Tokenizer

from services.common.errors import InvalidRequest
from services.rag.types import Chunk

Strategy = Literal["fixed", "overlap", "recursive", "markdown", "semantic"]
Embed = Callable[[list[str]], Awaitable[list[list[float]]]]

DEFAULT_CHUNK_SIZE = 200
# Texts shorter than this are split on the event loop: a thread hop costs more than the work.
_INLINE_CHARS = 20_000
_GIL_FREE_CHARS = 2_000

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


class _Span(str):
    """A slice of the source that remembers where it starts, so merged pieces keep exact offsets."""

    start: int

    def __new__(cls, text: str, start: int) -> _Span:
        span = super().__new__(cls, text)
        span.start = start
        return span

    @property
    def end(self) -> int:
        return self.start + len(self)


class _SpanSplitter(RecursiveCharacterTextSplitter):
    """LangChain's recursive splitter, fed pieces that carry their source offsets.

    `split_text` returns plain strings; finding them again with `str.find` lands on the wrong
    copy when text repeats. Here the pieces are `_Span`s and LangChain's own merge (sizes and
    overlap) joins them, so each chunk's start is known exactly.
    """

    def __init__(self, separators: list[str], chunk_size: int, chunk_overlap: int, count: Callable[[str], int]):
        super().__init__(
            separators=separators,
            is_separator_regex=True,
            keep_separator="start",
            chunk_size=chunk_size,
            chunk_overlap=chunk_overlap,
            length_function=count,
            strip_whitespace=False,
        )

    def split_span(self, text: str, start: int) -> list[_Span]:
        return self._split_span(_Span(text, start), self._separators)

    def _split_span(self, text: _Span, separators: list[str]) -> list[_Span]:
        # Same walk as RecursiveCharacterTextSplitter._split_text: first separator found in the
        # text, merge the small pieces, recurse into the big ones with the finer separators.
        separator, finer = separators[-1], []
        for i, candidate in enumerate(separators):
            if not candidate:
                separator = candidate
                break
            if re.search(candidate, text):
                separator, finer = candidate, separators[i + 1 :]
                break
        chunks: list[_Span] = []
        small: list[_Span] = []
        for piece in _cut(text, separator):
            if self._length_function(piece) <= self._chunk_size:
                small.append(piece)
                continue
            if small:
                chunks.extend(self._merge(small))
                small = []
            # Without finer separators the piece goes as it is; the final fitting pass cuts it.
            chunks.extend(self._split_span(piece, finer) if finer else [piece])
        if small:
            chunks.extend(self._merge(small))
        return chunks

    def _merge(self, pieces: list[_Span]) -> list[_Span]:
        return [doc for doc in self._merge_splits(pieces, "") if isinstance(doc, _Span)]

    def _join_docs(self, docs: list[str], separator: str) -> str | None:
        # Called by LangChain's merge with a run of neighbouring pieces (separators are kept inside them).
        if not docs or not isinstance(docs[0], _Span):
            return super()._join_docs(docs, separator)
        return _Span("".join(docs), docs[0].start)


def _cut(text: _Span, separator: str) -> list[_Span]:
    """The text cut before each separator match (the separator starts the next piece)."""
    if not separator:
        return [_Span(ch, text.start + i) for i, ch in enumerate(text)]
    points = sorted({m.start() for m in re.finditer(separator, text) if 0 < m.start() < len(text)})
    bounds = [0, *points, len(text)]
    return [_Span(text[a:b], text.start + a) for a, b in zip(bounds, bounds[1:], strict=False) if b > a]


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

    def _windows(self, text: str, size: int, overlap: int) -> list[_Piece]:
        """Windows of at most `size` tokens sharing about `overlap`, cut where a word starts."""
        encoding = self._encode(text)
        starts = [a for a, _ in encoding.offsets]
        n = len(starts)
        words = encoding.word_ids
        # A cut inside a word re-tokenizes both halves differently ("##ands" alone is "and", "##s"),
        # so windows end at the last word start that fits; only a word longer than a window is cut.
        word_start_at_or_before = [0] * (n + 1)
        for i in range(1, n):
            word_start_at_or_before[i] = i if words[i] != words[i - 1] else word_start_at_or_before[i - 1]
        word_start_at_or_before[n] = n
        pieces = []
        first = 0
        while first + size < n:
            cut = word_start_at_or_before[first + size]
            if cut <= first:
                cut = first + size
            # The window runs up to the next cut, so text between tokens (spaces, marks the
            # tokenizer drops) belongs to a chunk too.
            pieces.append(_Piece(starts[first] if first else 0, starts[cut]))
            # The next window starts at the first word start inside the overlap, so chunks share at most `overlap`.
            lowest = max(cut - overlap, first + 1)
            following = next((j for j in range(lowest, cut) if word_start_at_or_before[j] == j), cut)
            first = following
        pieces.append(_Piece(starts[first] if first else 0, len(text)))
        return pieces

    def _recursive(
        self, text: str, start: int, end: int, size: int, overlap: int, separators: list[str] | None
    ) -> list[_Piece]:
        seps = [re.escape(s) for s in separators] if separators is not None else _DEFAULT_SEPARATORS
        splitter = _SpanSplitter(seps, size, overlap, self._cached_counter())
        return [_Piece(s.start, s.end) for s in splitter.split_span(text[start:end], start)]

    def _markdown(self, text: str, size: int, overlap: int, separators: list[str] | None) -> list[_Piece]:
        pieces: list[_Piece] = []
        for section in _sections(text):
            if self.count_tokens(text[section.start : section.end]) <= size:
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
        # One batch call (parallel in the Rust tokenizer) settles the common case: the piece fits.
        encodings = self._tok.encode_batch([text[p.start : p.end] for p in stripped], add_special_tokens=False)
        out: list[_Piece] = []
        for piece, encoding in zip(stripped, encodings, strict=True):
            todo = [(piece.start, piece.end, encoding.offsets)]
            while todo:
                start, end, offsets = todo.pop()
                # A single character is never cut (no real tokenizer makes 16 pieces of one).
                if len(offsets) <= size or end - start == 1:
                    out.append(_Piece(start, end, dict(piece.metadata), len(offsets)))
                    continue
                cut = start + offsets[size][0]
                if not start < cut < end:
                    cut = (start + end) // 2
                for a, b in ((cut, end), (start, cut)):
                    a, b = _strip(text, a, b)
                    if a < b:
                        todo.append((a, b, self._encode(text[a:b]).offsets))
        return out

    def _cached_counter(self) -> Callable[[str], int]:
        # LangChain measures each piece several times while merging, and words repeat a lot.
        cache: dict[str, int] = {}

        def count(piece: str) -> int:
            n = cache.get(piece)
            if n is None:
                n = cache[str(piece)] = self.count_tokens(piece)
            return n

        return count


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
