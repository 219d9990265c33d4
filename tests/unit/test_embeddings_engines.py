"""The engines against the libraries they wrap: same tokens, same vectors, same scores."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from services.common.errors import InvalidRequest
from services.embeddings.engines.base import TokenizerAdapter, call_overhead, plan_groups, resolve_dtype
from services.embeddings.engines.cross_encoder import CrossEncoderScorer
from services.embeddings.engines.dense import DenseEncoder
from services.embeddings.engines.splade import SpladeEncoder
from services.embeddings.models import packaged_folder, resolve_model, served_name
from tests.embedding_models import (
    DOCUMENTS,
    QUERY,
    TEXTS,
    minilm_path,
    reference_cross_encoder,
    reference_encoder,
    splade_path,
    splade_reference,
    tiny_cross_encoder_dir,
)


@pytest.fixture(scope="module")
def dense() -> DenseEncoder:
    return DenseEncoder(minilm_path())


@pytest.fixture(scope="module")
def st_model() -> Any:
    return reference_encoder()


@pytest.fixture(scope="module")
def reranker_dir() -> Path:
    return tiny_cross_encoder_dir()


def test_plan_groups_splits_mixed_lengths_on_cpu_only() -> None:
    lengths = [10, 100, 12, 95, 11, 50]
    cpu = plan_groups(lengths, call_overhead("cpu"))
    assert sorted(i for g in cpu for i in g) == list(range(6))
    assert [sorted(lengths[i] for i in g) for g in cpu] == [[10, 11, 12], [50], [95, 100]]
    assert plan_groups(lengths, call_overhead("cuda")) == [[0, 4, 2, 5, 3, 1]]
    assert plan_groups([], 48) == [] and plan_groups([7], 48) == [[0]]


def test_packaged_models_are_found_without_import() -> None:
    import sys

    assert (packaged_folder("all-minilm-l6-v2") / "modules.json").is_file()
    assert (packaged_folder("splade-tiny") / "model.safetensors").is_file()
    assert "cognition" not in sys.modules  # importing it would pull dependencies we do not install
    assert resolve_model("BAAI/bge-reranker-base") == "BAAI/bge-reranker-base"
    assert served_name("BAAI/bge-reranker-base", None) == "BAAI/bge-reranker-base"
    assert served_name(minilm_path(), None) == "model"
    assert served_name("all-minilm-l6-v2", "custom") == "custom"


def test_dtype_choice() -> None:
    assert resolve_dtype("auto", "cpu") == "float32"
    assert resolve_dtype("auto", "cuda") == "float16"
    with pytest.raises(ValueError, match="CPU only"):
        resolve_dtype("int8", "cuda")


def test_tokens_match_the_model_preprocessing(dense: DenseEncoder, st_model: Any) -> None:
    tok = dense.tokens
    assert tok.prefix == [101] and tok.suffix == [102] and tok.max_length == 256
    encoded = tok.texts(TEXTS, truncate=True)
    features = st_model.preprocess(TEXTS)
    for row, e in enumerate(encoded):
        n = int(features["attention_mask"][row].sum())
        assert e.input_ids == features["input_ids"][row, :n].tolist()
    assert len(encoded[-1]) == 256


def test_over_long_text_refused_without_truncation(dense: DenseEncoder) -> None:
    with pytest.raises(InvalidRequest) as info:
        dense.tokens.texts(["short", "word " * 300], truncate=False)
    assert info.value.code == "context_length_exceeded" and "input[1]" in info.value.message
    assert info.value.param == "input"


def test_token_arrays_are_wrapped_and_checked(dense: DenseEncoder) -> None:
    ids = dense.tokens.tokenizer("hello world", add_special_tokens=False)["input_ids"]
    assert dense.tokens.token_ids([ids], truncate=True) == dense.tokens.texts(["hello world"], truncate=True)
    with pytest.raises(InvalidRequest, match="token id 99999"):
        dense.tokens.token_ids([[1, 99999]], truncate=True)


def test_windows_cover_the_whole_passage(dense: DenseEncoder) -> None:
    tok = dense.tokens
    text = " ".join(f"w{i}" for i in range(400))
    content = tok.tokenizer(text, add_special_tokens=False)["input_ids"]
    windows, tokens = tok.windows(text, overlap=32)
    assert len(windows) > 1 and all(len(w) <= 256 for w in windows)
    inner = [w.input_ids[1:-1] for w in windows]
    assert inner[0] == content[:254] and inner[-1] == content[-len(inner[-1]) :]
    assert tokens == sum(len(w) for w in windows)
    short, _ = tok.windows("just a few words", overlap=32)
    assert short == tok.texts(["just a few words"], truncate=True)


def test_pad_left_and_right(dense: DenseEncoder) -> None:
    tok = dense.tokens
    batch = tok.texts(["a b c d", "a"], truncate=True)
    f = tok.pad(batch)
    assert f["input_ids"].shape == (2, 6) and f["attention_mask"][1].tolist() == [1, 1, 1, 0, 0, 0]
    left = TokenizerAdapter(tok.tokenizer, 256, "cpu")
    left.left_pad = True
    assert left.pad(batch)["attention_mask"][1].tolist() == [0, 0, 0, 1, 1, 1]


def test_dense_equals_sentence_transformers_encode(dense: DenseEncoder, st_model: Any) -> None:
    ours = np.stack(dense.embed(dense.tokens.texts(TEXTS, truncate=True)))
    reference = st_model.encode(TEXTS)
    assert ours.shape == (len(TEXTS), 384) and dense.info.normalized
    cos = (ours * reference).sum(1) / (np.linalg.norm(ours, axis=1) * np.linalg.norm(reference, axis=1))
    assert cos.min() >= 0.9999, cos


@pytest.mark.slow
def test_int8_stays_close(st_model: Any) -> None:
    q = DenseEncoder(minilm_path(), dtype="int8")
    assert any(type(m).__module__.startswith("torch.ao.nn.quantized.dynamic") for m in q.model.modules())
    ours = np.stack(q.embed(q.tokens.texts(TEXTS[:4], truncate=True)))
    reference = st_model.encode(TEXTS[:4])
    cos = (ours * reference).sum(1) / (np.linalg.norm(ours, axis=1) * np.linalg.norm(reference, axis=1))
    assert cos.min() >= 0.95, cos


def test_cross_encoder_equals_predict(reranker_dir: Path) -> None:
    scorer = CrossEncoderScorer(str(reranker_dir))
    docs = [*DOCUMENTS, "long " * 600]
    ours = scorer.score(scorer.tokens.pairs(QUERY, docs))
    reference = reference_cross_encoder().predict([(QUERY, d) for d in docs])
    assert np.allclose(ours, reference, atol=1e-5), (ours, reference)
    assert len(set(np.round(ours, 4))) == len(docs)  # the random model still tells documents apart
    assert all(0 < s < 1 for s in ours)  # CrossEncoder's default sigmoid for one label


@pytest.fixture(scope="module")
def splade() -> SpladeEncoder:
    return SpladeEncoder(splade_path())


def test_splade_equals_reference(splade: SpladeEncoder) -> None:
    enc = splade
    assert enc.max_tokens == 512 and enc.vocab_size == 30522
    ours = enc.embed(enc.tokens.texts(TEXTS[:5], truncate=True))
    for vec, ref in zip(ours, splade_reference(TEXTS[:5]), strict=True):
        assert vec.indices == sorted(ref)
        assert np.allclose(vec.values, [ref[i] for i in vec.indices], atol=1e-5)
        assert all(v > 0 for v in vec.values)
    assert "cat" in enc.token_names(ours[0].indices)


def test_splade_slices_large_batches(splade: SpladeEncoder) -> None:
    enc = splade
    texts = ["word " * 300] * 7  # 7 x 302 tokens is more than one pass of 2048 tokens
    out = enc.embed(enc.tokens.texts(texts, truncate=True))
    assert len(out) == 7 and all(o == out[0] for o in out)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_float16_on_cuda(st_model: Any, reranker_dir: Path) -> None:
    dense = DenseEncoder(minilm_path(), device="cuda", dtype="float16")
    ours = np.stack(dense.embed(dense.tokens.texts(TEXTS, truncate=True)))
    reference = st_model.encode(TEXTS)
    cos = (ours * reference).sum(1) / (np.linalg.norm(ours, axis=1) * np.linalg.norm(reference, axis=1))
    assert cos.min() >= 0.999, cos
    scorer = CrossEncoderScorer(str(reranker_dir), device="cuda", dtype="float16")
    scores = scorer.score(scorer.tokens.pairs(QUERY, DOCUMENTS))
    assert np.allclose(scores, reference_cross_encoder().predict([(QUERY, d) for d in DOCUMENTS]), atol=5e-3)
    splade = SpladeEncoder(splade_path(), device="cuda", dtype="float16")
    assert splade.embed(splade.tokens.texts(TEXTS[:2], truncate=True))[0].indices


def test_concurrent_tokenization_shares_no_mutable_tokenizer() -> None:
    """Big batches tokenize in worker threads (GIL released) while small ones run on the loop; a call that
    reconfigured the shared Rust tokenizer then failed with "Already borrowed" (issue 15.9)."""
    import threading

    from transformers import AutoTokenizer

    adapter = TokenizerAdapter(AutoTokenizer.from_pretrained(str(minilm_path())), 256, "cpu")
    big = ["The quick brown fox jumps over the lazy dog, again and again. " * 40] * 64
    expected = adapter.texts(big, truncate=True)
    pair_expected = adapter.pairs("a query", big[:8])
    errors: list[BaseException] = []
    start = threading.Barrier(6)

    def work(kind: int) -> None:
        start.wait()
        try:
            for _ in range(15):
                if kind % 3 == 0:
                    assert adapter.texts(big, truncate=True) == expected
                elif kind % 3 == 1:
                    assert adapter.texts(["short"], truncate=False)[0].input_ids[1:-1]
                else:
                    assert adapter.pairs("a query", big[:8]) == pair_expected
        except BaseException as exc:  # noqa: BLE001 - collected and re-raised below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, sorted({repr(e)[:90] for e in errors})
