"""The server's commands of `inferag`: serve (run the stack), weights (prepare weights offline), eval (against a
running stack, with the evaluation code of services/rag) and collections migrate (a store folder, offline).

They plug into the client distribution's `inferag` command through the `inferag.cli` entry-point group
(pyproject.toml); `python -m services.cli` is the same command without the installed entry points.
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

from inferag_client import AsyncInferagClient, InferagError
from inferag_client.cli import ApiKey, Collection, JsonOut, Url, collections_app, emit, err, exit_on_error, out
from inferag_client.models import DocumentIn, IngestResult, Job
from services.generation.weights.cli import app as weights_app


def register(app: typer.Typer) -> None:
    """Adds the server's commands to the `inferag` app (the `inferag.cli` entry point)."""
    app.add_typer(weights_app, name="weights")
    app.command("eval")(evaluate)
    app.command()(serve)
    collections_app.command("migrate")(collections_migrate)


def collections_migrate(
    path: Annotated[Path | None, typer.Option("--path", help="Store folder (default: INFERAG_RAG_QDRANT_PATH, "
                                                             "else <data dir>/qdrant).")] = None,
) -> None:
    """Convert a store folder written by an earlier inferag (qdrant-client's local mode) to the embedded Qdrant
    engine, with the stack stopped. Every point is copied and counted; the old folder is kept as a backup."""
    from services.rag.settings import RagSettings
    from services.rag.store import StoreLocked
    from services.rag.store.embedded import is_local_mode_folder
    from services.rag.store.snapshots import migrate_local_mode

    folder = (path or Path(RagSettings().store_path())).expanduser()
    if not is_local_mode_folder(folder):
        out.print(f"nothing to migrate: {folder} is not an earlier version's store folder")
        return
    try:
        copied = migrate_local_mode(folder, log_line=out.print)
    except StoreLocked as exc:
        err.print(f"[red]error[/]: {exc.message}")
        raise typer.Exit(1) from exc
    out.print(f"migrated {len(copied)} collections ({sum(copied.values())} points) in {folder}")


# ---------------------------------------------------------------- eval


def evaluate(
    dataset: Annotated[str, typer.Argument(help="BEIR folder (e.g. datasets/course) or june:<set>.")],
    collection: Collection,
    configs: Annotated[
        str, typer.Option(help="Comma-separated retrieval configs.")
    ] = "dense,sparse,hybrid,hybrid+rerank,graph,hybrid+graph",
    answers: Annotated[bool, typer.Option(help="Also answer the QA questions through /rag/query.")] = True,
    ingest_corpus: Annotated[bool, typer.Option("--ingest/--no-ingest", help="Ingest the corpus first.")] = True,
    limit: Annotated[int | None, typer.Option(help="Only the first N queries and questions.")] = None,
    top_k: Annotated[int, typer.Option(help="Hits retrieved per query.")] = 10,
    concurrency: Annotated[int, typer.Option(help="Requests in flight.")] = 4,
    timeout: Annotated[float, typer.Option(help="Seconds one request may take (slow hosts answer slowly).")] = 300,
    url: Url = None,
    api_key: ApiKey = None,
    json_out: JsonOut = False,
) -> None:
    """Retrieval metrics (nDCG@10, Recall@k, MRR) per config and answer checks, against the running stack."""
    from services.rag import eval as rag_eval

    data = rag_eval.load_dataset(dataset)
    if limit is not None:
        keep = list(data.queries)[:limit]
        data.queries = {q: data.queries[q] for q in keep}
        data.qrels = {q: r for q, r in data.qrels.items() if q in data.queries}
        data.answers = {q: a for q, a in data.answers.items() if q in data.queries}
    names = [c.strip() for c in configs.split(",") if c.strip()]
    with exit_on_error(json_out):
        retrieval, answer_results = asyncio.run(
            _evaluate(data, collection, names, answers, ingest_corpus, top_k, concurrency, url, api_key, timeout)
        )
    if json_out:
        emit(rag_eval.results_json(data, retrieval, answer_results))
    else:
        out.print(rag_eval.render_table(retrieval, answer_results, title=f"{data.name} → {collection}"))


async def _evaluate(
    data: Any,
    collection: str,
    configs: list[str],
    answers: bool,
    ingest_corpus: bool,
    top_k: int,
    concurrency: int,
    url: str | None,
    api_key: str | None,
    request_timeout: float = 300,
) -> tuple[dict[str, dict[str, float]], dict[str, Any] | None]:
    from services.rag import eval as rag_eval

    async with AsyncInferagClient(url, api_key, timeout=request_timeout) as client:
        if ingest_corpus:
            await _ingest_corpus(client, collection, data.corpus)

        async def retrieve(query: str, config: str) -> list[str]:
            mode, rerank = rag_eval.parse_config(config)
            hits = (await client.retrieve(query, collection=collection, top_k=top_k, mode=mode)).data
            if rerank and hits:
                ranked = await client.rerank(query, hits=hits)
                hits = [r.hit for r in ranked.data if r.hit is not None]
            return [h.doc_id for h in hits]

        async def answer(question: str) -> rag_eval.Answered:
            result = await client.query(question, collection=collection)
            return rag_eval.Answered(result.answer, len(result.sources), [_cited(c) for c in result.citations])

        err.print(f"[dim]retrieval: {len(data.qrels)} queries x {len(configs)} configs[/]")
        retrieval = await rag_eval.evaluate_retrieval(data, retrieve, configs, concurrency=concurrency)
        answer_results = None
        if answers and data.answers:
            err.print(f"[dim]answers: {len(data.answers)} questions[/]")
            answer_results = await rag_eval.evaluate_answers(data, answer, concurrency=concurrency)
        return retrieval, answer_results


def _cited(citation: Any) -> Any:
    """A citation of /rag/query as the answer checks read it (its quote, when the service gives one)."""
    from services.rag import eval as rag_eval

    quote = getattr(citation, "quote", None)
    return rag_eval.CitedSource(
        number=citation.number,
        doc_id=citation.doc_id,
        text=citation.text,
        start=citation.start,
        end=citation.end,
        quote=quote.text if quote is not None else None,
        quote_start=quote.start if quote is not None else None,
        quote_end=quote.end if quote is not None else None,
    )


async def _ingest_corpus(client: AsyncInferagClient, collection: str, corpus: dict[str, Any], batch: int = 16) -> None:
    """The corpus as documents whose ids are the corpus ids (what the qrels name)."""
    from services.rag.eval import document_text

    docs = [
        DocumentIn(id=doc_id, text=document_text(doc), source=doc.title or doc_id) for doc_id, doc in corpus.items()
    ]
    with Progress(TextColumn("ingesting corpus"), BarColumn(), MofNCompleteColumn(), console=err) as progress:
        task = progress.add_task("ingest", total=len(docs))
        for start in range(0, len(docs), batch):
            part = docs[start : start + batch]
            result = await client.documents.ingest(collection, part)
            if isinstance(result, Job):
                result = await client.jobs.wait(result.id)
                if result.status == "failed":
                    raise InferagError(500, {"error": {"message": f"ingest job {result.id} failed: {result.errors}"}})
            assert isinstance(result, IngestResult | Job)
            progress.advance(task, len(part))


# ---------------------------------------------------------------- serve


def serve(
    host: Annotated[str | None, typer.Option(help="Interface to bind (INFERAG_HOST).")] = None,
    port: Annotated[int | None, typer.Option(help="Port (INFERAG_PORT, default 8000).")] = None,
) -> None:
    """Start the one-process stack (generation, embeddings, RAG, playground) with the settings from the environment."""
    if host is not None:
        os.environ["INFERAG_HOST"] = host
    if port is not None:
        os.environ["INFERAG_PORT"] = str(port)
    from services.gateway.app import main

    main()


if __name__ == "__main__":
    from inferag_client.cli import app

    register(app)
    app()
