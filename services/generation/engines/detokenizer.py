"""Token ids to text, a token at a time: the incremental detokenizer and the stop-string scanner.

Both run per row of the transformers engine's batch: the detokenizer holds back incomplete UTF-8
characters, the scanner finds stop strings in what is not yet sent and holds back a tail that could
still become one.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

# Prompt tokens used as context when decoding the first generated tokens.
_DETOK_CONTEXT = 5


class IncrementalDetokenizer:
    """Turns token ids into text deltas, holding back incomplete UTF-8 characters.

    Decodes a small sliding window (`prefix..end`) and emits what the newest tokens add
    to the text of `prefix..read`, so merged tokens and multi-byte characters come out
    right without re-decoding the whole output each step.
    """

    def __init__(self, tokenizer: Any, prompt_ids: Sequence[int]):
        self._tok = tokenizer
        self._ids: list[int] = list(prompt_ids[-_DETOK_CONTEXT:]) if prompt_ids else []
        self._prefix = 0
        self._read = len(self._ids)

    def _decode(self, ids: list[int]) -> str:
        if not ids:
            return ""
        return str(self._tok.decode(ids, skip_special_tokens=True, clean_up_tokenization_spaces=False))

    def push(self, token_id: int) -> str:
        self._ids.append(token_id)
        prefix_text = self._decode(self._ids[self._prefix : self._read])
        new_text = self._decode(self._ids[self._prefix :])
        if len(new_text) > len(prefix_text) and not new_text.endswith("\ufffd"):
            delta = new_text[len(prefix_text) :]
            self._ids = self._ids[self._read :]
            self._prefix, self._read = 0, len(self._ids)
            return delta
        return ""

    def flush(self) -> str:
        """Whatever is still held back (possibly an incomplete character)."""
        if self._read >= len(self._ids):
            return ""
        prefix_text = self._decode(self._ids[self._prefix : self._read])
        new_text = self._decode(self._ids[self._prefix :])
        self._ids = self._ids[len(self._ids) :]
        self._prefix = self._read = 0
        return new_text[len(prefix_text) :]


def find_stop(text: str, stops: Sequence[str], sent: int) -> tuple[int, str] | None:
    """Earliest stop string in the not-yet-emitted part of `text`: (cut index, stop)."""
    best: tuple[int, str] | None = None
    for stop in stops:
        if not stop:
            continue
        idx = text.find(stop, max(0, sent - len(stop) + 1))
        if idx != -1 and (best is None or idx < best[0]):
            best = (max(idx, sent), stop)
    return best


def held_back(text: str, stops: Sequence[str], sent: int) -> int:
    """Length of the longest tail of `text` that could be the start of a stop string."""
    longest = 0
    for stop in stops:
        for n in range(min(len(stop) - 1, len(text) - sent), longest, -1):
            if stop.startswith(text[len(text) - n :]):
                longest = n
                break
    return longest
