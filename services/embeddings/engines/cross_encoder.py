"""Reranking with a sentence-transformers CrossEncoder (any hub id or folder, e.g. BAAI/bge-reranker-base)."""

from __future__ import annotations

from collections.abc import Sequence

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


class CrossEncoderScorer:
    """Scores pre-tokenized (query, document) pairs exactly as `CrossEncoder.predict` does (its activation included)."""

    method = "cross-encoder"

    def __init__(self, path: str, *, device: str = "cpu", dtype: str = "float32"):
        from sentence_transformers import CrossEncoder

        self.path, self.device, self.dtype = path, device, dtype
        model = load_sentence_model(CrossEncoder, path, device)
        if model.num_labels != 1:
            raise ValueError(f"{path}: a reranker needs one output label, this model has {model.num_labels}")
        self.model = apply_dtype(model, dtype)
        self.activation = model.activation_fn
        self.max_tokens = max_input_tokens(model)
        self.tokens = TokenizerAdapter(model.tokenizer, self.max_tokens, device)
        self.call_overhead = call_overhead(device)

    @torch.inference_mode()
    def score(self, batch: Sequence[Encoded]) -> list[float]:
        out = [0.0] * len(batch)
        for group in plan_groups([len(e) for e in batch], self.call_overhead):
            scores = self.model(self.tokens.pad([batch[i] for i in group]))["scores"].float()
            if self.activation is not None:
                scores = self.activation(scores)
            for i, s in zip(group, scores.reshape(-1).cpu().tolist(), strict=True):
                out[i] = float(s)
        return out
