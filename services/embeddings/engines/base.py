"""What the three engines share: device and dtype choice, tokenization with the length rules, padding.

Requests are tokenized by the serving layer (so an over-long input fails with a 400
before it is queued, and `usage` is exact); the batch worker only pads the token ids
of many requests into one tensor and runs the model. The ids are the ones the model's
own pre-processing would produce, so results equal `SentenceTransformer.encode`,
`CrossEncoder.predict` etc. on the same texts.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import torch

from services.common.cpu import cpu_auto_dtype
from services.common.errors import InvalidRequest

log = logging.getLogger(__name__)

M = TypeVar("M")

_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


@dataclass(frozen=True, slots=True)
class Encoded:
    """One model input: token ids (special tokens included) and, for pairs, the segment ids."""

    input_ids: list[int]
    token_type_ids: list[int] | None = None

    def __len__(self) -> int:
        return len(self.input_ids)


def resolve_device(setting: str) -> str:
    if setting == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return setting


def resolve_dtype(setting: str, device: str) -> str:
    """auto → float16 on CUDA; on CPU bfloat16 where the CPU has native bf16 arithmetic, else float32.
    int8 only on CPU."""
    if setting == "auto":
        return "float16" if device.startswith("cuda") else cpu_auto_dtype()
    if setting == "int8" and not device.startswith("cpu"):
        raise ValueError("dtype int8 (dynamic quantization) runs on CPU only; use float16 on CUDA")
    return setting


def load_sentence_model(cls: Callable[..., M], path: str, device: str) -> M:
    """A sentence-transformers model (`SentenceTransformer`, `CrossEncoder`) from a hub id or folder, in eval
    mode; a local folder never needs the hub (not even for model-card metadata)."""
    model = cls(path, device=device, local_files_only=Path(path).is_dir())
    model.eval()  # type: ignore[attr-defined]
    return model


def max_input_tokens(model: Any) -> int:
    """The longest input a sentence-transformers model reads, in its tokenizer's tokens."""
    return int(model.max_seq_length or model.tokenizer.model_max_length)


def apply_dtype(module: torch.nn.Module, dtype: str) -> torch.nn.Module:
    """Cast the weights, or quantize every nn.Linear to dynamic int8 (CPU)."""
    if dtype == "int8":
        import warnings

        from torch.ao.quantization import per_channel_dynamic_qconfig, quantize_dynamic

        # Per-channel weight scales: on MiniLM, cosine to the float32 vectors is ~0.98 (per-tensor: ~0.82-0.95).
        with warnings.catch_warnings():  # torch marks its quantized tensors deprecated; they still work
            warnings.simplefilter("ignore")
            spec = {torch.nn.Linear: per_channel_dynamic_qconfig}
            return quantize_dynamic(module, spec, dtype=torch.qint8, inplace=True)
    target = _DTYPES[dtype]
    return module.to(target) if target != torch.float32 else module


class TokenizerAdapter:
    """Tokenize texts (or take token ids), apply the model's length limit, pad batches."""

    def __init__(self, tokenizer: Any, max_length: int, device: str):
        self.tokenizer = tokenizer
        self.max_length = max_length
        self.device = device
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        self.left_pad = getattr(tokenizer, "padding_side", "right") == "left"
        self.use_token_types = "token_type_ids" in getattr(tokenizer, "model_input_names", ())
        self.vocab_size = len(tokenizer)
        # The special tokens the model wraps one text in ([CLS] ... [SEP], <s> ... </s>),
        # found by comparing one token with and without them.
        bare = tokenizer("a", add_special_tokens=False)["input_ids"]
        full = tokenizer("a", add_special_tokens=True)["input_ids"]
        start = _find(full, bare)
        self.prefix = list(full[:start])
        self.suffix = list(full[start + len(bare) :])
        self.content_limit = max_length - len(self.prefix) - len(self.suffix)
        # Private copies of the Rust tokenizer behind a fast tokenizer, configured once here and called
        # directly (the transformers wrapper costs ~0.3 ms a call, more than tokenizing a sentence).
        # Reconfiguring a shared one per call (truncation, padding) races with calls in other threads:
        # "Already borrowed" errors, or texts silently cut to a pair's length.
        self.fast: Any = None
        self._pair_fast: Any = None
        backend = getattr(tokenizer, "backend_tokenizer", None)
        if backend is not None:
            from tokenizers import Tokenizer

            self.fast = Tokenizer.from_str(backend.to_str())
            self.fast.no_truncation()
            self.fast.no_padding()
            # What `tokenizer(query, doc, truncation="longest_first", max_length=...)` sets before encoding.
            self._pair_fast = Tokenizer.from_str(backend.to_str())
            self._pair_fast.no_padding()
            side = getattr(tokenizer, "truncation_side", "right")
            self._pair_fast.enable_truncation(max_length, strategy="longest_first", direction=side)

    # ------------------------------------------------------------ single texts

    def _wrap(self, content: Sequence[int]) -> Encoded:
        ids = [*self.prefix, *content, *self.suffix]
        return Encoded(ids, [0] * len(ids) if self.use_token_types else None)

    def texts(self, texts: Sequence[str], *, truncate: bool, param: str = "input") -> list[Encoded]:
        """Tokenize like the model's own pre-processing; over-long texts are cut or refused."""
        return self._limit(self._content(texts), truncate=truncate, param=param)

    def _content(self, texts: Sequence[str]) -> list[list[int]]:
        """Word-piece ids without special tokens and without truncation."""
        if self.fast is not None:
            return [e.ids for e in self.fast.encode_batch(list(texts), add_special_tokens=False)]
        return list(self.tokenizer(list(texts), add_special_tokens=False, verbose=False)["input_ids"])

    def token_ids(self, arrays: Sequence[Sequence[int]], *, truncate: bool, param: str = "input") -> list[Encoded]:
        """Token arrays are this model's word-piece ids without special tokens, which are added here."""
        for i, ids in enumerate(arrays):
            bad = next((t for t in ids if t >= self.vocab_size), None)
            if bad is not None:
                raise InvalidRequest(
                    f"{param}[{i}] has token id {bad}; this model's vocabulary has {self.vocab_size} tokens.",
                    param=param,
                    code="invalid_token_id",
                )
        return self._limit(arrays, truncate=truncate, param=param)

    def _limit(self, content: Sequence[Sequence[int]], *, truncate: bool, param: str) -> list[Encoded]:
        out = []
        for i, ids in enumerate(content):
            if len(ids) > self.content_limit:
                if not truncate:
                    total = len(ids) + len(self.prefix) + len(self.suffix)
                    raise InvalidRequest(
                        f"{param}[{i}] is {total} tokens; this model reads at most {self.max_length}. "
                        'Shorten it, or send "truncate": true to embed its first '
                        f"{self.max_length} tokens.",
                        param=param,
                        code="context_length_exceeded",
                    )
                ids = ids[: self.content_limit]
            out.append(self._wrap(ids))
        return out

    def windows(self, text: str, *, overlap: int) -> tuple[list[Encoded], int]:
        """Cover a whole passage with model-sized windows (overlapping), for long-passage scoring."""
        content = self._content([text])[0]
        size = self.content_limit
        step = max(1, size - overlap)
        starts = range(0, max(1, len(content) - overlap), step) if len(content) > size else [0]
        pieces = [self._wrap(content[s : s + size]) for s in starts]
        return pieces, sum(len(p) for p in pieces)

    # ------------------------------------------------------------ pairs

    def pairs(self, query: str, docs: Sequence[str]) -> list[Encoded]:
        """(query, document) pairs as a cross-encoder reads them, cut longest-first like CrossEncoder.predict."""
        if self._pair_fast is not None:
            encodings = self._pair_fast.encode_batch([(query, d) for d in docs], add_special_tokens=True)
            return [Encoded(e.ids, e.type_ids if self.use_token_types else None) for e in encodings]
        enc = self.tokenizer([query] * len(docs), list(docs), truncation="longest_first", max_length=self.max_length)
        types = enc.get("token_type_ids")
        return [
            Encoded(list(ids), list(types[i]) if types is not None else None) for i, ids in enumerate(enc["input_ids"])
        ]

    # ------------------------------------------------------------ batches

    def pad(self, batch: Sequence[Encoded]) -> dict[str, torch.Tensor]:
        """One padded tensor per model input, on the model's device."""
        width = max(len(e) for e in batch)
        ids = torch.full((len(batch), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(batch), width), dtype=torch.long)
        types = torch.zeros((len(batch), width), dtype=torch.long) if self.use_token_types else None
        for row, e in enumerate(batch):
            n = len(e)
            cols = slice(width - n, width) if self.left_pad else slice(0, n)
            ids[row, cols] = torch.tensor(e.input_ids, dtype=torch.long)
            mask[row, cols] = 1
            if types is not None and e.token_type_ids is not None:
                types[row, cols] = torch.tensor(e.token_type_ids, dtype=torch.long)
        features = {"input_ids": ids, "attention_mask": mask}
        if types is not None:
            features["token_type_ids"] = types
        return {k: v.to(self.device) for k, v in features.items()}


# What one extra model call costs, in padded tokens' worth of compute. On a CPU every padded
# token costs as much as a real one and a call costs little (about 40-50 tokens of MiniLM, measured),
# so mixed lengths are worth splitting; on a GPU a call costs more than padding does.
CALL_OVERHEAD_TOKENS = {"cpu": 48, "cuda": 4096}


def plan_groups(lengths: Sequence[int], call_overhead: int) -> list[list[int]]:
    """Split a batch into model calls of similar lengths, minimising padded tokens + calls x overhead.

    Returns groups of indices into `lengths`. An exact partition of the sorted lengths
    (dynamic programming, O(n^2) on at most a few hundred inputs).
    """
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    n = len(order)
    best = [0] + [0] * n
    cut = [0] * (n + 1)
    for j in range(1, n + 1):
        longest = lengths[order[j - 1]]
        best[j], cut[j] = min((best[i] + call_overhead + (j - i) * longest, i) for i in range(j))
    groups: list[list[int]] = []
    j = n
    while j > 0:
        groups.append(order[cut[j] : j])
        j = cut[j]
    return groups[::-1]


def call_overhead(device: str) -> int:
    return CALL_OVERHEAD_TOKENS["cpu" if device.startswith("cpu") else "cuda"]


def _find(haystack: Sequence[int], needle: Sequence[int]) -> int:
    for i in range(len(haystack) - len(needle) + 1):
        if list(haystack[i : i + len(needle)]) == list(needle):
            return i
    raise ValueError("cannot locate the special tokens this tokenizer adds")


def default_threads() -> int:
    """One less than the CPUs this process may use (at least one): a core stays free for the HTTP side.

    On 2 cores, 1 thread measured 73-80 texts/s for MiniLM and 2 threads 141-144 when the machine
    was otherwise idle, but 2 threads fell to 14-30 texts/s (1 thread: 37-78) while other processes
    (the generation service, say) used the CPUs: spinning threads wait for a descheduled peer.
    """
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, cpus - 1)


def set_threads(num_threads: int | None, device: str) -> None:
    if device.startswith("cpu"):
        n = num_threads or default_threads()
        torch.set_num_threads(n)
        log.info("torch intra-op threads: %d", n)
