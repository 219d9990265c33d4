"""The transformers engine's KV cache: `DynamicCache` whose layers grow in place instead of by concatenation.

`DynamicLayer.update` concatenates each step's key and value onto the whole cache, a copy of every layer's
cache per decode step (on SmolLM2-135M at a 300-token context, 14% of a decode step's time; more with longer
prompts). Here a layer keeps its keys and values in buffers with `GROW` spare slot columns and exposes
the used prefix as `keys` / `values` (views); a step writes its one column in place. When the engine
replaces `keys` / `values` (dropping rows, trimming padding, merging a new prefill), the layer sees the
tensors are no longer views of its buffers and copies them into new ones at the next step, once.

The surgery on a batch's cache lives here too: every layer is `[batch, kv_heads, slots, head_dim]`, rows
left-padded, and the engine's 2D attention mask (`[batch, slots]`) says which slots hold tokens.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
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


def zero_padding(cache: Any, mask: torch.Tensor) -> None:
    """Zero the padding slots (`mask` 0): never attended to, but kept finite and zero anyway."""
    pad = (mask == 0)[:, None, :, None]
    for layer in cache.layers:
        layer.keys.masked_fill_(pad, 0)
        layer.values.masked_fill_(pad, 0)


def select_rows(cache: Any, index: torch.Tensor) -> None:
    """Keep the rows `index` of every layer (in place)."""
    for layer in cache.layers:
        if layer.keys is None or layer.keys.numel() == 0:
            continue
        layer.keys = layer.keys.index_select(0, index)
        layer.values = layer.values.index_select(0, index)


def trim(cache: Any, mask: torch.Tensor) -> tuple[Any, torch.Tensor]:
    """Drop leading slot columns that are padding for every row."""
    used = mask.any(dim=0).nonzero()
    if used.numel() == 0:
        return cache, mask
    first = int(used[0, 0])
    if first == 0:
        return cache, mask
    for layer in cache.layers:
        if layer.keys is None or layer.keys.numel() == 0:
            continue
        layer.keys = layer.keys[:, :, first:, :].contiguous()
        layer.values = layer.values[:, :, first:, :].contiguous()
    return cache, mask[:, first:].contiguous()


def merge(cache_a: Any, mask_a: torch.Tensor, cache_b: Any, mask_b: torch.Tensor) -> tuple[Any, torch.Tensor]:
    """Stack two left-padded batches (a on top of b), padding the narrower one on the left."""
    width = max(mask_a.shape[1], mask_b.shape[1])
    pad_a, pad_b = width - mask_a.shape[1], width - mask_b.shape[1]
    for layer_a, layer_b in zip(cache_a.layers, cache_b.layers, strict=True):
        keys_a, values_a = layer_a.keys, layer_a.values
        keys_b, values_b = layer_b.keys, layer_b.values
        if pad_a:
            keys_a, values_a = F.pad(keys_a, (0, 0, pad_a, 0)), F.pad(values_a, (0, 0, pad_a, 0))
        if pad_b:
            keys_b, values_b = F.pad(keys_b, (0, 0, pad_b, 0)), F.pad(values_b, (0, 0, pad_b, 0))
        layer_a.keys = torch.cat([keys_a, keys_b], dim=0)
        layer_a.values = torch.cat([values_a, values_b], dim=0)
    mask = torch.cat([F.pad(mask_a, (pad_a, 0)), F.pad(mask_b, (pad_b, 0))], dim=0)
    return cache_a, mask
