"""Quotes: the sentence of each cited source that supports the answer sentence citing it."""

from __future__ import annotations

from collections.abc import Sequence

import pytest

from inferag_protocol.rag import Hit
from services.rag.citations import Quotable, choose_quotes, claims
from tests.unit.test_agent_doubles import bag_of_words

TEXT = ("BERT Large compte 24 couches. Il a environ 340 millions de paramètres. "
        "BERT Base compte 12 couches ! Il a 110 millions de paramètres.")  # fmt: skip


async def embed(texts: Sequence[str]) -> list[list[float]]:
    return bag_of_words(texts, 512)


def source(text: str, start: int = 0) -> Quotable:
    return Quotable.of(Hit(id="a", doc_id="a", chunk_index=0, text=text, start=start, end=start + len(text),
                           collection="c", score=1.0))  # fmt: skip


def test_claims_keep_marker_only_sentences_with_the_one_before() -> None:
    assert claims("It lasts 41 hours. [1] The other lasts 17 hours [2]. Done.") == [
        ("It lasts 41 hours.", [1]),
        ("The other lasts 17 hours .", [2]),
    ]
    assert claims("Only markers [1]. [2]") == [("Only markers .", [1, 2])]
    assert claims("[3] First.") == [
        ("First.", [3]),
    ]


@pytest.mark.asyncio
@pytest.mark.parametrize("use_embeddings", [True, False])
async def test_each_cited_source_gets_the_sentence_closest_to_its_claim(use_embeddings: bool) -> None:
    answer = "BERT Large a environ 340 millions de paramètres [1]. BERT Base en a 110 millions de paramètres [2]."
    quotes = await choose_quotes(answer, {1: source(TEXT, 50), 2: source(TEXT)}, embed if use_embeddings else None)
    assert quotes[1].text == "Il a environ 340 millions de paramètres."
    assert quotes[2].text == "Il a 110 millions de paramètres."
    assert TEXT[quotes[1].start - 50 : quotes[1].end - 50] == quotes[1].text
    assert TEXT[quotes[2].start : quotes[2].end] == quotes[2].text


@pytest.mark.asyncio
async def test_uncited_or_unknown_sources_get_no_quote() -> None:
    assert await choose_quotes("No markers here.", {1: source(TEXT)}, embed) == {}
    assert await choose_quotes("Cites a stranger [7].", {1: source(TEXT)}, embed) == {}
