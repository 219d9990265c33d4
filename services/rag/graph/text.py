"""Language-independent text handling for the graph: stopword lists, language guess, entity keys.

Stopwords come from the lists YAKE ships (34 languages); the language of a text is the list its
words hit most. An entity's key is its name casefolded, without accents, punctuation, leading
or trailing stopwords and a plural `s`, so "the Transformers", "Transformer" and "transformer"
are one entity.
"""

from __future__ import annotations

import functools
import re
import unicodedata
import uuid
from collections import Counter
from importlib import resources

_NAMESPACE = uuid.UUID("0f6d8e0a-3c55-4f5e-9b1d-7a4d2c9e6b31")
# Words: letters/digits with inner hyphens or dots ("GPT-3", "v2.1"); apostrophes split ("l'attention").
WORD = re.compile(r"\w+(?:[-.]\w+)*")
_KEY_WORD = re.compile(r"[^\W_]+")
DEFAULT_LANGUAGE = "en"


@functools.cache
def stopword_lists() -> dict[str, frozenset[str]]:
    """{language code: stopwords} from the lists packaged with YAKE."""
    folder = resources.files("yake.core").joinpath("StopwordsList")
    lists: dict[str, frozenset[str]] = {}
    for entry in folder.iterdir():
        name = entry.name
        if not (name.startswith("stopwords_") and name.endswith(".txt")) or name == "stopwords_noLang.txt":
            continue
        raw = entry.read_bytes()
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:  # a few of YAKE's lists are Latin-1
            text = raw.decode("latin-1")
        words = text.split()
        lists[name[len("stopwords_"):-len(".txt")]] = frozenset(w.casefold() for w in words)
    return lists


@functools.cache
def _languages_of() -> dict[str, tuple[str, ...]]:
    index: dict[str, list[str]] = {}
    for lang, words in stopword_lists().items():
        for word in words:
            index.setdefault(word, []).append(lang)
    return {word: tuple(langs) for word, langs in index.items()}


def guess_language(words: list[str]) -> str:
    """The language whose stopwords the (casefolded) words hit most; English when none is hit."""
    index = _languages_of()
    hits: Counter[str] = Counter()
    for word in words:
        hits.update(index.get(word, ()))
    if not hits:
        return DEFAULT_LANGUAGE
    best = max(hits.values())
    # a tie goes to English, then French (the project's two languages), then any
    for preferred in (DEFAULT_LANGUAGE, "fr"):
        if hits.get(preferred) == best:
            return preferred
    return hits.most_common(1)[0][0]


def stopwords(language: str) -> frozenset[str]:
    return stopword_lists().get(language) or stopword_lists()[DEFAULT_LANGUAGE]


def _plain(text: str) -> str:
    decomposed = unicodedata.normalize("NFKD", text.casefold())
    return "".join(c for c in decomposed if not unicodedata.combining(c))


@functools.cache
def _edge_words(language: str) -> frozenset[str]:
    """Words an entity name does not start or end with: its language's stopwords and English's."""
    return frozenset(_plain(w) for w in stopwords(language) | stopwords(DEFAULT_LANGUAGE))


def _singular(word: str) -> str:
    if len(word) > 3 and word.endswith("s") and not word.endswith("ss") and not word[-2].isdigit():
        return word[:-1]
    return word


def key_words(text: str) -> list[str]:
    """The words of a name as they are compared: casefolded, accents off, plural `s` off."""
    return [_singular(w) for w in _KEY_WORD.findall(_plain(text))]


def entity_key(name: str, language: str = DEFAULT_LANGUAGE) -> str:
    """The normalised name entities merge on ('' when nothing is left, e.g. only stopwords).

    Leading and trailing stopwords of `language` (and English) and single letters (French
    elisions: l', d') are dropped: "the Transformers" and "Transformer" share the key "transformer".
    """
    words = key_words(name)
    edge = _edge_words(language)
    while words and (words[0] in edge or (len(words[0]) == 1 and words[0].isalpha())):
        words.pop(0)
    while words and (words[-1] in edge or (len(words[-1]) == 1 and words[-1].isalpha())):
        words.pop()
    return " ".join(words)


def entity_id(key: str) -> str:
    """A stable id for an entity key (the same in every collection and process)."""
    return str(uuid.uuid5(_NAMESPACE, key))
