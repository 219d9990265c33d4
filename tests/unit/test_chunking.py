"""The RAG chunker on the real all-MiniLM-L6-v2 tokenizer (and its model for the semantic strategy)."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import os
import random
import threading
import time
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError
from transformers import AutoTokenizer

from services.common.errors import InvalidRequest
from services.embeddings.models import packaged_folder
from services.rag.chunking import Chunker, ChunkingParams, parse_chunking
from tests.chunk_texts import FRENCH, PATHOLOGICAL, TOPICS, assert_chunks, real_texts

MODEL = packaged_folder("all-minilm-l6-v2")
LIMIT = 254  # 256 positions minus [CLS] and [SEP]
SPLITTING = ["fixed", "overlap", "recursive", "markdown"]


async def hash_embed(texts: list[str]) -> list[list[float]]:
    """Deterministic stand-in vectors, for properties that do not depend on meaning."""
    return [list(np.frombuffer(hashlib.sha256(t.encode()).digest(), dtype=np.uint8) / 255.0) for t in texts]


@pytest.fixture(scope="module")
def chunker() -> Chunker:
    return Chunker.for_model(MODEL, embed=hash_embed)


@pytest.fixture(scope="module")
def semantic_chunker() -> Chunker:
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(MODEL), device="cpu")

    async def embed(texts: list[str]) -> list[list[float]]:
        return (await asyncio.to_thread(model.encode, texts)).tolist()

    return Chunker.for_model(MODEL, embed=embed)


def test_limit_and_count_match_the_model_tokenizer(chunker: Chunker) -> None:
    assert chunker.max_tokens == LIMIT
    tokenizer = AutoTokenizer.from_pretrained(str(MODEL))
    for text in (FRENCH, "Hello, world!", "日本語 😀 e\u0301"):
        assert chunker.count_tokens(text) == len(tokenizer(text, add_special_tokens=False)["input_ids"])


def test_counts_ignore_truncation_left_in_a_shared_tokenizer() -> None:
    tokenizer = AutoTokenizer.from_pretrained(str(MODEL))
    tokenizer(FRENCH, truncation=True, max_length=8)  # leaves truncation on in the backend
    chunker = Chunker(tokenizer, LIMIT)
    assert chunker.count_tokens(FRENCH) > 100


@pytest.mark.asyncio
@pytest.mark.parametrize("strategy", [*SPLITTING, "semantic"])
@pytest.mark.parametrize("name", ["readme", "weights_readme", "french"])
@pytest.mark.parametrize(("size", "overlap"), [(16, 4), (64, 16), (200, None), (LIMIT, 100)])
async def test_real_texts_are_covered_by_exact_slices(
    chunker: Chunker, strategy: str, name: str, size: int, overlap: int | None
) -> None:
    source = real_texts()[name]
    args: dict[str, Any] = {"strategy": strategy, "chunk_size": size}
    if overlap is not None and strategy in ("overlap", "recursive", "markdown"):
        args["chunk_overlap"] = overlap
    chunks = await chunker.chunk(source, ChunkingParams(**args))
    assert len(chunks) > (1 if size < LIMIT or name != "french" else 0)
    assert_chunks(source, chunks, size, chunker.count_tokens)


@pytest.mark.asyncio
@pytest.mark.parametrize("strategy", [*SPLITTING, "semantic"])
@pytest.mark.parametrize("name", sorted(PATHOLOGICAL))
async def test_pathological_texts_stay_under_the_model_limit(chunker: Chunker, strategy: str, name: str) -> None:
    source = PATHOLOGICAL[name]
    for size in (16, LIMIT):
        chunks = await chunker.chunk(source, ChunkingParams(strategy=strategy, chunk_size=size))
        assert_chunks(source, chunks, size, chunker.count_tokens)


def test_unk_words_count_differently_alone(chunker: Chunker) -> None:
    # Guards the pathological case above: cutting a long word must raise its count, or the re-count is untested.
    word = PATHOLOGICAL["unk_words"].split()[0]
    assert chunker.count_tokens(word) == 1
    assert chunker.count_tokens(word[:60]) + chunker.count_tokens(word[60:]) > 2


# Characters chosen to hit every code path: separators, fences, headings, CJK, emoji, marks, control.
ALPHABET = st.sampled_from(
    list("abcdefgh   \n\n\r\n\t.!?,;#`~-|")
    + ["\r\n", "\n\n", "## ", "```", "日", "本", "😀", "👍🏽", "e\u0301", "\u200b", "\x00", "é", "ß", "ﬁ", "İ"]
    + ["supercalifragilistic", "x" * 120, "#" * 7, "http://example.com/a/b?c=d"]
)
TEXTS = st.lists(ALPHABET, max_size=400).map("".join)


@pytest.mark.asyncio
@settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    text=TEXTS,
    strategy=st.sampled_from([*SPLITTING, "semantic"]),
    size=st.integers(16, LIMIT),
    overlap_ratio=st.floats(0, 0.9),
    separators=st.none() | st.lists(st.sampled_from(["\n\n", "\n", ". ", " ", "", "#", "日"]), min_size=1, max_size=4),
)
async def test_random_texts(
    chunker: Chunker, text: str, strategy: str, size: int, overlap_ratio: float, separators: list[str] | None
) -> None:
    args: dict[str, Any] = {"strategy": strategy, "chunk_size": size}
    if strategy in ("overlap", "recursive", "markdown"):
        args["chunk_overlap"] = int(size * overlap_ratio)
    if strategy in ("recursive", "markdown"):
        args["separators"] = separators
    chunks = await chunker.chunk(text, ChunkingParams(**args))
    assert_chunks(text, chunks, size, chunker.count_tokens)
    assert (chunks == []) == (text.strip() == "")


@pytest.mark.asyncio
@pytest.mark.parametrize("strategy", [*SPLITTING, "semantic"])
async def test_blank_text_gives_no_chunks(chunker: Chunker, strategy: str) -> None:
    for text in ("", "   ", "\n\r\n\t "):
        assert await chunker.chunk(text, ChunkingParams(strategy=strategy)) == []


@pytest.mark.asyncio
async def test_fixed_windows_are_full_and_back_to_back(chunker: Chunker) -> None:
    source = FRENCH * 3
    chunks = await chunker.chunk(source, ChunkingParams(strategy="fixed", chunk_size=50))
    # Windows end where a word starts, so they hold the asked tokens less at most a word.
    assert all(45 <= c.tokens <= 50 for c in chunks[:-1]), [c.tokens for c in chunks]
    assert sum(c.tokens for c in chunks) == chunker.count_tokens(source)
    for a, b in zip(chunks, chunks[1:], strict=False):
        assert a.end <= b.start and not source[a.end : b.start].strip()


@pytest.mark.asyncio
@pytest.mark.parametrize(("size", "overlap"), [(50, None), (100, 30), (200, 120)])
async def test_overlap_windows_share_about_the_asked_tokens(chunker: Chunker, size: int, overlap: int | None) -> None:
    source = FRENCH * 3
    extra = {} if overlap is None else {"chunk_overlap": overlap}
    params = ChunkingParams(strategy="overlap", chunk_size=size, **extra)
    expected = size // 5 if overlap is None else overlap
    assert params.chunk_overlap == expected
    chunks = await chunker.chunk(source, params)
    assert len(chunks) >= 3
    for a, b in zip(chunks, chunks[1:], strict=False):
        shared = chunker.count_tokens(source[b.start : a.end]) if b.start < a.end else 0
        # The next window starts on a word, so it shares the asked tokens less at most a word.
        assert expected - 4 <= shared <= expected, (shared, expected)


@pytest.mark.asyncio
async def test_recursive_offsets_are_exact_when_text_repeats(chunker: Chunker) -> None:
    # Repeated paragraphs defeat str.find: LangChain's own add_start_index misplaces chunks of this text.
    paragraphs = ["The same short paragraph, again and again.", "Another one follows it."] * 30
    source = "\n\n".join(paragraphs)
    chunks = await chunker.chunk(source, ChunkingParams(strategy="recursive", chunk_size=40, chunk_overlap=20))
    assert_chunks(source, chunks, 40, chunker.count_tokens)
    starts = [c.start for c in chunks]
    assert starts == sorted(set(starts))
    assert chunks[-1].end == len(source)
    assert any(b.start < a.end for a, b in zip(chunks, chunks[1:], strict=False)), "no overlap at all"


@pytest.mark.asyncio
async def test_recursive_keeps_paragraphs_whole_when_they_fit(chunker: Chunker) -> None:
    source = FRENCH
    paragraphs = source.split("\n\n")
    size = max(chunker.count_tokens(p) for p in paragraphs)
    chunks = await chunker.chunk(source, ChunkingParams(chunk_size=size))
    starts = {source.index(p) for p in paragraphs}
    assert all(c.start in starts for c in chunks)
    assert len(chunks) < len(paragraphs) + 1


@pytest.mark.asyncio
async def test_recursive_custom_separators_are_literal(chunker: Chunker) -> None:
    source = " | ".join(f"part {i} has a few words in it." for i in range(40))
    chunks = await chunker.chunk(source, ChunkingParams(chunk_size=20, separators=["|"]))
    assert_chunks(source, chunks, 20, chunker.count_tokens)
    assert all(c.text.startswith(("part", "| part")) for c in chunks)
    assert all(c.text.endswith("in it.") for c in chunks)


MARKDOWN = """Intro before any heading.

# Guide

Welcome to the guide.

## Install

Run the installer:

```bash
# this is a shell comment, not a heading
pip install inferag
```

~~~
## not a heading either
~~~

### Linux ###

Use the package manager.

## Usage

Call the API.

# Reference
## API
### Chunking

Chunk texts.
#hashtag is not a heading
"""


@pytest.mark.asyncio
async def test_markdown_heading_paths(chunker: Chunker) -> None:
    chunks = await chunker.chunk(MARKDOWN, ChunkingParams(strategy="markdown"))
    assert_chunks(MARKDOWN, chunks, 200, chunker.count_tokens)
    assert [(c.text.splitlines()[0], c.metadata["headings"]) for c in chunks] == [
        ("Intro before any heading.", []),
        ("# Guide", ["Guide"]),
        ("## Install", ["Guide", "Install"]),
        ("### Linux ###", ["Guide", "Install", "Linux"]),
        ("## Usage", ["Guide", "Usage"]),
        # Headings with nothing under them but a subheading stay with it.
        ("# Reference", ["Reference", "API", "Chunking"]),
    ]
    install = chunks[2].text
    assert "# this is a shell comment" in install and "## not a heading either" in install
    assert chunks[-1].text.endswith("#hashtag is not a heading")


@pytest.mark.asyncio
async def test_markdown_splits_big_sections_and_keeps_their_path(chunker: Chunker) -> None:
    source = "# Story\n\n## Village\n\n" + FRENCH + "\n\n## End\n\nFin."
    chunks = await chunker.chunk(source, ChunkingParams(strategy="markdown", chunk_size=40))
    assert_chunks(source, chunks, 40, chunker.count_tokens)
    paths = [c.metadata["headings"] for c in chunks]
    assert paths[0] == ["Story", "Village"] and paths[-1] == ["Story", "End"]
    assert paths.count(["Story", "Village"]) >= 5


@pytest.mark.asyncio
@pytest.mark.slow
async def test_semantic_cuts_at_topic_changes(semantic_chunker: Chunker) -> None:
    source = " ".join(" ".join(topic) for topic in TOPICS)
    chunks = await semantic_chunker.chunk(source, ChunkingParams(strategy="semantic", breakpoint_percentile=80))
    assert [c.text for c in chunks] == [" ".join(topic) for topic in TOPICS]
    # A higher percentile cuts less, and only where a topic changes.
    fewer = await semantic_chunker.chunk(source, ChunkingParams(strategy="semantic", breakpoint_percentile=95))
    assert 1 <= len(fewer) < 3
    assert {c.start for c in fewer} <= {c.start for c in chunks}


@pytest.mark.asyncio
@pytest.mark.slow
async def test_semantic_groups_are_capped(semantic_chunker: Chunker) -> None:
    source = " ".join(" ".join(topic) for topic in TOPICS) * 3
    chunks = await semantic_chunker.chunk(source, ChunkingParams(strategy="semantic", chunk_size=30))
    assert_chunks(source, chunks, 30, semantic_chunker.count_tokens)
    assert max(c.tokens for c in chunks) > 15  # sentences were grouped, not left one by one


@pytest.mark.asyncio
async def test_semantic_needs_an_embedder() -> None:
    chunker = Chunker.for_model(MODEL)
    with pytest.raises(InvalidRequest) as err:
        await chunker.chunk(FRENCH, ChunkingParams(strategy="semantic"))
    assert err.value.param == "chunking.strategy"


@pytest.mark.parametrize(
    "bad",
    [
        {"chunk_size": 8},
        {"chunk_size": 100, "chunk_overlap": 100},
        {"strategy": "overlap", "chunk_size": 20, "chunk_overlap": 30},
        {"chunk_overlap": -1},
        {"strategy": "sentences"},
        {"breakpoint_percentile": 40, "strategy": "semantic"},
        {"breakpoint_percentile": 99.5, "strategy": "semantic"},
        {"breakpoint_percentile": 80},
        {"strategy": "fixed", "chunk_overlap": 10},
        {"strategy": "fixed", "separators": ["\n"]},
        {"separators": []},
        {"size": 100},
    ],
)
def test_invalid_params(bad: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        ChunkingParams(**bad)
    with pytest.raises(InvalidRequest) as err:
        parse_chunking(bad)
    assert err.value.param is not None and err.value.param.startswith("chunking")


def test_parse_names_the_field() -> None:
    with pytest.raises(InvalidRequest) as err:
        parse_chunking({"chunk_size": 8})
    assert err.value.param == "chunking.chunk_size"
    assert parse_chunking(None) == ChunkingParams()


@pytest.mark.asyncio
async def test_chunk_size_over_the_model_limit(chunker: Chunker) -> None:
    with pytest.raises(InvalidRequest) as err:
        await chunker.chunk(FRENCH, ChunkingParams(chunk_size=LIMIT + 1))
    assert err.value.param == "chunking.chunk_size"
    assert str(LIMIT) in err.value.message


@pytest.mark.asyncio
async def test_default_size_shrinks_to_a_smaller_model() -> None:
    small = Chunker.for_model(MODEL, max_input_tokens=64)
    assert small.max_tokens == 62
    for strategy in ("recursive", "overlap"):
        chunks = await small.chunk(FRENCH, ChunkingParams(strategy=strategy))
        assert_chunks(FRENCH, chunks, 62, small.count_tokens)
        assert max(c.tokens for c in chunks) > 40


@pytest.mark.asyncio
@pytest.mark.parametrize("strategy", SPLITTING)
async def test_a_megabyte_is_fast_and_off_the_event_loop(chunker: Chunker, strategy: str) -> None:
    # A fixed size: the README is one of the texts, and it grows (at 35 copies it had reached 4.3 MB).
    text = "\n\n".join(real_texts().values())
    source = (text * (1_200_000 // len(text) + 1))[:1_200_000]
    ticks: list[float] = []
    done = asyncio.Event()

    async def tick() -> None:
        while not done.is_set():
            ticks.append(time.perf_counter())
            await asyncio.sleep(0.01)

    ticker = asyncio.create_task(tick())
    began = time.perf_counter()
    chunks = await chunker.chunk(source, ChunkingParams(strategy=strategy))
    elapsed = time.perf_counter() - began
    done.set()
    await ticker
    assert elapsed < 10
    # Tokenizing on the loop would stall it for about the whole run; off it, the longest stall is a GIL
    # hand-over, which a loaded 2-core machine can stretch past 0.5 s: compare with the run's length.
    assert max(np.diff(ticks)) < max(0.5, elapsed / 2), "the event loop was blocked"
    assert chunks[-1].end > len(source) - 100
    assert max(c.tokens for c in chunks) <= 200


def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


WHITESPACE_FREE = {
    # base64: words split at + and /, and no separator of the recursive splitter anywhere
    "base64": lambda n: base64.b64encode(random.Random(0).randbytes(n)).decode()[:n],
    # every character a word of its own, no sentence end
    "cjk": lambda n: ("日本語のテキストを分割します" * (n // 14 + 1))[:n],
}


@pytest.mark.asyncio
@pytest.mark.parametrize("strategy", [*SPLITTING, "semantic"])
@pytest.mark.parametrize("kind", sorted(WHITESPACE_FREE))
async def test_whitespace_free_text_in_bounded_time_and_memory(chunker: Chunker, strategy: str, kind: str) -> None:
    """Text with no whitespace was cut into one piece per character before merging (a 20 MB upload:
    tens of millions of objects, gigabytes, under the GIL); now it is cut by tokenizer offsets."""
    source = WHITESPACE_FREE[kind](400_000)
    began = time.perf_counter()
    chunker.count_tokens(source)  # what tokenizing it once costs on this machine now
    once = time.perf_counter() - began
    base, peak, done = _rss(), [0], threading.Event()

    def watch() -> None:
        while not done.is_set():
            peak[0] = max(peak[0], _rss())
            time.sleep(0.005)

    watcher = threading.Thread(target=watch)
    watcher.start()
    began = time.perf_counter()
    try:
        chunks = await chunker.chunk(source, ChunkingParams(strategy=strategy))
    finally:
        done.set()
        watcher.join()
    elapsed = time.perf_counter() - began
    # before: 230 MB more for these 400 kB (a piece per character), 11 GB for 20 MB
    assert peak[0] - base < 100 * 2**20, f"{(peak[0] - base) / 2**20:.0f} MB more while chunking"
    assert elapsed < 4 * once + 5, f"{elapsed:.1f} s, tokenizing it once: {once:.1f} s"
    assert_chunks(source, chunks, 200, chunker.count_tokens)
    assert min(c.tokens for c in chunks[:-1]) > 100  # windows of about the size asked, not of characters
