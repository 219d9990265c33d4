"""Start a service as a real process on a free loopback port, for end-to-end tests and benchmarks."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx

REPO_ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def running(
    command: str | list[str],
    env: dict[str, str],
    *,
    port: int | None = None,
    ready_path: str = "/ready",
    timeout: float = 300,
) -> Iterator[str]:
    """Run `python -m command` (or the argv list `command`) with `env` added.

    Yields the base URL once `ready_path` answers 200; the process is stopped on exit.
    Its output goes to data/logs/.
    """
    port = port or free_port()
    (REPO_ROOT / "data" / "logs").mkdir(parents=True, exist_ok=True)
    log = open(REPO_ROOT / "data" / "logs" / f"server-{port}.log", "wb")  # noqa: SIM115
    full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **env}
    full_env.setdefault("INFERAG_GEN_PORT", str(port))
    args = [sys.executable, "-m", command] if isinstance(command, str) else command
    module = args[2] if isinstance(command, str) else " ".join(command[:3])
    proc = subprocess.Popen(args, env=full_env, cwd=REPO_ROOT, stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + timeout
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"{module} exited with {proc.returncode}; see {log.name}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(base + ready_path, timeout=2).status_code == 200:
                    break
            if time.monotonic() > deadline:
                raise TimeoutError(f"{module} not ready after {timeout}s; see {log.name}")
            time.sleep(0.5)
        yield base
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()
