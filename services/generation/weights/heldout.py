"""Held-out perplexity of a fine-tune, before and after, measured through the serving path's `/v1/perplexity`.

The held-out conversations (the dataset's validation split, as `train_lora` makes it) are rendered
with the chat template and scored by the very code the route runs (`perplexity()` over a
transformers engine): once on the base weights, once on the base with the adapter merged (the
startup pipeline's merge, cached like the served weights). The figure is token-weighted over
every held-out conversation: exp(total negative logprob / scored tokens).
"""

from __future__ import annotations

import asyncio
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import WeightsError
from .finetune import load_chat_jsonl, split_rows
from .merge import AdapterSpec, prepare_weights

BATCH = 64  # texts per perplexity request (the route's limit)


@dataclass
class HeldOutPerplexity:
    before: float
    after: float
    texts: int  # held-out conversations scored
    skipped: int  # longer than the context window
    tokens: int  # scored tokens per model


def heldout_texts(tokenizer: Any, dataset_jsonl: str | Path, val_fraction: float, seed: int) -> list[str]:
    """The validation conversations of `dataset_jsonl`, rendered as the model reads them."""
    _, val = split_rows(load_chat_jsonl(dataset_jsonl), val_fraction, seed)
    return [str(tokenizer.apply_chat_template(row["messages"], tokenize=False)) for row in val]


async def _score(model_path: str, texts: list[str], num_threads: int | None) -> tuple[float, int, int]:
    """(total negative logprob, scored tokens, texts skipped) of `texts` under the weights at `model_path`."""
    from prometheus_client import CollectorRegistry
    from transformers import AutoTokenizer

    from inferag_protocol.perplexity import PerplexityRequest

    from ..engines.transformers_engine import TransformersEngine
    from ..perplexity import perplexity
    from ..serving import GenerationService

    engine = TransformersEngine(model_path, model_id="heldout", num_threads=num_threads)
    await engine.start()
    try:
        tokenizer = await asyncio.to_thread(AutoTokenizer.from_pretrained, model_path)
        service = GenerationService(engine, tokenizer, CollectorRegistry())
        limit = engine.info.max_model_len
        fit = [t for t in texts if len(tokenizer.encode(t, add_special_tokens=False)) < limit]
        nll, tokens = 0.0, 0
        for start in range(0, len(fit), BATCH):
            req = PerplexityRequest(model="heldout", input=fit[start : start + BATCH], add_special_tokens=False)
            for data in (await perplexity(service, req)).data:
                nll -= data.logprob
                tokens += len(data.tokens) - 1
        return nll, tokens, len(texts) - len(fit)
    finally:
        await engine.stop()


def heldout_perplexity(
    base: str,
    adapter: str | Path,
    dataset_jsonl: str | Path,
    *,
    cache_dir: str | Path,
    val_fraction: float = 0.15,
    seed: int = 0,
    num_threads: int | None = None,
) -> HeldOutPerplexity:
    """Perplexity of the held-out split under `base`, then under `base` + `adapter` (merged). Blocking."""
    from transformers import AutoTokenizer

    texts = heldout_texts(AutoTokenizer.from_pretrained(base), dataset_jsonl, val_fraction, seed)
    if not texts:
        raise WeightsError("The dataset holds nothing out: no held-out perplexity to measure.")
    merged = prepare_weights(base, [AdapterSpec(str(adapter))], Path(cache_dir)).path
    before_nll, tokens, skipped = asyncio.run(_score(base, texts, num_threads))
    after_nll, _, _ = asyncio.run(_score(merged, texts, num_threads))
    if tokens == 0:
        raise WeightsError("Every held-out conversation is longer than the context window.")
    return HeldOutPerplexity(
        before=math.exp(before_nll / tokens), after=math.exp(after_nll / tokens), texts=len(texts) - skipped,
        skipped=skipped, tokens=tokens,
    )  # fmt: skip
