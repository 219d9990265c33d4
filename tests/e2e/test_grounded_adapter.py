"""The packaged grounded adapter is merged and changes what the real default model does.

Merged into SmolLM2-135M-Instruct by the startup pipeline (as `make run` does with nothing configured),
it answers the prompts `/rag/query` sends (built here by the service's own `select_context` and
`answer_messages`) by citing its sources as `[n]`; the plain model, on the same prompts, cites nothing.
How often the answers are right is measured on the held-out sets (README, `examples/grounded/evaluate.py`):
the packaged adapter (1.6 epochs of the grounded set) does not get every answer right (40% of the English
held-out set), so this test checks the behaviour it must have on every prompt: citing, and differing from the
plain model.
"""

from __future__ import annotations

import asyncio
import re
from pathlib import Path
from typing import Any

import pytest

from inferag_protocol.rag import Hit
from services.generation.models import PACKAGED_DEFAULT
from services.generation.weights.startup import prepare_served_weights, served_adapters
from services.rag.context import select_context
from services.rag.prompt import answer_messages

pytestmark = pytest.mark.slow

# (sources in retrieval order, question, what the answer must say, the source it must cite); None: no source says
CASES: list[tuple[list[str], str, str | None, int | None]] = [
    (["The Quintor X battery lasts 17 hours.", "The Zorblax 3000 battery lasts 41 hours."],
     "How long does the Zorblax 3000 battery last?", "41 hours", 2),
    (["Ferrin Hall was designed by the architect Mabel Ostrander and opened in 1931.",
      "The Lark Theatre was designed by Otto Brum."],
     "Who designed Ferrin Hall?", "Mabel Ostrander", 1),
    (["Valmorin, un village de montagne, a 2 300 habitants.", "Sarquet, au bord du lac, a 18 000 habitants.",
      "Sarquet est jumelée avec Valmorin depuis 1988."],
     "Combien de personnes vivent à Sarquet ?", "18 000 habitants", 2),
    (["The Pell Bridge is 240 metres long.", "The Pell Bridge was painted green in 2004."],
     "Who built the Pell Bridge?", None, None),
]  # fmt: skip


class _NoEmbedder:
    async def embed(self, texts: Any) -> list[list[float]]:  # chunks mode never embeds
        raise AssertionError("not used")


def _messages(sources: list[str], question: str) -> list[dict[str, str]]:
    hits = [Hit(id=f"d{i}:0", doc_id=f"d{i}", chunk_index=0, text=t, start=0, end=len(t), collection="docs",
                score=1.0 - i / 10) for i, t in enumerate(sources)]  # fmt: skip
    contexts = asyncio.run(
        select_context(question, hits, _NoEmbedder(), mode="chunks", budget_tokens=300, count_tokens=lambda t: len(t))
    )
    return answer_messages(question, contexts)


def _answers(model_dir: str) -> list[str]:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    out = []
    for sources, question, _, _ in CASES:
        ids = tok.apply_chat_template(_messages(sources, question), add_generation_prompt=True, return_tensors="pt")
        ids = ids["input_ids"] if hasattr(ids, "keys") else ids
        with torch.no_grad():
            gen = model.generate(ids, max_new_tokens=48, do_sample=False)
        out.append(tok.decode(gen[0, ids.shape[1] :], skip_special_tokens=True).strip())
    return out


def _cites(answer: str) -> bool:
    return re.search(r"\[\d+\]", answer) is not None


def test_grounded_adapter_makes_the_default_model_cite_its_sources(smollm2: str, tmp_path: Path) -> None:
    adapters, default = served_adapters(PACKAGED_DEFAULT, None, "grounded-smollm2")
    served = prepare_served_weights(model=PACKAGED_DEFAULT, model_path=smollm2, adapters=adapters,
                                    quantization=None, engine="transformers", cache_dir=tmp_path,
                                    default_adapter=default)  # fmt: skip
    assert served.path != smollm2 and served.details()["default_adapter"] == "grounded-smollm2"
    adapted, plain = _answers(served.path), _answers(smollm2)
    report = "\n".join(f"adapter: {a!r}\nplain:   {p!r}" for a, p in zip(adapted, plain, strict=True))
    assert all(_cites(a) for a in adapted), report
    assert sum(_cites(p) for p in plain) <= 1, report
    assert all(a != p for a, p in zip(adapted, plain, strict=True)), report
