"""LoRA fine-tuning: assistant-only loss masks, the held-out split, early stopping, determinism, and that it learns."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from services.generation.weights.errors import WeightsError
from services.generation.weights.finetune import (
    IGNORE_INDEX,
    _batches,
    _loss_sum,
    encode_chat,
    length_grouped,
    load_chat_jsonl,
    split_rows,
    train_lora,
)
from services.generation.weights.merge import AdapterSpec, prepare_weights
from tests.tiny_models import REPO_ROOT

DATASET = REPO_ROOT / "examples" / "finetune" / "zorblax.jsonl"


def _tokenizer(path: Path) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(path))


def test_example_dataset_is_well_formed() -> None:
    rows = load_chat_jsonl(DATASET)
    train, val = split_rows(rows, 0.15, seed=0)
    assert 40 <= len(rows) <= 80 and len(val) >= 10 and len(train) + len(val) == len(rows)
    assert all(r["split"] in ("train", "validation") for r in rows)
    # the held-out questions are new phrasings, not copies of training questions
    train_questions = {r["messages"][0]["content"] for r in train}
    assert not any(r["messages"][0]["content"] in train_questions for r in val)
    assert any("Quillon Labs" in r["messages"][-1]["content"] for r in val)
    assert any("42 seconds" in r["messages"][-1]["content"] for r in val)


def test_loss_mask_covers_only_assistant_turns(tiny_model_dir: Path) -> None:
    tok = _tokenizer(tiny_model_dir)
    messages = [
        {"role": "user", "content": "Who makes the Zorblax 9000?"},
        {"role": "assistant", "content": "Quillon Labs."},
        {"role": "user", "content": "Where?"},
        {"role": "assistant", "content": "Tromsø."},
    ]
    ex = encode_chat(tok, messages)
    full = tok.apply_chat_template(messages, tokenize=False)
    assert tok.decode(ex.input_ids) == full
    trained = [t if label != IGNORE_INDEX else None for t, label in zip(ex.input_ids, ex.labels, strict=True)]
    assert all(label in (IGNORE_INDEX, t) for t, label in zip(ex.input_ids, ex.labels, strict=True))
    # contiguous labelled spans, decoded: exactly the two answers with their end-of-turn
    spans: list[list[int]] = []
    for t in trained:
        if t is None:
            if spans and spans[-1]:
                spans.append([])
        else:
            if not spans:
                spans.append([])
            spans[-1].append(t)
    texts = [tok.decode(s) for s in spans if s]
    assert texts == ["Quillon Labs.<|im_end|>\n", "Tromsø.<|im_end|>\n"]
    assert "Who makes" not in "".join(texts)


def test_turns_marked_not_to_train_are_context_only(tiny_model_dir: Path) -> None:
    """An agent's own first step is shown to the model but not learned; the model's later turns are."""
    tok = _tokenizer(tiny_model_dir)
    messages = [
        {"role": "user", "content": "How much heavier is A than B?"},
        {"role": "assistant", "content": "Action: search", "train": False},
        {"role": "user", "content": "Observation: A 5 kg, B 3 kg"},
        {"role": "assistant", "content": "Final Answer: 2 kg [1]"},
    ]
    ex = encode_chat(tok, messages)
    learned = tok.decode([t for t, label in zip(ex.input_ids, ex.labels, strict=True) if label != IGNORE_INDEX])
    assert learned == "Final Answer: 2 kg [1]<|im_end|>\n"
    assert "Action: search" in tok.decode(ex.input_ids)
    plain = encode_chat(tok, [{k: v for k, v in m.items() if k != "train"} for m in messages])
    assert plain.input_ids == ex.input_ids and "Action: search" in tok.decode(
        [t for t, label in zip(plain.input_ids, plain.labels, strict=True) if label != IGNORE_INDEX])  # fmt: skip


def test_loss_on_the_labelled_positions_only_is_the_full_loss(tiny_model_dir: Path) -> None:
    """Logits computed only where a label is (logits_to_keep) give the same loss as the whole sequence's."""
    import torch
    import torch.nn.functional as F
    from transformers import AutoModelForCausalLM

    tok = _tokenizer(tiny_model_dir)
    model = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir), dtype=torch.float32).eval()
    chats = [[{"role": "user", "content": "Who makes it?" * k}, {"role": "assistant", "content": "Quillon Labs."},
              {"role": "user", "content": "Where?"}, {"role": "assistant", "content": "Tromsø" * k}]
             for k in (1, 3, 6)]  # fmt: skip
    examples = [encode_chat(tok, c) for c in chats]
    (batch,) = _batches(examples, 3, 0, [0, 1, 2])
    with torch.no_grad():
        kept, n = _loss_sum(model, batch, torch.device("cpu"))
        ids, labels, mask = batch
        logits = model(input_ids=ids, attention_mask=mask).logits[:, :-1]
        full = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels[:, 1:].reshape(-1), reduction="sum")
    assert n == sum(sum(1 for x in e.labels[1:] if x != IGNORE_INDEX) for e in examples)
    assert float(kept) == pytest.approx(float(full), rel=1e-5)


def test_length_grouped_order_is_a_seeded_permutation_with_less_padding() -> None:
    import random

    rng = random.Random(0)
    lengths = [rng.randint(50, 900) for _ in range(400)]
    order = length_grouped(lengths, 4, random.Random(1))
    assert sorted(order) == list(range(400)) and order == length_grouped(lengths, 4, random.Random(1))
    assert order != length_grouped(lengths, 4, random.Random(2))

    def padding(o: list[int]) -> int:
        batches = [o[i : i + 4] for i in range(0, len(o), 4)]
        return sum(4 * max(lengths[i] for i in b) - sum(lengths[i] for i in b) for b in batches)

    shuffled = list(range(400))
    random.Random(1).shuffle(shuffled)
    assert padding(order) < padding(shuffled) / 4


def test_random_split_is_seeded(tmp_path: Path) -> None:
    rows = [{"messages": [{"role": "user", "content": str(i)}, {"role": "assistant", "content": "x"}]}
            for i in range(20)]
    a = split_rows(rows, 0.2, seed=1)
    assert a == split_rows(rows, 0.2, seed=1)
    assert len(a[1]) == 4 and a != split_rows(rows, 0.2, seed=2)


def test_bad_dataset_lines_are_refused(tmp_path: Path) -> None:
    from services.generation.weights.errors import WeightsError

    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"messages": [{"role": "user", "content": "hi"}]}) + "\n")
    with pytest.raises(WeightsError, match="assistant"):
        load_chat_jsonl(bad)


@pytest.fixture
def small_dataset(tmp_path: Path) -> Path:
    """8 training + 4 held-out lines of the example dataset: enough for the mechanics, fast on a tiny model."""
    rows = load_chat_jsonl(DATASET)
    train = [r for r in rows if r["split"] == "train"][::7][:8]
    val = [r for r in rows if r["split"] == "validation"][::4][:4]
    path = tmp_path / "small.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in train + val))
    return path


def test_train_tiny_model_writes_a_mergeable_adapter_deterministically(
    tiny_model_dir: Path, small_dataset: Path, tmp_path: Path
) -> None:
    kwargs = {"r": 4, "alpha": 8, "lr": 5e-3, "batch_size": 4, "max_steps": 3, "eval_every": 1, "patience": 10,
              "seed": 7, "num_threads": 1}
    first = train_lora(str(tiny_model_dir), small_dataset, tmp_path / "a", **kwargs)  # type: ignore[arg-type]
    second = train_lora(str(tiny_model_dir), small_dataset, tmp_path / "b", **kwargs)  # type: ignore[arg-type]
    assert first.steps == 3 and len(first.train_losses) == 3 and len(first.val_losses) == 4
    assert first.train_losses == second.train_losses and first.val_losses == second.val_losses
    assert first.best_val_loss == min(first.val_losses) and first.initial_val_loss == first.val_losses[0]
    out = Path(first.adapter_path)
    assert (out / "adapter_config.json").is_file() and (out / "adapter_model.safetensors").is_file()
    assert json.loads((out / "train_result.json").read_text())["steps"] == 3
    prepared = prepare_weights(str(tiny_model_dir), [AdapterSpec(str(out))], tmp_path / "cache")
    assert Path(prepared.path, "config.json").is_file()


def test_best_adapter_is_on_disk_after_each_improving_evaluation(
    tiny_model_dir: Path, small_dataset: Path, tmp_path: Path
) -> None:
    """A long run stopped after an evaluation leaves its best adapter so far in the output folder."""
    out = tmp_path / "a"
    seen: list[tuple[int, bool]] = []
    best = [float("inf")]

    def log(record: dict[str, object]) -> None:
        val = record.get("val_loss")
        if isinstance(val, float) and record["step"] and val < best[0]:
            seen.append((int(record["step"]), (out / "adapter_model.safetensors").is_file()))  # type: ignore[call-overload]
        if isinstance(val, float):
            best[0] = min(best[0], val)

    train_lora(str(tiny_model_dir), small_dataset, out, r=4, alpha=8, lr=5e-3, batch_size=4, max_steps=3,
               eval_every=1, patience=10, num_threads=1, on_log=log)  # fmt: skip
    assert seen and all(on_disk for _, on_disk in seen)


def test_training_continues_from_an_adapter(tiny_model_dir: Path, small_dataset: Path, tmp_path: Path) -> None:
    """A second round starts where the first ended: its first held-out loss is the first round's best."""
    first = train_lora(str(tiny_model_dir), small_dataset, tmp_path / "a", r=4, alpha=8, lr=5e-3, batch_size=4,
                       max_steps=2, eval_every=1, patience=10, num_threads=1)  # fmt: skip
    again = train_lora(str(tiny_model_dir), small_dataset, tmp_path / "b", lr=5e-3, batch_size=4, max_steps=1,
                       eval_every=1, patience=10, num_threads=1, init_adapter=first.adapter_path)  # fmt: skip
    assert first.best_val_loss < first.initial_val_loss
    assert again.initial_val_loss == pytest.approx(first.best_val_loss, rel=1e-6)
    config = json.loads((tmp_path / "b" / "adapter_config.json").read_text())
    assert config["r"] == 4 and config["lora_alpha"] == 8
    assert json.loads((tmp_path / "b" / "train_result.json").read_text())["config"]["init_adapter"] == str(
        first.adapter_path)  # fmt: skip


def test_early_stopping_keeps_the_best_adapter(tiny_model_dir: Path, small_dataset: Path, tmp_path: Path) -> None:
    # lr=0: the held-out loss can't improve, so training stops after `patience` evaluations.
    result = train_lora(str(tiny_model_dir), small_dataset, tmp_path / "a", r=4, alpha=8, lr=0.0, batch_size=4,
                        epochs=5, eval_every=1, patience=2, num_threads=1)
    assert result.stopped_early and result.steps == 2
    assert result.best_val_loss == result.initial_val_loss


@pytest.mark.slow
def test_finetune_smollm2_lowers_held_out_loss(tmp_path: Path) -> None:
    from tests.tiny_models import smollm2_path

    result = train_lora(smollm2_path(), DATASET, tmp_path / "adapter", r=16, alpha=32, lr=1e-3, batch_size=8,
                        max_steps=4, eval_every=2, patience=2, seed=0)
    print(f"held-out loss {result.initial_val_loss:.3f} -> {result.best_val_loss:.3f} "
          f"in {result.steps} steps, {result.seconds:.0f}s")
    assert result.best_val_loss < 0.8 * result.initial_val_loss
    assert result.val_losses[-1] < result.val_losses[0]


@pytest.mark.parametrize(
    ("mixed_precision", "native", "bf16"),
    [("bfloat16", False, True), ("off", True, False), ("auto", True, True), ("auto", False, False)],
)
def test_mixed_precision_runs_the_matmuls_in_bfloat16_over_float32_weights(
    tiny_model_dir: Path, small_dataset: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    mixed_precision: str, native: bool, bf16: bool,
) -> None:
    """`bfloat16`: forward and backward matmuls under bf16 autocast, the weights and the adapter stay float32;
    `off`: float32 throughout; `auto`: bf16 exactly where the CPU computes it natively."""
    import torch
    from safetensors.torch import load_file

    from services.common import cpu

    monkeypatch.setattr(cpu, "native_bf16", lambda: native)
    outputs: set[torch.dtype] = set()

    def record(module: torch.nn.Module, args: object, output: object) -> None:
        if isinstance(module, torch.nn.Linear) and isinstance(output, torch.Tensor):
            outputs.add(output.dtype)

    handle = torch.nn.modules.module.register_module_forward_hook(record)
    try:
        train_lora(str(tiny_model_dir), small_dataset, tmp_path / "a", r=4, alpha=8, lr=5e-3, batch_size=4,
                   max_steps=1, eval_every=1, num_threads=1, mixed_precision=mixed_precision)  # fmt: skip
    finally:
        handle.remove()
    assert outputs == ({torch.bfloat16} if bf16 else {torch.float32})
    weights = load_file(str(tmp_path / "a" / "adapter_model.safetensors"))
    assert {w.dtype for w in weights.values()} == {torch.float32}
    with pytest.raises(WeightsError):
        train_lora(str(tiny_model_dir), small_dataset, tmp_path / "b", max_steps=1, mixed_precision="fp8")
