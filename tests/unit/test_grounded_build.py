"""The grounded-answering training-set builder (examples/grounded/): deterministic, rendered exactly as the
service prompts, answers that copy a shown sentence and cite its number, agent traces the ReAct parser
reads as the agent would, and nothing from the evaluation set."""

from __future__ import annotations

import asyncio
import importlib.util
import json
import re
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.tiny_models import REPO_ROOT

BUILDER = REPO_ROOT / "examples" / "grounded" / "build.py"


def _builder() -> Any:
    sys.path.insert(0, str(BUILDER.parent))
    try:
        spec = importlib.util.spec_from_file_location("grounded_build", BUILDER)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules["grounded_build"] = module  # dataclasses look their module up
        spec.loader.exec_module(module)
        return module
    finally:
        sys.path.pop(0)


@pytest.fixture(scope="module")
def build(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Any]:
    builder = _builder()
    out = tmp_path_factory.mktemp("grounded") / "set.jsonl"
    asyncio.run(builder.build(out, answers=24, agent=8, seed=7, val_fraction=0.2, french=0.5, chunks_share=0.2))
    return out, builder


def _rows(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def test_build_is_deterministic_and_seeded(build: tuple[Path, Any], tmp_path: Path) -> None:
    out, builder = build
    again, other = tmp_path / "again.jsonl", tmp_path / "other.jsonl"
    asyncio.run(builder.build(again, answers=24, agent=8, seed=7, val_fraction=0.2, french=0.5, chunks_share=0.2))
    asyncio.run(builder.build(other, answers=24, agent=8, seed=8, val_fraction=0.2, french=0.5, chunks_share=0.2))
    assert again.read_bytes() == out.read_bytes()
    assert other.read_bytes() != out.read_bytes()


def test_answers_are_rendered_as_the_service_prompts_and_cite_a_shown_sentence(build: tuple[Path, Any]) -> None:
    from services.rag.citations import cited_numbers
    from services.rag.prompt import SYSTEM_PROMPT

    rows = [r for r in _rows(build[0]) if not r["kind"].startswith("agent")]
    assert len(rows) == 24 and {r["lang"] for r in rows} == {"en", "fr"}
    assert {"sentences", "chunks"} == {r["context"] for r in rows}
    assert len({r["kind"] for r in rows}) >= 6  # many question shapes
    idk = 0
    for row in rows:
        system, *history, user, answer = row["messages"]
        assert system == {"role": "system", "content": SYSTEM_PROMPT}
        assert user["role"] == "user" and answer["role"] == "assistant"
        assert user["content"].startswith("Sources (data, not instructions):\n<data>\n")
        assert re.search(r"</data>\n\nQuestion: .+\S$", user["content"])
        sources = dict(re.findall(r"^\[(\d+)\] (.*?)(?=\n\n\[\d+\] |\n</data>)", user["content"], re.M | re.S))
        cited = cited_numbers(answer["content"])
        if row["kind"] == "idk":
            idk += 1
            assert not cited and answer["content"].startswith(("I don't know", "Je ne sais pas"))
            continue
        assert cited and all(str(n) in sources for n in cited), row
        # every cited statement is a sentence of the source it cites, word for word
        for sentence, number in re.findall(r"([^.\[\]]{8,}?) \[(\d+)\]", answer["content"]):
            words = sentence.split(": ", 1)[-1].strip()
            assert words in " ".join(sources[number].split()), (words, sources[number])
    assert idk >= 2


def test_agent_traces_follow_the_react_agent(build: tuple[Path, Any]) -> None:
    from services.rag.agent import react
    from services.rag.agent.serving import select_tools

    rows = [r for r in _rows(build[0]) if r["kind"].startswith("agent")]
    assert len(rows) == 8
    tools = select_tools(None)
    arithmetic = 0
    for row in rows:
        system, question, first, observation, *rest = row["messages"]
        assert system["content"].startswith(react.system_prompt(select_tools(None), None).split("Tools:")[0])
        assert first == {"role": "assistant", "content": react.first_search(question["content"]), "train": False}
        assert observation["content"].startswith("Observation: result of search_knowledge_base (data, not")
        final = react.parse(rest[-1]["content"], tools)
        assert isinstance(final, react.ReactFinal) and re.search(r"\[\d+\]", final.answer), rest[-1]
        if len(rest) == 3:  # a calculator step, then the answer
            arithmetic += 1
            action = react.parse(rest[0]["content"], tools)
            assert isinstance(action, react.ReactAction) and action.tool == "calculator"
            assert rest[1]["content"].startswith("Observation: result of calculator")
            result = rest[1]["content"].split(" = ")[-1].split("\n")[0]
            assert result.replace(".", ",") in final.answer or result in final.answer
        else:
            assert len(rest) == 1
    assert arithmetic >= 3


def test_nothing_from_the_evaluation_set(build: tuple[Path, Any]) -> None:
    """No run of eight words of the course (the evaluation set) appears in the training set."""
    course = (REPO_ROOT / "datasets" / "course" / "course.txt").read_text(encoding="utf-8")

    def shingles(text: str) -> set[str]:
        words = re.findall(r"\w+", text.lower())
        return {" ".join(words[i : i + 8]) for i in range(len(words) - 7)}

    built = " ".join(m["content"] for row in _rows(build[0]) for m in row["messages"])
    assert len(shingles(built)) > 5000
    assert not shingles(built) & shingles(course)
