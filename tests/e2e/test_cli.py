"""The `inferag` command end to end: the stack is started with `inferag serve`, and every client command
(collections, ingest, ask, chat, eval) runs as its own process against it."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests import documents as make
from tests.e2e.stack import BASE_ENV, DOCS
from tests.servers import REPO_ROOT, free_port, running

pytestmark = pytest.mark.slow

CLI = [sys.executable, "-m", "services.cli"]


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    port = free_port()
    env = {**BASE_ENV, "INFERAG_RAG_QDRANT_PATH": str(tmp_path_factory.mktemp("cli") / "qdrant")}
    with running([*CLI, "serve", "--port", str(port)], env, port=port, timeout=600) as url:
        yield url


def inferag(base: str, *args: str, stdin: str | None = None, ok: bool = True) -> subprocess.CompletedProcess[str]:
    env = {"INFERAG_BASE_URL": base, "PATH": "/usr/bin:/bin", "COLUMNS": "200", "NO_COLOR": "1"}
    proc = subprocess.run(
        [*CLI, *args], input=stdin, capture_output=True, text=True, env=env, cwd=REPO_ROOT, timeout=600
    )
    if ok:
        assert proc.returncode == 0, f"{args}: {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    return proc


def as_json(proc: subprocess.CompletedProcess[str]) -> Any:
    return json.loads(proc.stdout)


@pytest.fixture(scope="module")
def kb(base: str, tmp_path_factory: pytest.TempPathFactory) -> str:
    """The three test documents ingested from a folder tree (plus a file type the command skips)."""
    root = tmp_path_factory.mktemp("tree")
    (root / "sub").mkdir()
    for name, text in DOCS.items():
        (root / ("sub" if name.endswith(".txt") else ".") / name).write_text(text)
    (root / "skip.bin").write_bytes(b"\x00")
    report = as_json(inferag(base, "ingest", str(root), "--collection", "cli-kb", "--json"))
    assert report["failed"] == 0 and report["chunks"] >= 3
    assert sorted(Path(f["path"]).name for f in report["files"]) == sorted(DOCS)
    return "cli-kb"


def test_collections(base: str, kb: str) -> None:
    created = as_json(inferag(base, "collections", "create", "cli-tmp", "--json"))
    assert created["name"] == "cli-tmp"
    listing = as_json(inferag(base, "collections", "--json"))
    names = {c["name"]: c for c in listing["data"]}
    assert names[kb]["documents"] == 3 and "cli-tmp" in names
    table = inferag(base, "collections").stdout
    assert kb in table and "cli-tmp" in table
    assert as_json(inferag(base, "collections", "delete", "cli-tmp", "--json"))["deleted"]
    assert "cli-tmp" not in inferag(base, "collections").stdout


def test_ingest_glob_and_background(base: str, tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "one.md").write_text("# One\n\nThe first note is about Lisbon.")
    (tmp_path / "a" / "two.txt").write_text("The second note is about Porto.")
    proc = inferag(base, "ingest", str(tmp_path / "**" / "*.md"), "-c", "cli-glob", "--background")
    assert "1/1 files ingested into cli-glob" in proc.stdout
    report = as_json(inferag(base, "ingest", str(tmp_path / "a"), "-c", "cli-glob", "--json"))
    assert len(report["files"]) == 2 and report["failed"] == 0
    missing = inferag(base, "ingest", str(tmp_path / "nope"), "-c", "cli-glob", ok=False)
    assert missing.returncode != 0 and "no such file" in missing.stderr


def test_ingest_a_folder_of_every_type(base: str, tmp_path: Path) -> None:
    files = {
        "a.docx": make.docx_file("Doc", ["Word text about herons."], [["k", "v"], ["1", "2"]]),
        "b.pptx": make.pptx_file([("Deck", "Slide text about egrets.", "Notes on storks.")]),
        "c.xlsx": make.xlsx_file({"S": [["bird", "count"], ["crane", 3]]}),
        "d.epub": make.epub_file("Book", [("One", "Book text about ibises.")]),
        "e.odt": make.odt_file("Odt", ["Odt text about spoonbills."]),
        "f.eml": make.eml_file("Birds", "Mail text about flamingos.", []),
        "g.csv": b"bird,wing\nswan,long\n",
        "h.jsonl": make.jsonl_file([{"text": "Record text about pelicans."}]),
        "i.pdf": make.text_pdf([["PDF text about cormorants."]]),
        "j.png": make.page_image(["Image text about puffins."]),
        "k.msg": make.msg_file("Birds", "Outlook text about gannets.", []),
    }
    (tmp_path / "docs" / "deep").mkdir(parents=True)
    for name, data in files.items():
        (tmp_path / "docs" / ("deep" if name < "f" else ".") / name).write_bytes(data)
    (tmp_path / "docs" / "skip.bin").write_bytes(b"\x00")
    report = as_json(inferag(base, "ingest", str(tmp_path / "docs"), "-c", "cli-types", "--json"))
    assert sorted(Path(f["path"]).name for f in report["files"]) == sorted(files), report
    assert report["failed"] == 0, report


def test_ask_prints_answer_and_sources(base: str, kb: str) -> None:
    proc = inferag(base, "ask", "Where is the Eiffel Tower?", "-c", kb, "--max-tokens", "24", "--rerank-top-n", "2")
    assert "Sources" in proc.stdout and "paris.html" in proc.stdout
    assert "total" in proc.stderr  # the stage timings
    answer = as_json(inferag(base, "ask", "Where is the Eiffel Tower?", "-c", kb, "--max-tokens", "16", "--json"))
    assert answer["answer"] and answer["sources"][0]["source"] == "paris.html"


def test_ask_error_is_typed(base: str) -> None:
    proc = inferag(base, "ask", "anything", "-c", "no-such-kb", "--json", ok=False)
    body = as_json(proc)
    assert proc.returncode == 1 and body["status"] == 404 and body["error"]["type"] == "not_found_error"


def test_chat_with_a_collection_and_plain(base: str, kb: str) -> None:
    proc = inferag(
        base, "chat", "-c", kb, "--max-tokens", "16", "--json",
        stdin="Where is the Eiffel Tower?\nAnd when was it finished?\n/exit\n",
    )  # fmt: skip
    turns = [json.loads(line) for line in proc.stdout.splitlines() if line.strip()]
    assert [t["question"] for t in turns] == ["Where is the Eiffel Tower?", "And when was it finished?"]
    assert all(t["answer"] for t in turns) and turns[0]["sources"][0]["source"] == "paris.html"
    plain = inferag(base, "chat", "--max-tokens", "8", stdin="Say hello.\n")
    assert plain.stdout.strip() and "chatting with smollm2" in plain.stderr


def test_eval_on_a_small_beir_set(base: str, tmp_path: Path) -> None:
    root = tmp_path / "mini"
    (root / "qrels").mkdir(parents=True)
    corpus = [
        {"_id": "d1", "title": "Paris", "text": "The Eiffel Tower is in Paris."},
        {"_id": "d2", "title": "LoRA", "text": "LoRA trains low-rank adapters."},
        {"_id": "d3", "title": "Qdrant", "text": "Qdrant stores vectors."},
    ]
    (root / "corpus.jsonl").write_text("\n".join(json.dumps(d) for d in corpus))
    queries = [{"_id": "q1", "text": "Where is the Eiffel Tower?"}, {"_id": "q2", "text": "What stores vectors?"}]
    (root / "queries.jsonl").write_text("\n".join(json.dumps(q) for q in queries))
    (root / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\nq1\td1\t1\nq2\td3\t1\n")
    (root / "qa.jsonl").write_text(
        json.dumps({"_id": "q1", "question": "Where is the Eiffel Tower?", "answers": ["Paris"]})
    )

    result = as_json(inferag(base, "eval", str(root), "-c", "cli-eval", "--json"))
    assert result["dataset"] == {"name": "mini", "documents": 3, "queries": 2, "qa": 1}
    assert set(result["retrieval"]) == {"dense", "sparse", "hybrid", "hybrid+rerank", "graph", "hybrid+graph"}
    assert result["retrieval"]["hybrid+rerank"]["Recall@5"] == 1.0
    assert result["retrieval"]["graph"]["Recall@5"] == 1.0  # "Eiffel Tower", "vectors": matched by name
    assert result["answers"]["questions"] == 1
    table = inferag(
        base, "eval", str(root), "-c", "cli-eval", "--no-ingest", "--no-answers", "--configs", "dense"
    ).stdout
    assert "nDCG@10" in table and "dense" in table
    docs = as_json(inferag(base, "collections", "--json"))["data"]
    assert next(c for c in docs if c["name"] == "cli-eval")["documents"] == 3  # ids are the corpus ids
    entities = as_json(inferag(base, "graph", "entities", "-c", "cli-eval", "Eiffel Tower", "--json"))["data"]
    assert entities[0]["name"] == "Eiffel Tower" and entities[0]["documents"] == 1
    assert "Eiffel Tower" in inferag(base, "graph", "entities", "-c", "cli-eval", "Eiffel").stdout
    detail = inferag(base, "graph", "entity", "-c", "cli-eval", entities[0]["id"]).stdout
    assert "Eiffel Tower" in detail and "Paris" in detail  # related in one sentence
    exported = inferag(base, "graph", "export", "-c", "cli-eval", "--format", "json").stdout
    assert "Eiffel Tower" in {n["name"] for n in json.loads(exported)["nodes"]}
