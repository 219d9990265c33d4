"""Answer quality of the default stack with and without the grounded adapter, in one command.

    .venv/bin/python examples/grounded/evaluate.py                      # both sets, adapter on and off
    .venv/bin/python examples/grounded/evaluate.py --adapters grounded-smollm2 --sets datasets/heldout-en

For each value of INFERAG_GEN_DEFAULT_ADAPTER it starts `make run`'s process (the gateway, nothing else
configured, a fresh data folder that reuses the converted model of ./data), runs
`inferag eval SET -c NAME --configs hybrid --json` on each set, stops the stack, and prints one row per
(set, adapter): answers containing a gold answer and citing a source that holds one, answers containing
a gold answer, answers whose citations are all given sources, answers whose every cited source carries
a quote that is a substring of the source with document offsets pointing at it. `--code DIR` serves from
another source tree (e.g. `git archive main` unpacked) to measure the stack before a change.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parents[2]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _serve(code: Path, data: Path, adapter: str, port: int) -> subprocess.Popen[bytes]:
    env = {**os.environ, "PYTHONPATH": str(code), "INFERAG_DATA_DIR": str(data), "INFERAG_PORT": str(port),
           "INFERAG_RAG_QDRANT_PATH": ":memory:", "INFERAG_LOG_LEVEL": "warning",
           "INFERAG_GEN_DEFAULT_ADAPTER": adapter}  # fmt: skip
    return subprocess.Popen([sys.executable, "-m", "services.gateway.app"], cwd=code, env=env)


def _wait_ready(url: str, proc: subprocess.Popen[bytes], timeout: float = 1800) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the stack exited with {proc.returncode}")
        try:
            if httpx.get(url + "/ready", timeout=5).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(2)
    raise TimeoutError("the stack did not become ready")


@contextmanager
def started_stack(code: Path, adapter: str) -> Iterator[str]:
    """`make run`'s process served from `code` with `adapter`, on a fresh data folder: its URL, once ready."""
    with tempfile.TemporaryDirectory(prefix="grounded-eval-") as tmp:
        data = Path(tmp)
        if (ROOT / "data" / "models").is_dir():  # the converted packaged model, instead of a minute of conversion
            (data / "models").symlink_to(ROOT / "data" / "models")
        port = _free_port()
        url = f"http://127.0.0.1:{port}"
        proc = _serve(code, data, adapter, port)
        try:
            _wait_ready(url, proc)
            yield url
        finally:
            proc.terminate()
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                proc.kill()


def run(code: Path, adapter: str, sets: list[str], concurrency: int) -> dict[str, Any]:
    with started_stack(code, adapter) as url:
        card = httpx.get(url + "/v1/models", timeout=120).json()["data"][0]
        results: dict[str, Any] = {"model": card.get("details")}
        for folder in sets:
            name = Path(folder).name.replace("-", "")
            started = time.perf_counter()
            out = subprocess.run(
                [sys.executable, "-m", "services.cli", "eval", folder, "-c", name, "--configs", "hybrid",
                 "--concurrency", str(concurrency), "--timeout", "3600", "--url", url, "--json"],
                cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True, text=True, check=True,
            )  # fmt: skip
            report = json.loads(out.stdout)
            report["seconds"] = round(time.perf_counter() - started, 1)
            results[folder] = report
            print(summary(folder, adapter, report), file=sys.stderr, flush=True)  # progress of a long run
        return results


def summary(folder: str, adapter: str, report: dict[str, Any]) -> str:
    answers = report["answers"]
    items = answers["items"]
    n = len(items)

    def count(key: str, want: bool = True) -> int:
        return sum(1 for i in items if bool(i[key]) == want)

    supported, gold = count("supported"), count("contains_gold")
    valid = sum(1 for i in items if not i["invalid_citations"])
    quotes = sum(1 for i in items if not i["quote_errors"])
    return (f"| {folder} | {adapter} | {supported}/{n} ({supported / n:.0%}) | {gold}/{n} | {valid}/{n} | "
            f"{quotes}/{n} | {report['seconds']:.0f} s |")  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--adapters", default="grounded-smollm2,none", help="values of INFERAG_GEN_DEFAULT_ADAPTER")
    ap.add_argument("--sets", default="datasets/course,datasets/heldout-en")
    ap.add_argument("--code", type=Path, default=ROOT, help="source tree to serve from (default: this one)")
    ap.add_argument("--concurrency", type=int, default=4)
    ap.add_argument("--out", type=Path, default=None, help="also write every answer and check as JSON here")
    args = ap.parse_args()
    sets = [s.strip() for s in args.sets.split(",") if s.strip()]
    everything: dict[str, Any] = {}
    rows = []
    for adapter in [a.strip() for a in args.adapters.split(",") if a.strip()]:
        results = run(args.code.resolve(), adapter, sets, args.concurrency)
        everything[adapter] = results
        rows += [summary(folder, adapter, results[folder]) for folder in sets]
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(everything, indent=1, ensure_ascii=False))
    print("| set | default adapter | gold + cites a source holding it | gold | citations valid | quotes ok | time |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    print("\n".join(rows))
    if shutil.which("git"):
        sha = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=args.code, capture_output=True, text=True)
        print(f"\nserved from {args.code} {sha.stdout.strip()}")


if __name__ == "__main__":
    main()
