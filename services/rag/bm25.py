"""BM25 as sparse vectors for Qdrant's `IDF` modifier.

Qdrant multiplies each query term by its IDF, computed over the collection (on the server and
in local mode alike), so documents only carry the term-frequency half of BM25 and queries carry
weight 1 per unique term: `score = sum(idf(t) * tf(t) * (k1 + 1) / (tf(t) + k1 * (1 - b + b * len / avg_len)))`.
Like fastembed's `Bm25`, `avg_len` is a fixed parameter rather than the corpus average, so a
document's vector never changes when other documents come and go.

Tokens are lowercased, accent-folded Unicode words minus English and French stopwords, hashed
to 31-bit indices with blake2b so the mapping is the same in every process and Python version.
There is no stemming: an index must be queried with the exact tokenizer that built it, and a
stemmer that is present on one host and missing on another would silently break that.
"""

from __future__ import annotations

import hashlib
import re
import unicodedata
from collections import Counter
from collections.abc import Iterable, Sequence
from functools import lru_cache

from services.common.vectors import SparseVector

# Lucene's English list (bm25s's STOPWORDS_EN) and the Snowball French list (bm25s's
# STOPWORDS_FRENCH), inline so indices never depend on which optional packages are installed.
_ENGLISH = (
    "a an and are as at be but by for if in into is it no not of on or such that the their then there these they "
    "this to was will with"
)
_FRENCH = (
    "ai aie aient aies ait as au aura aurai auraient aurais aurait auras aurez auriez aurions aurons auront aux "
    "avaient avais avait avec avez aviez avions avons ayant ayante ayantes ayants ayez ayons c ce ces d dans de des "
    "du elle en es est et eu eue eues eurent eus eusse eussent eusses eussiez eussions eut eux eûmes eût eûtes "
    "furent fus fusse fussent fusses fussiez fussions fut fûmes fût fûtes il ils j je l la le les leur lui m ma mais "
    "me mes moi mon même n ne nos notre nous on ont ou par pas pour qu que qui s sa se sera serai seraient serais "
    "serait seras serez seriez serions serons seront ses soient sois soit sommes son sont soyez soyons suis sur t ta "
    "te tes toi ton tu un une vos votre vous y à étaient étais était étant étante étantes étants étiez étions été "
    "étée étées étés êtes"
)

_WORD = re.compile(r"\w+")


def _fold(text: str) -> str:
    """Lowercase and strip accents, so `Électricité` and `electricite` are one term."""
    decomposed = unicodedata.normalize("NFKD", text.casefold())
    return "".join(ch for ch in decomposed if not unicodedata.combining(ch))


STOPWORDS: frozenset[str] = frozenset(_fold(word) for word in (_ENGLISH + " " + _FRENCH).split())


def tokenize(text: str) -> list[str]:
    """The terms of `text`, in order: folded Unicode words that are not stopwords."""
    return [token for token in _WORD.findall(_fold(text)) if token not in STOPWORDS]


@lru_cache(maxsize=1 << 16)
def term_index(term: str) -> int:
    """A term's sparse index: the first 31 bits of its blake2b digest (stable across processes)."""
    digest = hashlib.blake2b(term.encode("utf-8"), digest_size=4).digest()
    return int.from_bytes(digest, "little") & 0x7FFFFFFF


class BM25Encoder:
    """Documents to BM25 term weights, queries to unit weights; pair with `Modifier.IDF`."""

    name = "bm25"

    def __init__(self, *, k1: float = 1.2, b: float = 0.75, avg_len: float = 256.0):
        if k1 < 0 or not 0 <= b <= 1 or avg_len <= 0:
            raise ValueError("BM25 needs k1 >= 0, 0 <= b <= 1 and avg_len > 0")
        self.k1 = k1
        self.b = b
        self.avg_len = avg_len

    def encode_documents(self, texts: Iterable[str]) -> list[SparseVector]:
        """One sparse vector per text, indices ascending."""
        return [self._encode_document(text) for text in texts]

    def encode_query(self, text: str) -> SparseVector:
        """Weight 1 per unique term: Qdrant's IDF modifier supplies the rest of the score."""
        indices = sorted({term_index(token) for token in tokenize(text)})
        return SparseVector(indices=indices, values=[1.0] * len(indices))

    def encode_queries(self, texts: Sequence[str]) -> list[SparseVector]:
        return [self.encode_query(text) for text in texts]

    def _encode_document(self, text: str) -> SparseVector:
        tokens = tokenize(text)
        # counted by index, so two terms that share a hash add up instead of overwriting each other
        counts = Counter(term_index(token) for token in tokens)
        norm = self.k1 * (1 - self.b + self.b * len(tokens) / self.avg_len)
        indices = sorted(counts)
        values = [counts[i] * (self.k1 + 1) / (counts[i] + norm) for i in indices]
        return SparseVector(indices=indices, values=values)
