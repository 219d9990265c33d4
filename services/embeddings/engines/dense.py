"""Dense embeddings with sentence-transformers (the model's own modules: transformer, pooling, normalize...)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .base import Encoded, TokenizerAdapter, apply_dtype, call_overhead, plan_groups


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

        self.path = path
        self.device = device
        self.dtype = dtype
        # a local folder never needs the hub (not even for model-card metadata)
        model = SentenceTransformer(path, device=device, local_files_only=Path(path).is_dir())
        model.eval()
        self.model = apply_dtype(model, dtype)
        max_tokens = int(model.max_seq_length or model.tokenizer.model_max_length)
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
