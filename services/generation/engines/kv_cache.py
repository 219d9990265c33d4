"""The transformers engine's KV cache: `DynamicCache` whose layers grow in place instead of by concatenation.

`DynamicLayer.update` concatenates each step's key and value onto the whole cache, a copy of every layer's
cache per decode step (on SmolLM2-135M at a 300-token context, 14% of a decode step's time; more with longer
prompts). Here a layer keeps its keys and values in buffers with `GROW` spare slot columns and exposes
the used prefix as `keys` / `values` (views); a step writes its one column in place. When the engine
replaces `keys` / `values` (dropping rows, trimming padding, merging a new prefill), the layer sees the
tensors are no longer views of its buffers and copies them into new ones at the next step, once.
"""

from __future__ import annotations

from typing import Any

import torch
from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer

GROW = 64  # spare slot columns per (re)allocation: one copy every GROW decode steps instead of every step


def _prefix_of(view: torch.Tensor, buffer: torch.Tensor | None) -> bool:
    """Whether `view` is buffer[:, :, :n] (same storage start, rows, heads and strides)."""
    return (
        buffer is not None
        and view.data_ptr() == buffer.data_ptr()
        and view.shape[:2] == buffer.shape[:2]
        and view.shape[3] == buffer.shape[3]
        and view.stride() == buffer.stride()
    )


class GrowingLayer(DynamicLayer):
    """A `DynamicLayer` whose update writes into spare capacity (see the module docstring)."""

    def __init__(self) -> None:
        super().__init__()
        self._key_buffer: torch.Tensor | None = None
        self._value_buffer: torch.Tensor | None = None

    def update(
        self, key_states: torch.Tensor, value_states: torch.Tensor, *args: Any, **kwargs: Any
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        keys, values = self.keys, self.values
        assert keys is not None and values is not None
        used = keys.shape[-2] if keys.numel() else 0
        total = used + key_states.shape[-2]
        kb, vb = self._key_buffer, self._value_buffer
        fits = kb is not None and total <= kb.shape[-2] and _prefix_of(keys, kb) and _prefix_of(values, vb)
        if kb is None or vb is None or not (used and fits):
            rows, heads, _, dim = key_states.shape
            kb = key_states.new_empty((rows, heads, total + GROW, dim))
            vb = value_states.new_empty((rows, heads, total + GROW, value_states.shape[-1]))
            if used:
                kb[:, :, :used].copy_(keys)
                vb[:, :, :used].copy_(values)
            self._key_buffer, self._value_buffer = kb, vb
        kb[:, :, used:total].copy_(key_states)
        vb[:, :, used:total].copy_(value_states)
        self.keys, self.values = kb[:, :, :total], vb[:, :, :total]
        return self.keys, self.values


class GrowingCache(DynamicCache):
    """`DynamicCache()` with `GrowingLayer`s (created lazily, one per model layer, as DynamicCache does)."""

    def __init__(self) -> None:
        super().__init__()
        self.layer_class_to_replicate = GrowingLayer
