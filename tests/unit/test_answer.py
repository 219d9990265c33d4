"""Citations in answers: only markers that name a given source reach the client, streamed or not."""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from services.rag.answer import CitationFilter, cited_numbers, drop_invalid_markers


@pytest.mark.parametrize(
    ("text", "n", "expected"),
    [
        ("Cats purr [1].", 2, "Cats purr [1]."),
        ("Cats purr [7].", 2, "Cats purr ."),
        ("See [1, 3] and [2][9].", 2, "See [1] and [2]."),
        ("An array [a, b] and [ ] stay.", 1, "An array [a, b] and [ ] stay."),
        ("Nested [[1]] marker", 1, "Nested [[1]] marker"),
        ("No sources [1]", 0, "No sources "),
    ],
)
def test_drop_invalid_markers(text: str, n: int, expected: str) -> None:
    assert drop_invalid_markers(text, n) == expected


def test_cited_numbers_in_order_without_repeats() -> None:
    assert cited_numbers("a [2] b [1, 2] c [3][1]") == [2, 1, 3]
    assert cited_numbers("no markers, [x] or [ ]") == []


def stream_through(text: str, n: int, cuts: list[int]) -> str:
    f = CitationFilter(n)
    pieces, last = [], 0
    for cut in [*sorted(set(cuts)), len(text)]:
        pieces.append(f.feed(text[last:cut]))
        last = cut
    return "".join(pieces) + f.flush()


@given(
    st.lists(st.sampled_from(["word ", "[1]", "[2]", "[9]", "[1, 9]", "[", "]", "[x]", "1", ",", " ", "[[2]]"]),
             max_size=30),  # fmt: skip
    st.integers(0, 3),
    st.integers(0, 2**32),
)
@settings(max_examples=200, deadline=None)
def test_streaming_filter_equals_whole_text_filter(parts: list[str], n: int, seed: int) -> None:
    text = "".join(parts)
    rng = random.Random(seed)
    cuts = [rng.randrange(len(text) + 1) for _ in range(rng.randrange(6))]
    assert stream_through(text, n, cuts) == drop_invalid_markers(text, n)


def test_filter_holds_back_only_a_possible_marker() -> None:
    f = CitationFilter(2)
    assert f.feed("Cats purr [") == "Cats purr "
    assert f.feed("1") == ""
    assert f.feed("] and sleep [3") == "[1] and sleep "
    assert f.feed("] a lot.") == " a lot."
    assert f.feed(" [note: long aside]") == " [note: long aside]"
