from __future__ import annotations

import hashlib
import time

import pytest
from qdrant_client import QdrantClient, models

from services.rag.bm25 import STOPWORDS, BM25Encoder, term_index, tokenize


def test_tokenize_lowercases_folds_accents_and_drops_english_and_french_stopwords() -> None:
    assert tokenize("The Électricité de l'immeuble, and THE cables!") == ["electricite", "immeuble", "cables"]
    assert tokenize("Le contrat n’est pas signé") == ["contrat", "signe"]
    assert tokenize("über 42 résumés") == ["uber", "42", "resumes"]
    assert {"the", "and", "le", "les", "des", "etait"} <= STOPWORDS


def test_term_index_is_a_stable_31_bit_hash() -> None:
    expected = int.from_bytes(hashlib.blake2b(b"contrat", digest_size=4).digest(), "little") & 0x7FFFFFFF
    assert term_index("contrat") == expected
    assert all(0 <= term_index(t) < 2**31 for t in ("a", "contrat", "électricité", "x" * 100))


def test_document_weights_follow_bm25_term_frequency_saturation() -> None:
    encoder = BM25Encoder(avg_len=4)
    (vector,) = encoder.encode_documents(["contrat contrat bail loyer"])
    assert vector.indices == sorted(vector.indices)
    weights = dict(zip(vector.indices, vector.values, strict=True))
    norm = 1.2 * (1 - 0.75 + 0.75 * 4 / 4)
    assert weights[term_index("contrat")] == pytest.approx(2 * 2.2 / (2 + norm))
    assert weights[term_index("bail")] == pytest.approx(1 * 2.2 / (1 + norm))
    # longer documents weigh each occurrence less
    (longer,) = encoder.encode_documents(["contrat contrat bail loyer " + "mot " * 20])
    assert dict(zip(longer.indices, longer.values, strict=True))[term_index("contrat")] < weights[term_index("contrat")]


def test_query_has_weight_one_per_unique_term_and_empty_texts_are_empty() -> None:
    encoder = BM25Encoder()
    query = encoder.encode_query("Contrat de bail: contrat signé ?")
    assert query.indices == sorted({term_index("contrat"), term_index("bail"), term_index("signe")})
    assert query.values == [1.0, 1.0, 1.0]
    assert encoder.encode_query("le la les").indices == []
    assert encoder.encode_documents(["", "the"])[0].indices == []


def test_encoding_is_deterministic_and_fast_enough_for_thousands_of_chunks() -> None:
    texts = [f"Le chapitre {i} décrit la procédure numéro {i % 97} du contrat de maintenance, avec les "
             f"responsabilités du prestataire et les délais d'intervention." * 4 for i in range(3000)]
    started = time.perf_counter()
    first = BM25Encoder().encode_documents(texts)
    elapsed = time.perf_counter() - started
    assert first == BM25Encoder().encode_documents(texts)
    assert elapsed < 5.0, f"{elapsed:.2f}s for 3000 chunks"


def test_qdrant_local_mode_applies_the_idf_modifier() -> None:
    """A rare term outweighs a common one: the IDF half of BM25 comes from Qdrant."""
    encoder = BM25Encoder()
    texts = ["contrat maintenance"] + ["contrat"] * 8 + ["maintenance contrat"]
    client = QdrantClient(":memory:")
    client.create_collection("c", vectors_config={},
                             sparse_vectors_config={"s": models.SparseVectorParams(modifier=models.Modifier.IDF)})
    client.upsert("c", points=[
        models.PointStruct(id=i, vector={"s": models.SparseVector(indices=v.indices, values=v.values)})
        for i, v in enumerate(encoder.encode_documents(texts))
    ])
    assert client.get_collection("c").config.params.sparse_vectors["s"].modifier == models.Modifier.IDF  # type: ignore[index]
    query = encoder.encode_query("contrat maintenance")
    hits = client.query_points("c", query=models.SparseVector(indices=query.indices, values=query.values),
                               using="s", limit=3).points
    assert {hit.id for hit in hits[:2]} == {0, 9}
    # "contrat" is in every document: its IDF is small, "maintenance" dominates
    only_common = client.query_points("c", query=models.SparseVector(indices=[term_index("contrat")], values=[1.0]),
                                      using="s", limit=1).points
    assert only_common[0].score < hits[0].score / 3
    client.close()
