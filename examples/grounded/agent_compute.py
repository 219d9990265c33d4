"""The agent on questions that ask for a computed number: does its final answer state the right number?

    .venv/bin/python examples/grounded/agent_compute.py                  # the stack of this tree
    .venv/bin/python examples/grounded/agent_compute.py --code /tmp/old  # another tree (e.g. before a change)

Eight questions over made-up documents (differences, a sum, a ratio, an age gap, one in French), two or three
documents each in their own collection; none is in the adapter's training set (the Zorblax one is the issue's
own). It starts `make run`'s process (`evaluate.started_stack`), asks each question of `/rag/agent`, and prints
per question whether a calculator result gave the gold number and whether the final answer states it.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from examples.grounded.evaluate import ROOT, started_stack  # noqa: E402

QUESTIONS = [
    (["The Velmora tower is 212 metres tall.", "The Ostrel tower is 187 metres tall.",
      "The Quenby bridge is 1,340 metres long."], "How much taller is the Velmora tower than the Ostrel tower?", "25"),
    (["The Drenn ferry carries 460 passengers.", "The Lauvik ferry carries 315 passengers."],
     "How many more passengers does the Drenn ferry carry than the Lauvik ferry?", "145"),
    (["The Hask library holds 12,400 books.", "The Morrow library holds 8,900 books."],
     "How many books do the Hask library and the Morrow library hold together?", "21300"),
    (["Anja Pell was born in 1962.", "Toma Riss was born in 1987."],
     "How many years older is Anja Pell than Toma Riss?", "25"),
    (["The Pirel lake covers 84 square kilometres.", "The Sunde lake covers 21 square kilometres."],
     "How many times larger is the Pirel lake than the Sunde lake?", "4"),
    (["Le Tarvo 2 pèse 38 kilogrammes.", "Le Brisk 9 pèse 26 kilogrammes."],
     "Combien de kilogrammes de plus pèse le Tarvo 2 que le Brisk 9 ?", "12"),
    (["The Kelt festival drew 53,000 visitors.", "The Orvan fair drew 41,500 visitors."],
     "What is the difference in visitors between the Kelt festival and the Orvan fair?", "11500"),
    (["The Zorblax 3000 battery lasts 41 hours.", "The Quintor X battery lasts 17 hours."],
     "How many more hours does the Zorblax 3000 battery last than the Quintor X battery?", "24"),
]  # fmt: skip


def _digits(text: str) -> str:
    return re.sub(r"(?<=\d)[,\s\u202f](?=\d{3})", "", text)


def states(text: str, number: str) -> bool:
    """`number` written in `text` (thousands separators ignored), not as part of another one or negated."""
    return re.search(rf"(?<![\d.\-]){number}(?![\d])", _digits(text)) is not None


def ask(url: str, collection: str, question: str) -> list[dict[str, object]]:
    body = {"collection": collection, "query": question, "stream": True, "max_steps": 4, "max_tokens": 128}
    with httpx.stream("POST", f"{url}/rag/agent", json=body, timeout=600) as resp:
        resp.raise_for_status()
        lines = [line[6:] for line in resp.iter_lines() if line.startswith("data: ")]
    return [json.loads(line) for line in lines if line != "[DONE]"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--code", type=Path, default=ROOT, help="source tree to serve from (default: this one)")
    ap.add_argument("--adapter", default="grounded-smollm2", help="INFERAG_GEN_DEFAULT_ADAPTER")
    args = ap.parse_args()
    computed = answered = 0
    with started_stack(args.code.resolve(), args.adapter) as url:
        for i, (docs, question, gold) in enumerate(QUESTIONS):
            httpx.post(f"{url}/rag/collections/c{i}/documents", timeout=300,
                       json={"documents": [{"id": f"d{j}", "text": t} for j, t in enumerate(docs)]},
                       ).raise_for_status()  # fmt: skip
            events = ask(url, f"c{i}", question)
            tool = any(e["type"] == "tool_result" and e["tool"] == "calculator" and not e["error"]
                       and states(str(e["observation"]).rsplit("=", 1)[-1], gold) for e in events)  # fmt: skip
            done = events[-1]
            right = states(str(done.get("answer") or ""), gold)
            computed, answered = computed + tool, answered + right
            row = {"question": question, "gold": gold, "calculator_gave_it": tool, "answer_states_it": right,
                   "stopped_reason": done.get("stopped_reason"), "answer": done.get("answer")}
            print(json.dumps(row, ensure_ascii=False), flush=True)
    n = len(QUESTIONS)
    print(f"calculator gave the gold number {computed}/{n}; the final answer states it {answered}/{n}")


if __name__ == "__main__":
    main()
