"""The `inferag` command: talk to a running stack (chat, ask, ingest, collections, graph, perplexity); a server
install adds eval, serve (run the stack) and weights (prepare weights offline).

Every client command reads the stack's address from `--url` / `INFERAG_BASE_URL` (default
http://127.0.0.1:8000) and the key from `--api-key` / `INFERAG_API_KEY`; `--json` prints
machine-readable output on stdout (progress and prompts go to stderr).
"""

from __future__ import annotations

import contextlib
import glob
import json
import math
import sys
from collections.abc import Iterator, Sequence
from importlib import metadata
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from . import _core
from ._client import InferagClient
from .errors import InferagError, error_for_body
from .models import Citation, Job

app = typer.Typer(name="inferag", no_args_is_help=True, add_completion=False, help=__doc__)
collections_app = typer.Typer(
    help="List (default), create, delete, snapshot or restore collections (a server install: migrate an old "
    "store folder).",
    invoke_without_command=True,
)
app.add_typer(collections_app, name="collections")
graph_app = typer.Typer(help="A collection's knowledge graph: entities, one entity, stats, export.",
                        no_args_is_help=True)
app.add_typer(graph_app, name="graph")

out = Console(highlight=False)
err = Console(stderr=True, highlight=False)

# The types the server reads (services.rag.parsing.EXTENSIONS; a test keeps the two equal).
UPLOAD_SUFFIXES = frozenset(
    {".txt", ".text", ".md", ".markdown", ".html", ".htm", ".xhtml", ".pdf", ".docx", ".pptx", ".xlsx", ".odt",
     ".epub", ".csv", ".tsv", ".eml", ".msg", ".json", ".jsonl", ".ndjson", ".png", ".jpg", ".jpeg", ".tif", ".tiff",
     ".webp"}
)  # fmt: skip

Url = Annotated[str | None, typer.Option("--url", envvar="INFERAG_BASE_URL", help="Base URL of the stack.")]
ApiKey = Annotated[
    str | None, typer.Option("--api-key", envvar="INFERAG_API_KEY", help="Bearer key.", show_default=False)
]
JsonOut = Annotated[bool, typer.Option("--json", help="Machine-readable output on stdout.")]
Collection = Annotated[str, typer.Option("--collection", "-c", help="Collection (knowledge base) name.")]


def _client(url: str | None, api_key: str | None) -> InferagClient:
    return InferagClient(url, api_key)


def emit(data: Any) -> None:
    """One JSON document on stdout (pydantic models as their wire JSON)."""
    if hasattr(data, "model_dump"):
        data = data.model_dump(mode="json")
    sys.stdout.write(json.dumps(data, ensure_ascii=False, indent=2) + "\n")
    sys.stdout.flush()


@contextlib.contextmanager
def exit_on_error(json_out: bool) -> Iterator[None]:
    """An error answer of the stack ends the command with status 1, its body on stdout in --json mode."""
    try:
        yield
    except InferagError as exc:
        if json_out:
            emit({**exc.body, "status": exc.status})
        else:
            err.print(f"[red]error[/]: {exc}")
        raise typer.Exit(1) from exc


def _timings(timings: dict[str, float]) -> str:
    return "  ".join(f"{k} {v:.0f} ms" for k, v in timings.items())


def _print_sources(citations: Sequence[Citation], title: str = "Sources", show: Console = out) -> None:
    if not citations:
        err.print("[dim](no sources)[/]")
        return
    table = Table(title=title, title_justify="left", show_lines=False)
    for column in ("#", "document", "score", "passage"):
        table.add_column(column, overflow="fold")
    for c in citations:
        snippet = " ".join((c.quote.text if c.quote else c.text).split())  # a cited source: its quote
        snippet = snippet[:117] + "..." if len(snippet) > 120 else snippet
        score = "" if c.score is None else f"{c.score:.3f}"
        table.add_row(str(c.number), c.source or c.doc_id, score, snippet)
    show.print(table)


# ---------------------------------------------------------------- collections


@collections_app.callback()
def collections(ctx: typer.Context, url: Url = None, api_key: ApiKey = None, json_out: JsonOut = False) -> None:
    """List the collections with their document and chunk counts."""
    if ctx.invoked_subcommand is not None:
        return
    with exit_on_error(json_out), _client(url, api_key) as client:
        listing = client.collections.list()
    if json_out:
        emit(listing)
        return
    table = Table()
    for column in ("name", "documents", "chunks", "dimension", "embedding model"):
        table.add_column(column)
    for c in listing.data:
        table.add_row(c.name, str(c.documents), str(c.points), str(c.dimension), c.embed_model)
    out.print(table if listing.data else "[dim]no collections[/]")


@collections_app.command("create")
def collections_create(
    name: str,
    graph: Annotated[
        str | None, typer.Option(help="Knowledge graph: off, keyphrase or llm (default: the stack's, keyphrase).")
    ] = None,
    url: Url = None,
    api_key: ApiKey = None,
    json_out: JsonOut = False,
) -> None:
    """Create an empty collection."""
    with exit_on_error(json_out), _client(url, api_key) as client:
        info = client.collections.create(name, graph=graph)
    if json_out:
        emit(info)
        return
    out.print(f"created [bold]{info.name}[/] ({info.dimension} dimensions, graph {info.settings.get('graph', 'off')})")


@collections_app.command("delete")
def collections_delete(name: str, url: Url = None, api_key: ApiKey = None, json_out: JsonOut = False) -> None:
    """Delete a collection and everything in it."""
    with exit_on_error(json_out), _client(url, api_key) as client:
        deleted = client.collections.delete(name)
    emit(deleted) if json_out else out.print(f"deleted [bold]{name}[/]")


@collections_app.command("snapshot")
def collections_snapshot(
    name: str,
    output: Annotated[Path | None, typer.Option("--output", "-o", help="File to write (default NAME.snapshot.tar.gz).")]
    = None,
    url: Url = None, api_key: ApiKey = None, json_out: JsonOut = False,
) -> None:
    """Save a snapshot of a collection (chunks, vectors, document registry) to a file."""
    with exit_on_error(json_out), _client(url, api_key) as client:
        path = client.collections.snapshot(name, output or Path(f"{name}.snapshot.tar.gz"))
    size = path.stat().st_size
    emit({"collection": name, "file": str(path), "bytes": size}) if json_out else \
        out.print(f"saved [bold]{name}[/] to {path} ({size / 1e6:.1f} MB)")


@collections_app.command("restore")
def collections_restore(
    file: Annotated[Path, typer.Argument(exists=True, dir_okay=False, help="A snapshot file.")],
    name: Annotated[str | None, typer.Argument(help="Collection to create (default: the snapshot's).")] = None,
    url: Url = None, api_key: ApiKey = None, json_out: JsonOut = False,
) -> None:
    """Restore a snapshot file as a new collection (on this stack, embedded or on a Qdrant server)."""
    with exit_on_error(json_out), _client(url, api_key) as client:
        info = client.collections.restore(file, name)
    emit(info) if json_out else out.print(
        f"restored [bold]{info.name}[/]: {info.documents} documents, {info.points} chunks")


# ---------------------------------------------------------------- graph


@graph_app.command("entities")
def graph_entities(
    collection: Collection,
    query: Annotated[
        str | None, typer.Argument(help="Match by name, then by meaning; none: the most connected.")
    ] = None,
    limit: Annotated[int, typer.Option(help="Most entities listed.")] = 20,
    url: Url = None,
    api_key: ApiKey = None,
    json_out: JsonOut = False,
) -> None:
    """Entities of a collection's graph with their type, degree and mentions."""
    with exit_on_error(json_out), _client(url, api_key) as client:
        listing = client.graph.entities(collection, query, limit=limit)
    if json_out:
        emit(listing)
        return
    table = Table(title=f"{len(listing.data)} of {listing.total} entities")
    for column in ("name", "type", "degree", "chunks", "documents", "score", "id"):
        table.add_column(column)
    for e in listing.data:
        score = "" if e.score is None else f"{e.score:.3f}"
        table.add_row(e.name, e.type, str(e.degree), str(e.chunks), str(e.documents), score, e.id)
    out.print(table if listing.data else "[dim]no entities[/]")


@graph_app.command("entity")
def graph_entity(
    collection: Collection, entity_id: str, url: Url = None, api_key: ApiKey = None, json_out: JsonOut = False
) -> None:
    """One entity: its relations and the chunks that mention it."""
    with exit_on_error(json_out), _client(url, api_key) as client:
        detail = client.graph.entity(collection, entity_id)
    if json_out:
        emit(detail)
        return
    out.print(f"[bold]{detail.name}[/] ({detail.type}) — {detail.degree} relations, {detail.chunks} chunks "
              f"in {detail.documents} documents")
    for description in detail.descriptions:
        out.print(f"  {description}", markup=False)
    table = Table(title="relations")
    for column in ("with", "weight", "description", "documents"):
        table.add_column(column)
    for r in detail.relations:
        other = r.target_name if r.source == detail.id else r.source_name
        table.add_row(other, f"{r.weight:g}", r.description, ", ".join(r.doc_ids))
    out.print(table)
    out.print("chunks: " + ", ".join(f"{c.doc_id}#{c.chunk_index}" for c in detail.linked_chunks), markup=False)


@graph_app.command("stats")
def graph_stats(collection: Collection, url: Url = None, api_key: ApiKey = None, json_out: JsonOut = False) -> None:
    """How the graph is made and how big it is."""
    with exit_on_error(json_out), _client(url, api_key) as client:
        stats = client.graph.stats(collection)
    if json_out:
        emit(stats)
        return
    out.print(f"{collection}: graph {stats.mode}, {stats.entities} entities, {stats.relations} relations, "
              f"{stats.chunks} chunks of {stats.documents} documents")


@graph_app.command("export")
def graph_export(
    collection: Collection,
    format: Annotated[str, typer.Option("--format", help="graphml or json (NetworkX node-link).")] = "graphml",
    output: Annotated[Path | None, typer.Option("--out", help="File to write; default: stdout.")] = None,
    url: Url = None,
    api_key: ApiKey = None,
) -> None:
    """The whole graph, for Gephi, yEd, Neo4j (GraphML import) or NetworkX."""
    with exit_on_error(False), _client(url, api_key) as client:
        data = client.graph.export(collection, format)
    if output is None:
        sys.stdout.buffer.write(data)
        sys.stdout.flush()
    else:
        output.write_bytes(data)
        err.print(f"wrote {output} ({len(data)} bytes)")


# ---------------------------------------------------------------- ingest


def expand_paths(patterns: Sequence[str]) -> list[Path]:
    """Files named by the arguments: files as given, folders searched recursively, globs (`**` too) expanded.

    Only the types the ingestion reads are kept from folders and globs.
    """
    found: dict[Path, None] = {}
    for pattern in patterns:
        path = Path(pattern)
        if glob.has_magic(pattern):
            matches = [Path(p) for p in sorted(glob.glob(pattern, recursive=True))]
            found.update((p, None) for p in matches if p.is_file() and p.suffix.lower() in UPLOAD_SUFFIXES)
        elif path.is_dir():
            files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in UPLOAD_SUFFIXES)
            found.update((p, None) for p in files)
        elif path.is_file():
            found[path] = None
        else:
            raise typer.BadParameter(f"no such file or folder: {pattern}", param_hint="PATH")
    return list(found)


@app.command()
def ingest(
    paths: Annotated[
        list[str], typer.Argument(help="Files, folders (recursive) or globs (quote them: 'docs/**/*.md').")
    ],
    collection: Collection,
    metadata: Annotated[str | None, typer.Option(help="JSON object added to every document's metadata.")] = None,
    chunking: Annotated[str | None, typer.Option(help="JSON chunking parameters.")] = None,
    background: Annotated[bool, typer.Option(help="Ingest as background jobs and follow their progress.")] = False,
    url: Url = None,
    api_key: ApiKey = None,
    json_out: JsonOut = False,
) -> None:
    """Upload documents (text, markdown, HTML, PDF, Office, OpenDocument, EPUB, mail, CSV, JSON, images) into a
    collection, one request per file, with a progress bar."""
    files = expand_paths(paths)
    if not files:
        err.print("[yellow]no files to ingest[/]")
        raise typer.Exit(1)
    meta = json.loads(metadata) if metadata else None
    chunk_params = json.loads(chunking) if chunking else None
    report: list[dict[str, Any]] = []
    progress = Progress(
        TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), console=err
    )
    with _client(url, api_key) as client, progress:
        task = progress.add_task("ingesting", total=len(files))
        for path in files:
            progress.update(task, description=f"{path.name}")
            entry: dict[str, Any] = {"path": str(path)}
            try:
                result = client.documents.upload(
                    collection, path, metadata=meta, chunking=chunk_params, background=background or None
                )
                if isinstance(result, Job):

                    def show(job: Job, name: str = path.name) -> None:
                        progress.update(task, description=f"{name} [{job.status} {job.chunks_done} chunks]")

                    job = client.jobs.wait(result.id, on_progress=show)
                    entry.update(job=job.id, status=job.status, chunks=job.chunks_done)
                    if job.errors:
                        entry["error"] = "; ".join(e.message for e in job.errors)
                else:
                    entry.update(
                        status="succeeded", chunks=result.chunks, documents=[d.doc_id for d in result.documents]
                    )
            except InferagError as exc:
                entry.update(status="failed", error=exc.message, code=exc.code, http_status=exc.status)
                progress.console.print(f"[red]{path}[/]: {exc.message}")
            report.append(entry)
            progress.advance(task)
    failed = [e for e in report if e["status"] != "succeeded"]
    chunks = sum(int(e.get("chunks") or 0) for e in report)
    if json_out:
        emit({"collection": collection, "files": report, "chunks": chunks, "failed": len(failed)})
    else:
        out.print(
            f"{len(report) - len(failed)}/{len(report)} files ingested into [bold]{collection}[/], {chunks} chunks"
        )
    if failed:
        raise typer.Exit(1)


# ---------------------------------------------------------------- ask and chat


@app.command()
def ask(
    question: str,
    collection: Collection,
    top_k: Annotated[int, typer.Option(help="Chunks retrieved before reranking.")] = 20,
    rerank_top_n: Annotated[int, typer.Option(help="Sources given to the model (0: no rerank).")] = 5,
    mode: Annotated[str, typer.Option(help="dense, sparse, hybrid, graph or hybrid+graph.")] = "hybrid",
    max_tokens: Annotated[int | None, typer.Option(help="Longest answer, in tokens.")] = None,
    model: Annotated[str | None, typer.Option(help="Generation model; default: the stack's.")] = None,
    url: Url = None,
    api_key: ApiKey = None,
    json_out: JsonOut = False,
) -> None:
    """Answer one question from a collection: the answer streams, then its sources and timings."""
    options: dict[str, Any] = {"top_k": top_k, "rerank_top_n": rerank_top_n, "mode": mode}
    options.update({k: v for k, v in {"max_tokens": max_tokens, "model": model}.items() if v is not None})
    with exit_on_error(json_out), _client(url, api_key) as client:
        if json_out:
            emit(client.query(question, collection=collection, **options))
            return
        _stream_answer(client, collection, question=question, options=options)


def _stream_answer(
    client: InferagClient,
    collection: str,
    *,
    question: str | None = None,
    messages: list[dict[str, str]] | None = None,
    options: dict[str, Any],
    show: Console = out,
) -> tuple[str, list[Citation], dict[str, float]]:
    """Print a streamed RAG answer, then its sources and timings, on `show`; return them."""
    text, sources, cited, timings = [], [], [], {}
    with client.query_stream(question, messages=messages, collection=collection, **options) as stream:
        for event in stream:
            if event.type == "retrieval":
                sources = list(getattr(event, "sources", []))
            elif event.type == "delta":
                piece = str(getattr(event, "text", ""))
                text.append(piece)
                show.print(piece, end="", markup=False, soft_wrap=True)
            elif event.type == "citations":
                cited = list(getattr(event, "citations", []))
            elif event.type == "done":
                timings = dict(getattr(event, "timings", {}))
    show.print()
    _print_sources(cited or sources, "Sources" if cited else "Sources given (none cited)", show)
    if timings:
        err.print(f"[dim]{_timings(timings)}[/]")
    return "".join(text), cited or sources, timings


def _chat_model(client: InferagClient, model: str | None) -> str:
    if model:
        return model
    for card in client.models().data:
        if (card.model_extra or {}).get("engine"):
            return card.id
    raise typer.BadParameter("the stack lists no generation model; pass --model", param_hint="--model")


@app.command()
def chat(
    collection: Annotated[
        str | None, typer.Option("--collection", "-c", help="Answer from this collection, with sources.")
    ] = None,
    model: Annotated[str | None, typer.Option(help="Generation model; default: the stack's.")] = None,
    system: Annotated[str | None, typer.Option(help="System prompt (plain chat only).")] = None,
    max_tokens: Annotated[int | None, typer.Option(help="Longest answer, in tokens.")] = None,
    rewrite: Annotated[bool, typer.Option(help="Rewrite follow-ups into standalone questions (RAG).")] = False,
    url: Url = None,
    api_key: ApiKey = None,
    json_out: JsonOut = False,
) -> None:
    """Interactive chat, streamed; `--collection` chats with a knowledge base. `/exit` or Ctrl-D ends it.

    With --json each turn is printed as one JSON line (question, answer, sources) after its stream.
    """
    with exit_on_error(json_out), _client(url, api_key) as client:
        history: list[dict[str, str]] = [{"role": "system", "content": system}] if system and not collection else []
        if collection is None:
            model = _chat_model(client, model)
        show = err if json_out else out  # --json: the streams go to stderr, stdout carries one line per turn
        err.print(f"[dim]chatting with {collection or model}; /exit or Ctrl-D to end[/]")
        while True:
            try:
                question = err.input("[bold cyan]you>[/] ").strip() if sys.stdin.isatty() else input().strip()
            except EOFError:
                break
            if not question:
                continue
            if question in ("/exit", "/quit"):
                break
            history.append({"role": "user", "content": question})
            sources: list[Citation] = []
            if collection is not None:
                options: dict[str, Any] = {"rewrite_query": rewrite}
                if max_tokens is not None:
                    options["max_tokens"] = max_tokens
                if model is not None:
                    options["model"] = model
                answer, sources, _ = _stream_answer(client, collection, messages=history, options=options, show=show)
            else:
                assert model is not None
                answer = _stream_chat(client, model, history, max_tokens, show)
            history.append({"role": "assistant", "content": answer})
            if json_out:
                line = {"question": question, "answer": answer, "sources": [s.model_dump(mode="json") for s in sources]}
                sys.stdout.write(json.dumps(line, ensure_ascii=False) + "\n")
                sys.stdout.flush()


def _stream_chat(
    client: InferagClient, model: str, history: list[dict[str, str]], max_tokens: int | None, show: Console
) -> str:
    """Plain chat: the stack's /v1/chat/completions, streamed (OpenAI chunks)."""
    pieces: list[str] = []
    with client._stream(_core.chat_stream(model, history, max_tokens), lambda _name, data: json.loads(data)) as chunks:
        for chunk in chunks:
            if "error" in chunk:  # a failure after the stream started: its OpenAI error body
                raise error_for_body(chunk)
            choices = chunk.get("choices") or []
            piece = (choices[0].get("delta") or {}).get("content") if choices else None
            if piece:
                pieces.append(piece)
                show.print(piece, end="", markup=False, soft_wrap=True)
    show.print()
    return "".join(pieces)


# ---------------------------------------------------------------- perplexity

_PERPLEXITY_BATCH = 64  # the route's limit of texts per request


@app.command()
def perplexity(
    file: Annotated[str, typer.Argument(help="Text file, one text per line ('-': standard input).")],
    model: Annotated[str | None, typer.Option(help="Generation model; default: the stack's.")] = None,
    whole: Annotated[bool, typer.Option("--whole", help="Score the whole file as one text.")] = False,
    url: Url = None,
    api_key: ApiKey = None,
    json_out: JsonOut = False,
) -> None:
    """How plausible the model finds each text: tokens, mean negative logprob (nats) and perplexity, then the
    whole file's (token-weighted). Lower is more plausible."""
    if file != "-" and not Path(file).is_file():
        raise typer.BadParameter(f"{file} is not a file", param_hint="FILE")
    text = sys.stdin.read() if file == "-" else Path(file).read_text(encoding="utf-8")
    texts = [text] if whole else [line for line in text.splitlines() if line.strip()]
    if not texts or not any(t.strip() for t in texts):
        raise typer.BadParameter(f"{file} holds no text", param_hint="FILE")
    with exit_on_error(json_out), _client(url, api_key) as client:
        model = _chat_model(client, model)
        data = []
        for start in range(0, len(texts), _PERPLEXITY_BATCH):
            result = client.perplexity(texts[start : start + _PERPLEXITY_BATCH], model=model)
            data += [d.model_copy(update={"index": start + d.index}) for d in result.data]
    scored = sum(len(d.tokens) - 1 for d in data)
    total_nll = sum(d.nll * (len(d.tokens) - 1) for d in data) / scored
    overall = {"tokens": scored, "nll": total_nll, "perplexity": math.exp(min(total_nll, 700.0))}
    if json_out:
        emit({"model": model, "data": [d.model_dump(mode="json") for d in data], "overall": overall})
        return
    table = Table(title=f"perplexity under {model}", title_justify="left")
    for column in ("#", "tokens", "nll", "perplexity", "text"):
        table.add_column(column, overflow="fold")
    for d, t in zip(data, texts, strict=True):
        snippet = " ".join(t.split())
        table.add_row(str(d.index + 1), str(len(d.tokens)), f"{d.nll:.3f}", f"{d.perplexity:.2f}",
                      snippet[:77] + "..." if len(snippet) > 80 else snippet)  # fmt: skip
    out.print(table)
    out.print(f"overall: {scored} scored tokens, nll {total_nll:.3f}, perplexity {overall['perplexity']:.2f}")


def main() -> None:
    """The `inferag` command: these client commands, plus those a server install plugs in (the `inferag.cli`
    entry points: serve, weights, eval, collections migrate)."""
    for entry in metadata.entry_points(group="inferag.cli"):
        entry.load()(app)
    app()


if __name__ == "__main__":
    main()
