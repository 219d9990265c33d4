"""SPLADE sparse embeddings: log1p(relu(MLM logits)), max-pooled over the tokens (splade-tiny by default)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from .base import Encoded, TokenizerAdapter, apply_dtype, call_overhead, plan_groups

# Padded tokens per forward pass: the MLM logits are tokens x vocabulary floats
# (2048 x 30522 x 4 bytes = 250 MB), so large batches go through in slices.
_TOKENS_PER_PASS = 2048


@dataclass(frozen=True)
class Sparse:
    indices: list[int]
    values: list[float]


class SpladeEncoder:
    """An AutoModelForMaskedLM read as SPLADE. Not thread-safe: one worker thread calls it."""

    def __init__(self, path: str, *, device: str = "cpu", dtype: str = "float32", max_tokens: int | None = None):
        from transformers import AutoModelForMaskedLM, AutoTokenizer

        self.path = path
        self.device = device
        self.dtype = dtype
        tokenizer = AutoTokenizer.from_pretrained(path)
        model = AutoModelForMaskedLM.from_pretrained(path).to(device)
        model.eval()
        self.model = apply_dtype(model, dtype)
        limits = [tokenizer.model_max_length, getattr(model.config, "max_position_embeddings", None), max_tokens]
        self.max_tokens = int(min(x for x in limits if isinstance(x, int) and 0 < x < 1_000_000))
        self.vocab_size = int(model.config.vocab_size)
        self.tokens = TokenizerAdapter(tokenizer, self.max_tokens, device)
        self.call_overhead = call_overhead(device)

    @torch.inference_mode()
    def embed(self, batch: Sequence[Encoded]) -> list[Sparse]:
        out: list[Sparse] = [Sparse([], [])] * len(batch)
        for group in plan_groups([len(e) for e in batch], self.call_overhead):
            width = max(len(batch[i]) for i in group)
            rows = max(1, _TOKENS_PER_PASS // width)
            for start in range(0, len(group), rows):
                part = group[start : start + rows]
                features = self.tokens.pad([batch[i] for i in part])
                logits = self.model(**features).logits.float()
                weights = torch.log1p(torch.relu(logits)) * features["attention_mask"].unsqueeze(-1)
                for i, vec in zip(part, weights.max(dim=1).values.cpu(), strict=True):
                    idx = torch.nonzero(vec, as_tuple=True)[0]
                    out[i] = Sparse(idx.tolist(), vec[idx].tolist())
        return out

    def token_names(self, indices: Sequence[int]) -> list[str]:
        return list(self.tokens.tokenizer.convert_ids_to_tokens(list(indices)))
