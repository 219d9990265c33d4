"""Reasoning output: the model's `<think>…</think>` split from its answer (`INFERAG_GEN_REASONING_PARSER`).

Two parsers, as vLLM names the behaviours:

* `think` (Qwen3, SmolLM3, ...): the output opens with `<think>`; what follows up to `</think>` is
  reasoning, the rest the answer. Output that does not open with the tag is all answer.
* `deepseek_r1`: the chat template already opened the tag in the prompt, so the output is reasoning
  from its first token up to `</think>` (an opening tag the model writes anyway is dropped).

A reasoning that never closes (the token limit hit first) is all reasoning. `ReasoningSplitter`
works on a stream: it holds back a tail that may be the start of a tag, so no tag text ever reaches
either side.
"""

from __future__ import annotations

from typing import Literal

ReasoningParser = Literal["think", "deepseek_r1"]
PARSERS: tuple[ReasoningParser, ...] = ("think", "deepseek_r1")
OPEN, CLOSE = "<think>", "</think>"


def _partial_tail(text: str, tag: str) -> int:
    """Length of the longest tail of `text` that is a proper prefix of `tag`."""
    for n in range(min(len(tag) - 1, len(text)), 0, -1):
        if tag.startswith(text[-n:]):
            return n
    return 0


class ReasoningSplitter:
    """Feed output text as it comes; get back (reasoning, content) deltas."""

    def __init__(self, parser: ReasoningParser):
        self.parser = parser
        # opening: before the first visible text (the opening tag may still come); reasoning; after: past
        # `</think>`, skipping the blank lines before the answer; content.
        self.state: Literal["opening", "reasoning", "after", "content"] = "opening"
        self.pending = ""

    def feed(self, text: str) -> tuple[str, str]:
        self.pending += text
        reasoning: list[str] = []
        content: list[str] = []
        while self.pending:
            if self.state == "opening":
                head = self.pending.lstrip()
                if head.startswith(OPEN):
                    self.pending, self.state = head[len(OPEN) :], "reasoning"
                elif not head or OPEN.startswith(head):
                    break  # whitespace or a partial tag so far: wait
                else:
                    self.state = "reasoning" if self.parser == "deepseek_r1" else "content"
            elif self.state == "reasoning":
                at = self.pending.find(CLOSE)
                if at >= 0:
                    reasoning.append(self.pending[:at])
                    self.pending, self.state = self.pending[at + len(CLOSE) :], "after"
                    continue
                keep = _partial_tail(self.pending, CLOSE)
                reasoning.append(self.pending[: len(self.pending) - keep])
                self.pending = self.pending[len(self.pending) - keep :]
                break
            elif self.state == "after":
                self.pending = self.pending.lstrip()
                if self.pending:
                    self.state = "content"
            else:
                content.append(self.pending)
                self.pending = ""
        return "".join(reasoning), "".join(content)

    def flush(self) -> tuple[str, str]:
        """The held-back tail at the end of the output."""
        rest, self.pending = self.pending, ""
        if self.state == "reasoning" or (self.state == "opening" and self.parser == "deepseek_r1"):
            return rest, ""
        return "", "" if self.state == "after" else rest


def split_reasoning(text: str, parser: ReasoningParser) -> tuple[str | None, str]:
    """A whole output as (reasoning, or None when there is none; content)."""
    splitter = ReasoningSplitter(parser)
    reasoning, content = splitter.feed(text)
    tail_reasoning, tail_content = splitter.flush()
    return (reasoning + tail_reasoning) or None, content + tail_content
