"""The shipped multihop set: its files are what build.py makes, and every question is two-hop."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

from services.rag.eval import load_beir, normalize

MULTIHOP = Path(__file__).resolve().parents[2] / "datasets" / "multihop"


def _build() -> ModuleType:
    spec = importlib.util.spec_from_file_location("multihop_build", MULTIHOP / "build.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_files_are_what_build_py_makes() -> None:
    for path, text in _build().build().items():  # build() also runs the two-hop checks
        assert (MULTIHOP / path).read_text(encoding="utf-8") == text, path


def test_every_question_needs_two_documents_linked_by_its_bridge() -> None:
    test, dev = load_beir(MULTIHOP, "test"), load_beir(MULTIHOP, "dev")
    assert len(test.qrels) >= 30 and len(dev.qrels) == 10 and not set(test.qrels) & set(dev.qrels)
    bridges = {row[0]: row[3] for row in _build().QUESTIONS}
    for data in (test, dev):
        for qid, rels in data.qrels.items():
            (answer_doc,) = [d for d, g in rels.items() if g == 2]
            (subject_doc,) = [d for d, g in rels.items() if g == 1]
            answer, subject = (normalize(data.corpus[d].text) for d in (answer_doc, subject_doc))
            assert normalize(bridges[qid]) in answer and normalize(bridges[qid]) in subject, qid
            assert normalize(bridges[qid]) not in normalize(data.queries[qid]), qid
            assert any(normalize(a) in answer for a in data.answers[qid]), qid
            assert not any(normalize(a) in subject for a in data.answers[qid]), qid
