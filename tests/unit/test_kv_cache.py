"""The engine's growing KV cache: the same attention as transformers' DynamicCache, without a copy per step."""

from __future__ import annotations

from pathlib import Path

import pytest

import services.generation.engines.kv_cache
from services.generation.engines.kv_cache import GrowingCache
from tests.tiny_models import build_tiny_llama

torch = pytest.importorskip("torch")


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory):
    from transformers import AutoModelForCausalLM

    path: Path = build_tiny_llama(tmp_path_factory.mktemp("tiny-llama"))
    return AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()


def _decode(model, cache, prompt, steps: int, on_step=None):
    """Greedy steps after a prefill; the last position's logits of every step."""
    from transformers import DynamicCache

    assert isinstance(cache, DynamicCache)
    out = model(input_ids=prompt, past_key_values=cache, use_cache=True)
    logits = [out.logits[:, -1]]
    for step in range(steps):
        token = out.logits[:, -1:].argmax(-1)
        pos = torch.full((prompt.shape[0], 1), prompt.shape[1] + step)
        out = model(input_ids=token, position_ids=pos, past_key_values=out.past_key_values, use_cache=True)
        logits.append(out.logits[:, -1])
        if on_step is not None:
            on_step(out.past_key_values)
    return torch.stack(logits)


@torch.inference_mode()
def test_same_logits_as_dynamic_cache_and_no_copy_per_step(model, monkeypatch: pytest.MonkeyPatch) -> None:
    from transformers import DynamicCache

    monkeypatch.setattr(services.generation.engines.kv_cache, "GROW", 4)  # spare columns per allocation

    prompt = torch.randint(5, 500, (2, 9))
    storage: list[int] = []
    grown = _decode(model, GrowingCache(), prompt, 4 + 3, lambda c: storage.append(c.layers[0].keys.data_ptr()))
    torch.testing.assert_close(grown, _decode(model, DynamicCache(), prompt, 4 + 3))
    # written in place: one buffer for the first 4 steps, then one new one (not a copy per step)
    assert len(set(storage)) == 2, len(set(storage))


@torch.inference_mode()
def test_keys_the_engine_replaces_are_taken_over(model) -> None:
    """Dropping a row (index_select, as the engine does) between steps: the cache copies the new tensors once."""
    from transformers import DynamicCache

    prompt = torch.randint(5, 500, (3, 7))

    def drop_first_row(step_cache):
        for layer in step_cache.layers:
            layer.keys = layer.keys.index_select(0, torch.tensor([1, 2]))
            layer.values = layer.values.index_select(0, torch.tensor([1, 2]))

    results = []
    for cache in (GrowingCache(), DynamicCache()):
        out = model(input_ids=prompt, past_key_values=cache, use_cache=True)
        token = out.logits[:, -1:].argmax(-1)
        out = model(input_ids=token, position_ids=torch.full((3, 1), 7), past_key_values=cache, use_cache=True)
        drop_first_row(cache)
        token = out.logits[1:, -1:].argmax(-1)
        steps = []
        for step in range(4):
            out = model(
                input_ids=token, position_ids=torch.full((2, 1), 8 + step), past_key_values=cache, use_cache=True
            )
            steps.append(out.logits[:, -1])
            token = out.logits[:, -1:].argmax(-1)
        results.append(torch.stack(steps))
    torch.testing.assert_close(results[0], results[1])
