"""`seed` stays inside int64 (vLLM's bound: beyond it its engine core can die), `seed + i` for n > 1 included."""

from __future__ import annotations

from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry
from pydantic import ValidationError

from inferag_protocol.rag import QueryRequest
from services.generation.protocol import INT64_MAX, INT64_MIN, ChatCompletionRequest, CompletionRequest
from services.generation.responses.protocol import ResponsesRequest
from services.generation.serving import GenerationService, choice_seed
from tests.unit.test_reasoning import ScriptedEngine

CHAT = {"model": "scripted", "messages": [{"role": "user", "content": "hi"}]}


@pytest.mark.parametrize("seed", [INT64_MAX + 1, INT64_MIN - 1, 2**70])
def test_out_of_range_seed_is_refused(seed: int) -> None:
    for make in (
        lambda: ChatCompletionRequest.model_validate({**CHAT, "seed": seed}),
        lambda: CompletionRequest.model_validate({"model": "m", "prompt": "a", "seed": seed}),
        lambda: ResponsesRequest.model_validate({"model": "m", "input": "a", "seed": seed}),
        lambda: QueryRequest.model_validate({"collection": "kb", "query": "a", "seed": seed}),
    ):
        with pytest.raises(ValidationError, match="seed"):
            make()


def test_seed_plus_choice_stays_in_range(tiny_model_dir: Path) -> None:
    from transformers import AutoTokenizer

    svc = GenerationService(ScriptedEngine(["x"]), AutoTokenizer.from_pretrained(tiny_model_dir), CollectorRegistry())  # type: ignore[arg-type]
    for seed in (INT64_MAX, INT64_MAX - 1, INT64_MIN, -1, 0):
        prep = svc.prepare_chat(ChatCompletionRequest.model_validate({**CHAT, "seed": seed, "n": 4}))
        seeds = [o.seed for o in prep.options]
        assert all(s is not None and INT64_MIN <= s <= INT64_MAX for s in seeds), seeds
        assert len(set(seeds)) == 4
    assert choice_seed(7, 2) == 9 and choice_seed(INT64_MAX, 1) == INT64_MIN and choice_seed(None, 3) is None
