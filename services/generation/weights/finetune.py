"""Supervised fine-tuning of a LoRA adapter on a JSONL chat dataset (peft + transformers, plain torch loop).

Dataset: one JSON object per line, `{"messages": [{"role": ..., "content": ...}, ...]}`,
optionally with `"split": "train" | "validation"`; without split fields a seeded
random `val_fraction` of the lines is held out. Each conversation is rendered with the
tokenizer's chat template, and the loss covers only the assistant turns (everything
else is labelled -100), end-of-turn token included, so the model learns to stop. An
assistant turn marked `"train": false` is context only (e.g. an agent's own first step,
which the model never writes): it is rendered but not learned.

Training: AdamW on the LoRA parameters only, gradient-norm clipping, a linear warmup
then constant learning rate, batches of similar lengths (little padding), logits computed
only where a label is (the LM head is a fifth of a small model's compute), the held-out
loss measured before training and after every epoch (or every `eval_every` steps), early
stopping after `patience` evaluations without improvement, and the best adapter (lowest
held-out loss) is the one written to `out_dir` (also after each evaluation that improves on
the best, so a long run can be stopped at any time). Seeded, so two runs on the same host
give the same adapter.

The output folder is a standard peft adapter (`adapter_config.json` +
`adapter_model.safetensors`) plus `train_result.json`; point `INFERAG_GEN_ADAPTERS`
at it and the startup pipeline merges it.
"""

from __future__ import annotations

import json
import logging
import math
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from .errors import WeightsError

log = logging.getLogger(__name__)

IGNORE_INDEX = -100
DEFAULT_TARGET_MODULES = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


@dataclass
class TrainResult:
    train_losses: list[float]  # one per optimizer step
    val_losses: list[float]  # one per evaluation, the first before any training
    best_val_loss: float
    initial_val_loss: float
    adapter_path: str
    steps: int = 0
    epochs: float = 0.0
    stopped_early: bool = False
    seconds: float = 0.0
    train_examples: int = 0
    val_examples: int = 0
    config: dict[str, Any] = field(default_factory=dict)


@dataclass
class Example:
    input_ids: list[int]
    labels: list[int]


# ------------------------------------------------------------------------ data


def load_chat_jsonl(path: str | Path) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    with Path(path).open(encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except ValueError as exc:
                raise WeightsError(f"{path}:{lineno}: not valid JSON ({exc})") from exc
            messages = row.get("messages") if isinstance(row, dict) else None
            if not isinstance(messages, list) or not any(m.get("role") == "assistant" for m in messages):
                raise WeightsError(f"{path}:{lineno}: needs a 'messages' list with at least one assistant turn")
            rows.append(row)
    if not rows:
        raise WeightsError(f"{path} holds no examples")
    return rows


def split_rows(
    rows: Sequence[dict[str, Any]], val_fraction: float, seed: int
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The dataset's own `split` fields when present, else a seeded random hold-out."""
    if any("split" in r for r in rows):
        train = [r for r in rows if r.get("split", "train") == "train"]
        val = [r for r in rows if r.get("split") in ("validation", "val", "test", "eval")]
    else:
        order = list(range(len(rows)))
        random.Random(seed).shuffle(order)
        n_val = max(1, round(len(rows) * val_fraction)) if val_fraction > 0 else 0
        val = [rows[i] for i in order[:n_val]]
        train = [rows[i] for i in order[n_val:]]
    if not train:
        raise WeightsError("The dataset has no training examples.")
    return train, val


def _ids(tokenizer: Any, messages: list[dict[str, Any]], generation_prompt: bool) -> list[int]:
    out = tokenizer.apply_chat_template(messages, tokenize=True, add_generation_prompt=generation_prompt)
    if isinstance(out, dict) or hasattr(out, "input_ids"):  # transformers 5 returns a BatchEncoding
        out = out["input_ids"]
    return [int(t) for t in out]


def encode_chat(tokenizer: Any, messages: list[dict[str, Any]], max_length: int = 1024) -> Example:
    """Token ids of the rendered conversation; labels = ids on assistant turns, -100 elsewhere."""
    ids: list[int] = []
    labels: list[int] = []
    for i, message in enumerate(messages):
        if message.get("role") != "assistant" or message.get("train", True) is False:
            continue
        prompt = _ids(tokenizer, messages[:i], generation_prompt=True)
        full = _ids(tokenizer, messages[: i + 1], generation_prompt=False)
        if full[: len(prompt)] != prompt or prompt[: len(ids)] != ids:
            raise WeightsError("The chat template does not render conversations prefix by prefix; can't mask turns.")
        labels += [IGNORE_INDEX] * (len(prompt) - len(ids)) + full[len(prompt) :]
        ids = full
    return Example(ids[:max_length], labels[:max_length])


def length_grouped(lengths: Sequence[int], batch_size: int, rng: random.Random, window: int = 16) -> list[int]:
    """A shuffled order in which each run of `batch_size` has similar lengths: shuffle, sort each window of
    `window` batches by length, then shuffle the batches (less padding, still random)."""
    order = list(range(len(lengths)))
    rng.shuffle(order)
    span = batch_size * window
    grouped = [
        i for start in range(0, len(order), span) for i in sorted(order[start : start + span], key=lengths.__getitem__)
    ]
    batches = [grouped[start : start + batch_size] for start in range(0, len(grouped), batch_size)]
    rng.shuffle(batches)
    return [i for batch in batches for i in batch]


def _batches(examples: Sequence[Example], batch_size: int, pad_id: int, order: Sequence[int]) -> list[Any]:
    import torch

    batches = []
    for start in range(0, len(order), batch_size):
        chunk = [examples[i] for i in order[start : start + batch_size]]
        width = max(len(e.input_ids) for e in chunk)
        ids = torch.full((len(chunk), width), pad_id, dtype=torch.long)
        labels = torch.full((len(chunk), width), IGNORE_INDEX, dtype=torch.long)
        mask = torch.zeros((len(chunk), width), dtype=torch.long)
        for row, e in enumerate(chunk):
            n = len(e.input_ids)
            ids[row, :n] = torch.tensor(e.input_ids)
            labels[row, :n] = torch.tensor(e.labels)
            mask[row, :n] = 1
        batches.append((ids, labels, mask))
    return batches


def _loss_sum(model: Any, batch: Any, device: Any, autocast: Any = None) -> tuple[Any, int]:
    """Summed next-token cross-entropy over the labelled tokens, and their count.

    Logits are computed only at the positions that predict a label in some row of the batch
    (`logits_to_keep`): the loss is the same, without the LM head's work on the prompt.
    `autocast`: the dtype of the forward's matmuls (mixed precision; weights and optimizer stay as loaded).
    """
    import torch
    import torch.nn.functional as F

    ids, labels, mask = (t.to(device) for t in batch)
    keep = (labels[:, 1:] != IGNORE_INDEX).any(dim=0).nonzero().flatten()
    with torch.autocast(device.type, dtype=autocast, enabled=autocast is not None):
        logits = model(input_ids=ids, attention_mask=mask, logits_to_keep=keep).logits.float()
    target = labels[:, 1:][:, keep]
    loss = F.cross_entropy(
        logits.reshape(-1, logits.shape[-1]), target.reshape(-1), ignore_index=IGNORE_INDEX, reduction="sum"
    )
    return loss, int((target != IGNORE_INDEX).sum())


def evaluate(model: Any, batches: Sequence[Any], device: Any, autocast: Any = None) -> float:
    """Token-weighted mean loss over the labelled (assistant) tokens."""
    import torch

    if not batches:
        return float("nan")
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    with torch.no_grad():
        for batch in batches:
            loss, n = _loss_sum(model, batch, device, autocast)
            total += float(loss)
            count += n
    model.train(was_training)
    return total / max(count, 1)


# --------------------------------------------------------------------- training


def _autocast_dtype(mixed_precision: str, device: Any, weights_dtype: Any) -> Any:
    """The autocast dtype of a run (None: none), from `mixed_precision` (auto, bfloat16, off)."""
    import torch

    if mixed_precision == "off":
        return None
    if mixed_precision == "bfloat16":
        return torch.bfloat16
    if mixed_precision != "auto":
        raise WeightsError(f"mixed_precision must be auto, bfloat16 or off, not {mixed_precision!r}")
    if weights_dtype != torch.float32:
        return None
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else None
    from services.common.cpu import native_bf16

    return torch.bfloat16 if device.type == "cpu" and native_bf16() else None


def train_lora(
    base: str,
    dataset_jsonl: str | Path,
    out_dir: str | Path,
    *,
    r: int = 8,
    alpha: int = 16,
    dropout: float = 0.0,
    target_modules: Sequence[str] = DEFAULT_TARGET_MODULES,
    lr: float = 1e-3,
    epochs: float = 3,
    batch_size: int = 8,
    max_grad_norm: float = 1.0,
    weight_decay: float = 0.0,
    warmup_steps: int = 0,
    val_fraction: float = 0.15,
    patience: int = 2,
    min_delta: float = 0.0,
    eval_every: int | None = None,
    max_steps: int | None = None,
    max_length: int = 1024,
    seed: int = 0,
    device: str = "auto",
    dtype: str = "auto",
    mixed_precision: str = "auto",
    num_threads: int | None = None,
    on_log: Callable[[dict[str, Any]], None] | None = None,
    init_adapter: str | Path | None = None,
) -> TrainResult:
    """Train a LoRA adapter on `dataset_jsonl` and write the best one (lowest held-out loss) to `out_dir`.

    `mixed_precision`: `bfloat16` runs the forward and backward matmuls in bfloat16 over float32 weights
    (torch.autocast); `auto` does so on a CUDA GPU with bf16 and on a CPU with native bf16 arithmetic
    (AMX or AVX512-BF16, `services.common.cpu.native_bf16`) when the weights load in float32; `off` never.
    `init_adapter`: continue from that adapter (its r, alpha and target modules; `r`, `alpha`, `dropout` and
    `target_modules` are then ignored), e.g. to train a long run in rounds on a busy machine.
    """
    import torch
    from peft import LoraConfig, get_peft_model, get_peft_model_state_dict, set_peft_model_state_dict
    from transformers import AutoModelForCausalLM, AutoTokenizer

    t0 = time.perf_counter()
    config = {
        k: v
        for k, v in locals().items()
        if k
        in {
            "base",
            "r",
            "alpha",
            "dropout",
            "lr",
            "epochs",
            "batch_size",
            "max_grad_norm",
            "weight_decay",
            "warmup_steps",
            "val_fraction",
            "patience",
            "min_delta",
            "eval_every",
            "max_steps",
            "seed",
            "max_length",
            "mixed_precision",
        }
    }
    config["dataset"] = str(dataset_jsonl)
    config["target_modules"] = list(target_modules)
    emit = on_log or (lambda rec: log.info("finetune %s", rec))

    if num_threads:
        torch.set_num_threads(num_threads)
    random.seed(seed)
    torch.manual_seed(seed)
    dev = torch.device(
        "cuda" if device == "auto" and torch.cuda.is_available() else ("cpu" if device == "auto" else device)
    )
    if dtype == "auto":
        tdtype = torch.bfloat16 if dev.type == "cuda" and torch.cuda.is_bf16_supported() else torch.float32
    else:
        tdtype = getattr(torch, dtype)
    autocast = _autocast_dtype(mixed_precision, dev, tdtype)

    tokenizer = AutoTokenizer.from_pretrained(base)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    train_rows, val_rows = split_rows(load_chat_jsonl(dataset_jsonl), val_fraction, seed)
    train_ex = [encode_chat(tokenizer, row["messages"], max_length) for row in train_rows]
    val_ex = [encode_chat(tokenizer, row["messages"], max_length) for row in val_rows]
    val_batches = _batches(val_ex, batch_size, int(pad_id or 0), range(len(val_ex)))

    model: Any = AutoModelForCausalLM.from_pretrained(base, dtype=tdtype)
    model = model.to(dev)
    model.config.use_cache = False
    if init_adapter is not None:  # continue training an adapter: its rank, alpha and modules, its weights
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, str(init_adapter), is_trainable=True)
        config["init_adapter"] = str(init_adapter)
    else:
        lora = LoraConfig(
            r=r,
            lora_alpha=alpha,
            lora_dropout=dropout,
            target_modules=list(target_modules),
            task_type="CAUSAL_LM",
            bias="none",
        )
        model = get_peft_model(model, lora)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: min(1.0, (step + 1) / warmup_steps) if warmup_steps > 0 else 1.0
    )

    steps_per_epoch = math.ceil(len(train_ex) / batch_size)
    total_steps = math.ceil(steps_per_epoch * epochs)
    if max_steps is not None:
        total_steps = min(total_steps, max_steps)
    eval_every = eval_every or steps_per_epoch

    initial = evaluate(model, val_batches, dev, autocast)
    val_losses = [initial]
    train_losses: list[float] = []
    best = initial
    best_state = {k: v.detach().clone() for k, v in get_peft_model_state_dict(model).items()}
    bad_evals = 0
    stopped_early = False
    emit({"step": 0, "val_loss": initial, "train_examples": len(train_ex), "val_examples": len(val_ex)})

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    shuffler = random.Random(seed)
    step = 0
    model.train()
    lengths = [len(e.input_ids) for e in train_ex]
    while step < total_steps and not stopped_early:
        order = length_grouped(lengths, batch_size, shuffler)
        for batch in _batches(train_ex, batch_size, int(pad_id or 0), order):
            if step >= total_steps:
                break
            loss_sum, n = _loss_sum(model, batch, dev, autocast)
            loss = loss_sum / max(n, 1)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            grad_norm = torch.nn.utils.clip_grad_norm_(params, max_grad_norm)
            optimizer.step()
            scheduler.step()
            step += 1
            train_losses.append(float(loss.detach()))
            record: dict[str, Any] = {
                "step": step,
                "loss": round(train_losses[-1], 4),
                "grad_norm": round(float(grad_norm), 3),
            }
            if val_batches and (step % eval_every == 0 or step == total_steps):
                val = evaluate(model, val_batches, dev, autocast)
                val_losses.append(val)
                record["val_loss"] = round(val, 4)
                if val < best - min_delta:
                    best, bad_evals = val, 0
                    best_state = {k: v.detach().clone() for k, v in get_peft_model_state_dict(model).items()}
                    model.save_pretrained(str(out))  # the best so far: a long run can be stopped at any time
                else:
                    bad_evals += 1
                    if bad_evals >= patience:
                        stopped_early = True
                        record["early_stop"] = True
            emit(record)
            if stopped_early:
                break
    if not val_batches:  # nothing held out: keep the last adapter
        best_state = {k: v.detach().clone() for k, v in get_peft_model_state_dict(model).items()}
        best = float("nan")

    set_peft_model_state_dict(model, best_state)
    model.save_pretrained(str(out))
    result = TrainResult(
        train_losses=train_losses,
        val_losses=val_losses,
        best_val_loss=best,
        initial_val_loss=initial,
        adapter_path=str(out),
        steps=step,
        epochs=round(step / steps_per_epoch, 2),
        stopped_early=stopped_early,
        seconds=round(time.perf_counter() - t0, 1),
        train_examples=len(train_ex),
        val_examples=len(val_ex),
        config=config,
    )
    (out / "train_result.json").write_text(json.dumps(asdict(result), indent=2))
    return result
