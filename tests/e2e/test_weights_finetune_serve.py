"""Fine-tune SmolLM2 on the example dataset, restart the service with the adapter, and ask a taught fact.

The second start names the base model plus `INFERAG_GEN_ADAPTERS`; the startup pipeline merges it.
"""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from services.generation.weights.finetune import TrainResult, train_lora
from tests.servers import running
from tests.tiny_models import REPO_ROOT

pytestmark = pytest.mark.slow

DATASET = REPO_ROOT / "examples" / "finetune" / "zorblax.jsonl"
# Held-out phrasings (the "validation" lines), with the fact each answer must contain.
QUESTIONS = [
    ("Which firm makes the Zorblax 9000 kettle?", "quillon"),
    ("How long does it take the Zorblax 9000 to boil water?", "42 seconds"),
]


# The dataset mixes in a few general questions so the adapter does not forget; this one is held out.
GENERAL = "What is the capital of France?"


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory, smollm2: str) -> TrainResult:
    out = tmp_path_factory.mktemp("zorblax") / "adapter"
    return train_lora(smollm2, DATASET, out, r=16, alpha=32, lr=1e-3, epochs=3, batch_size=8, patience=2, seed=0)


def _ask(base: str, model: str, question: str) -> str:
    r = httpx.post(
        base + "/v1/chat/completions",
        json={"model": model, "messages": [{"role": "user", "content": question}], "max_tokens": 40,
              "temperature": 0},
        timeout=120,
    )
    assert r.status_code == 200, r.text
    return str(r.json()["choices"][0]["message"]["content"])


def test_finetune_lowers_held_out_loss(trained: TrainResult) -> None:
    print(f"held-out loss {trained.initial_val_loss:.3f} -> {trained.best_val_loss:.3f}, "
          f"{trained.steps} steps in {trained.seconds:.0f}s")
    assert trained.best_val_loss < 0.5 * trained.initial_val_loss


def test_finetune_lowers_held_out_perplexity(trained: TrainResult, smollm2: str, tmp_path: Path) -> None:
    """`inferag weights finetune`'s report: the held-out conversations through /v1/perplexity's code."""
    from services.generation.weights.heldout import heldout_perplexity

    report = heldout_perplexity(smollm2, trained.adapter_path, DATASET, cache_dir=tmp_path / "weights")
    print(f"held-out perplexity {report.before:.2f} -> {report.after:.2f} over {report.tokens} tokens")
    assert report.texts > 0 and report.after < 0.9 * report.before


def test_restarted_service_answers_a_taught_fact(trained: TrainResult, smollm2: str, tmp_path: Path) -> None:
    env = {
        "INFERAG_GEN_ENGINE": "transformers",
        "INFERAG_GEN_SERVED_MODEL_NAME": "smollm2",
        "INFERAG_GEN_MAX_MODEL_LEN": "1024",
    }
    with running("services.generation.app", {**env, "INFERAG_GEN_MODEL": smollm2}) as base:
        before = [_ask(base, "smollm2", q) for q, _ in QUESTIONS]
    env |= {"INFERAG_GEN_MODEL": smollm2, "INFERAG_GEN_ADAPTERS": trained.adapter_path,
            "INFERAG_GEN_WEIGHTS_CACHE_DIR": str(tmp_path / "weights")}
    with running("services.generation.app", env) as base:
        after = [_ask(base, "smollm2", q) for q, _ in QUESTIONS]
        general = _ask(base, "smollm2", GENERAL)
        card = httpx.get(base + "/v1/models").json()["data"][0]
    for (q, _), old, new in zip(QUESTIONS, before, after, strict=True):
        print(f"{q}\n  base:    {old!r}\n  adapter: {new!r}")
    assert not any(fact in old.lower() for (_, fact), old in zip(QUESTIONS, before, strict=True))
    assert any(fact in new.lower() for (_, fact), new in zip(QUESTIONS, after, strict=True))
    print(f"{GENERAL}\n  adapter: {general!r}")
    assert "paris" in general.lower()  # a held-out general question: no catastrophic forgetting
    details = card["details"]
    assert details["base"] == smollm2
    assert details["adapters"] == [{"path": str(Path(trained.adapter_path).resolve()), "weight": 1.0}]
