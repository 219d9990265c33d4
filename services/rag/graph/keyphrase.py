"""The model-free extractor: capitalised noun phrases and keyphrases as entities, co-occurrence as relations.

Close to what Microsoft GraphRAG's FastGraphRAG does without an LLM (noun phrases, co-occurrence in a
text unit), in plain Python so it keeps up with ingestion (YAKE itself measured ~100 chunks/s of CPU
here: too slow to run on every chunk). Per chunk:

- names: runs of capitalised words or acronyms ("Tessaly Chamber Orchestra", "GPT-3", "LoRA"),
  lowercase connectors allowed inside ("Institut de Recherche", "Bank of England"); a capitalised
  word that only opens a sentence counts when the chunk also writes it capitalised elsewhere;
- keyphrases: RAKE candidates (runs of content words between stopwords and punctuation), the
  best few by RAKE's degree/frequency score;
- relations: two entities in one sentence, that sentence as the description.

Stopwords are those of the chunk's language (guessed among the 34 lists YAKE ships), which is
what keeps it language-independent.
"""

from __future__ import annotations

import asyncio
import re
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass

from .text import entity_key, guess_language, stopwords
from .types import ChunkGraph, EntityMention, RelationMention

# a word, a sentence end (. ! ? … before a space, a blank line or a bullet line), or phrase punctuation
_TOKEN = re.compile(
    r"(?P<word>\w+(?:[-.]\w+)*)"
    r"|(?P<end>[.!?…]+(?=\s|$)|\n)"
    r"|(?P<punct>[,;:()\[\]{}\"«»“”/|*#$=+<>–—•])"
)
# lowercase words allowed between two capitalised ones inside a name ("Institut de Recherche", "Bank of England",
# "Centre for Language Technology"; "&" is no word, so "Starling & Rowe" is one run anyway); not "and", "on",
# "sur": they join two names as often as not
_CONNECTORS = frozenset({"de", "du", "des", "d", "la", "le", "les", "l", "of", "the", "for", "von", "van", "der",
                         "den", "di", "da", "del", "dos", "y", "zu", "upon"})
_ABBREVIATIONS = frozenset({"dr", "mr", "mrs", "ms", "st", "prof", "mme", "mlle", "pr", "jr", "sr", "vs", "no", "cf",
                            "e.g", "i.e", "etc", "fig", "inc", "ltd", "co", "mt"})
NAME = "NAME"
CONCEPT = "CONCEPT"
MAX_NAME_WORDS = 6
MAX_PHRASE_WORDS = 3
MAX_NAMES = 16
MAX_RELATED_PER_SENTENCE = 8
MAX_DESCRIPTION = 160


@dataclass
class _Word:
    text: str
    start: int
    end: int
    lower: str
    sentence: int
    first: bool  # opens its sentence
    broken: bool  # punctuation right before it (no phrase spans it)
    stop: bool
    capital: bool
    acronym: bool
    number: bool


def _is_acronym(word: str) -> bool:
    """GRU, GPT-3, LoRA, GSM8K, iPhone: capitals after the first letter, or letters mixed with digits."""
    letters = [c for c in word if c.isalpha()]
    if not letters:
        return False
    inner_caps = sum(c.isupper() for c in word[1:])
    return inner_caps >= 1 or (any(c.isdigit() for c in word) and word[0].isupper())


def _words(text: str) -> tuple[list[_Word], list[tuple[int, int]], str]:
    """The words of a chunk with their flags, each sentence's (start, end) offsets, and its language."""
    tokens = list(_TOKEN.finditer(text))
    raw = [m.group("word") for m in tokens if m.group("word")]
    language = guess_language([w.casefold() for w in raw[:200]])
    stop = stopwords(language)
    words: list[_Word] = []
    sentences: list[tuple[int, int]] = []
    sentence, sentence_start, first, broken = 0, 0, True, True
    previous = ""
    for m in tokens:
        word = m.group("word")
        if word is None:
            end = m.group("end")
            is_end = end is not None and (end == "\n" or not (end == "." and _abbreviation(previous)))
            if is_end:
                if words and words[-1].sentence == sentence:
                    sentences.append((sentence_start, m.end()))
                    sentence += 1
                first = True
                sentence_start = m.end()
            broken = True
            continue
        if word in ("s", "S") and m.start() and text[m.start() - 1] in "'’":
            continue  # an English possessive: "World's Fair" stays one name
        if m.start() and text[m.start() - 1] == "\\":  # a LaTeX command (\cdot, \frac): not a word
            broken = True
            continue
        lower = word.casefold()
        number = not any(c.isalpha() for c in word)
        if first:
            sentence_start = m.start()
        words.append(_Word(word, m.start(), m.end(), lower, sentence, first, broken, lower in stop,
                           word[0].isupper() and not number, _is_acronym(word), number))
        first = broken = False
        previous = word
    if words and words[-1].sentence == sentence:
        sentences.append((sentence_start, len(text)))
    return words, sentences, language


def _abbreviation(word: str) -> bool:
    return (len(word) == 1 and word.isupper()) or word.casefold() in _ABBREVIATIONS


def _names(words: list[_Word]) -> list[tuple[int, int]]:
    """Spans (first, last word index) of capitalised names."""
    lowered = {w.lower for w in words if not w.capital}
    inner_caps = {w.lower for w in words if w.capital and not w.first}
    spans: list[tuple[int, int]] = []
    i, n = 0, len(words)
    while i < n:
        w = words[i]
        if not (w.capital or w.acronym) or w.stop and not w.acronym:
            i += 1
            continue
        last = i
        j = i + 1
        while j < n and words[j].sentence == w.sentence and not words[j].broken and j - i < MAX_NAME_WORDS:
            nxt = words[j]
            if (nxt.capital or nxt.acronym) and not (nxt.stop and not nxt.acronym):
                last = j
                j += 1
                continue
            # up to two connectors, then a capitalised word
            k = j
            while k < n and k - j < 2 and words[k].lower in _CONNECTORS and not words[k].capital \
                    and not words[k].broken:
                k += 1
            if k > j and k < n and not words[k].broken and (words[k].capital or words[k].acronym) \
                    and not words[k].stop:
                last = k
                j = k + 1
                continue
            break
        start = i
        # a sentence's first word is capitalised anyway: part of a name only if not written lowercase elsewhere
        if words[start].first and not words[start].acronym and words[start].lower in lowered:
            start += 1
        if start <= last:
            single = start == last
            if not (single and words[start].first and not words[start].acronym
                    and words[start].lower not in inner_caps):
                spans.append((start, last))
        i = last + 1
    return spans


def _keyphrases(words: list[_Word], limit: int) -> list[tuple[int, int]]:
    """The `limit` best keyphrases as word spans: single content words and pairs of adjacent ones (runs between
    stopwords, numbers, names and punctuation, as RAKE splits them), the most frequent first; a pair beats a
    word only when it comes back (a pair seen once is as often a noun and its verb as a term)."""
    counts: Counter[tuple[str, ...]] = Counter()
    first: dict[tuple[str, ...], tuple[int, int]] = {}
    previous: int | None = None
    for i, w in enumerate(words):
        content = not (w.stop or w.number or w.capital or w.acronym) and sum(c.isalpha() for c in w.text) >= 3
        if not content:
            previous = None
            continue
        joined = previous is not None and not w.broken and words[previous].sentence == w.sentence
        grams: list[tuple[tuple[str, ...], tuple[int, int]]] = [((w.lower,), (i, i))]
        if joined:
            assert previous is not None
            grams.append(((words[previous].lower, w.lower), (previous, i)))
        for gram, span in grams:
            counts[gram] += 1
            first.setdefault(gram, span)
        previous = i
    def score(gram: tuple[str, ...]) -> float:
        n = counts[gram]
        return n * 1.5 if len(gram) == 2 and n >= 2 else n * (1.0 if len(gram) == 1 else 0.9)
    best = sorted(counts, key=lambda g: (-score(g), first[g][0]))[:limit]
    return [first[g] for g in best]


def _sentence_text(text: str, span: tuple[int, int]) -> str:
    sentence = " ".join(text[span[0]:span[1]].split()).strip(" -*#")
    return sentence if len(sentence) <= MAX_DESCRIPTION else sentence[: MAX_DESCRIPTION - 1].rstrip() + "…"


def extract_chunk(text: str, keyphrases: int = 8) -> ChunkGraph:
    """Entities and relations of one chunk (see the module docstring)."""
    words, sentences, language = _words(text)
    if not words:
        return ChunkGraph()
    found: dict[str, EntityMention] = {}
    by_sentence: dict[int, list[str]] = defaultdict(list)
    spans = [(s, NAME) for s in _names(words)[: MAX_NAMES * 2]]
    spans += [(s, CONCEPT) for s in _keyphrases(words, keyphrases)]
    names = 0
    for (first, last), kind in spans:
        surface = text[words[first].start:words[last].end]
        key = entity_key(surface, language)
        if not key or key.replace(" ", "").isdigit():
            continue
        if key not in found:
            if kind == NAME:
                if names >= MAX_NAMES:
                    continue
                names += 1
            found[key] = EntityMention(name=surface, type=kind)
        sentence = words[first].sentence
        if key not in by_sentence[sentence]:
            by_sentence[sentence].append(key)
    relations: dict[tuple[str, str], RelationMention] = {}
    for sentence, keys in by_sentence.items():
        ordered = sorted(keys, key=lambda k: text.find(found[k].name))
        if len(ordered) < 2:
            continue
        description = _sentence_text(text, sentences[sentence]) if sentence < len(sentences) else ""
        for i, a in enumerate(ordered):
            partners = ordered[i + 1:] if len(ordered) <= MAX_RELATED_PER_SENTENCE else ordered[i + 1:i + 4]
            for b in partners:
                pair = (a, b) if a < b else (b, a)
                if pair in relations:
                    old = relations[pair]
                    relations[pair] = RelationMention(old.source, old.target, old.description, old.weight + 1)
                else:
                    relations[pair] = RelationMention(found[a].name, found[b].name, description)
    return ChunkGraph(entities=list(found.values()), relations=list(relations.values()), language=language)


class KeyphraseExtractor:
    """The model-free extractor; CPU work runs in a thread, off the event loop."""

    mode = "keyphrase"
    embed_descriptions = False  # its entities have no description worth embedding

    def __init__(self, keyphrases: int = 8):
        self.keyphrases = keyphrases

    def extract_sync(self, texts: Sequence[str]) -> list[ChunkGraph]:
        return [extract_chunk(t, self.keyphrases) for t in texts]

    async def extract(self, texts: Sequence[str]) -> list[ChunkGraph]:
        return await asyncio.to_thread(self.extract_sync, list(texts))
