"""Dense embeddings with sentence-transformers (the model's own modules: transformer, pooling, normalize...)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from .base import (
    Encoded,
    TokenizerAdapter,
    apply_dtype,
    call_overhead,
    load_sentence_model,
    max_input_tokens,
    plan_groups,
)


@dataclass(frozen=True)
class DenseInfo:
    dimension: int
    max_tokens: int
    normalized: bool


class DenseEncoder:
    """A SentenceTransformer that embeds pre-tokenized batches. Not thread-safe: one worker thread calls it."""

    def __init__(self, path: str, *, device: str = "cpu", dtype: str = "float32"):
        from sentence_transformers import SentenceTransformer
        from sentence_transformers.base.modules.normalize import Normalize

        self.path, self.device, self.dtype = path, device, dtype
        model = load_sentence_model(SentenceTransformer, path, device)
        self.model = apply_dtype(model, dtype)
        max_tokens = max_input_tokens(model)
        dimension = model.get_embedding_dimension()
        if dimension is None:
            raise ValueError(f"{path}: the model does not report its embedding dimension")
        self.info = DenseInfo(
            dimension=int(dimension),
            max_tokens=max_tokens,
            normalized=any(isinstance(m, Normalize) for m in model),
        )
        self.tokens = TokenizerAdapter(model.tokenizer, max_tokens, device)
        self.call_overhead = call_overhead(device)

    @torch.inference_mode()
    def embed(self, batch: Sequence[Encoded]) -> list[np.ndarray]:
        """One float32 vector per input (the same vectors `encode` returns)."""
        out: list[np.ndarray] = [np.empty(0, np.float32)] * len(batch)
        for group in plan_groups([len(e) for e in batch], self.call_overhead):
            vectors = self.model(self.tokens.pad([batch[i] for i in group]))["sentence_embedding"]
            for i, v in zip(group, vectors.float().cpu().numpy(), strict=True):
                out[i] = v
        return out
