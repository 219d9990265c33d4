"""Texts and the invariant check for chunker tests (ingestion tests can reuse `assert_chunks`)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

from inferag_protocol.rag import Chunk

ROOT = Path(__file__).resolve().parents[1]

FRENCH = """Le château se dressait au sommet de la colline, entouré de vignes et de vergers. \
Chaque été, les enfants du village y montaient en courant pour cueillir des cerises mûres.

La rivière, qu'on appelait la Sèvre, serpentait paresseusement à travers la vallée. Les pêcheurs \
s'installaient sur ses rives dès l'aube, espérant attraper une truite ou un brochet. « Ça mord ? » \
demandait-on en passant ; on répondait toujours « pas encore », même les jours de pêche miraculeuse.

Au marché du samedi, on trouvait des fromages affinés, du pain de campagne encore tiède, des \
œufs frais et des pêches juteuses. Les marchands, venus de Nîmes, d'Orléans ou de Besançon, \
vantaient leurs produits à voix haute. Hélène, la boulangère, connaissait le prénom de chacun \
et n'oubliait jamais de demander des nouvelles de la famille.

L'hiver venu, la neige recouvrait les toits d'ardoise et les cheminées fumaient du matin au soir. \
On se réunissait autour du poêle pour écouter les histoires de l'aïeul, qui racontait la guerre, \
les moissons d'antan et les fêtes où l'on dansait jusqu'à l'aurore."""

# One topic per paragraph-less block of sentences: a semantic chunker should cut exactly between them.
TOPICS = [
    [
        "Boil a large pot of salted water before adding the pasta.",
        "Cook the spaghetti for about ten minutes until it is al dente.",
        "Meanwhile, fry garlic in olive oil and add crushed tomatoes.",
        "Drain the pasta and toss it with the tomato sauce and basil.",
    ],
    [
        "Jupiter is the largest planet in the solar system.",
        "Its Great Red Spot is a storm larger than the Earth.",
        "Saturn, the next planet out, is famous for its bright rings.",
        "Both gas giants have dozens of moons orbiting them.",
    ],
    [
        "The striker scored twice in the second half of the match.",
        "The goalkeeper saved a penalty in the final minute.",
        "After the whistle, the fans celebrated the team's victory in the stadium.",
        "The coach praised the defenders for their discipline.",
    ],
]

# Inputs that break naive splitters: no separators at all, tokens that merge or vanish, odd line ends.
PATHOLOGICAL = {
    "long_word": "x" * 5000,
    "long_word_in_text": "start " + "ab" * 2500 + " end",
    "punctuation": "!?.,;:" * 800,
    "cjk": "日本語のテキストを分割します。" * 300,
    "emoji": "😀🎉👍🏽" * 700,
    "combining": "e\u0301a\u0300o\u0302" * 900,
    "crlf": "line one\r\nline two\r\n\r\n" * 400,
    "control_and_zero_width": "a\u200bb\x00c\u200d" * 600,
    # Words over 100 characters are one [UNK] in context but many pieces once cut: counts differ alone.
    "unk_words": " ".join(("w" * 90 + "y" * 30 + str(i)) for i in range(300)),
}


def real_texts() -> dict[str, str]:
    return {
        "readme": (ROOT / "README.md").read_text(encoding="utf-8"),
        "weights_readme": (ROOT / "services/generation/weights/README.md").read_text(encoding="utf-8"),
        "french": FRENCH,
    }


def assert_chunks(source: str, chunks: Sequence[Chunk], limit: int, count: Callable[[str], int]) -> None:
    """Exact slices, stripped, in order, within `limit` tokens counted alone, covering all non-space text."""
    covered = bytearray(len(source) + 1)
    previous = (-1, -1)
    for chunk in chunks:
        assert source[chunk.start : chunk.end] == chunk.text, chunk
        assert chunk.text and chunk.text == chunk.text.strip(), chunk
        assert (chunk.start, chunk.end) >= previous, f"out of order: {previous} then {chunk.start, chunk.end}"
        previous = (chunk.start, chunk.end)
        assert chunk.tokens == count(chunk.text), chunk
        assert chunk.tokens <= limit, f"{chunk.tokens} > {limit}: {chunk.text[:80]!r}"
        covered[chunk.start : chunk.end] = b"\x01" * (chunk.end - chunk.start)
    missed = [i for i, ch in enumerate(source) if not covered[i] and not ch.isspace()]
    assert not missed, f"{len(missed)} characters uncovered, from {source[missed[0] : missed[0] + 40]!r}"
