"""Service processes that tests and benchmarks can signal: SIGKILL, SIGTERM, restart, RSS by pid.

`tests/servers.py`'s `running()` hides the process; the load and fault checks need it.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx

from tests.servers import REPO_ROOT, free_port


class Server:
    """`python -m <module>` with `env` added, on `port`; output to data/logs/<name>-<port>.log."""

    def __init__(self, module: str, env: dict[str, str], port: int | None = None, name: str | None = None):
        self.module, self.env = module, dict(env)
        self.port = port or free_port()
        self.name = name or module.rsplit(".", 2)[-2]
        self.proc: subprocess.Popen[bytes] | None = None
        logs = REPO_ROOT / "data" / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        self.log_path: Path = logs / f"{self.name}-{self.port}.log"

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        assert self.proc is not None, "not started"
        return self.proc.pid

    def start(self) -> Server:
        full = {**os.environ, "PYTHONUNBUFFERED": "1", **self.env}
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", self.module], env=full, cwd=REPO_ROOT, stdout=log, stderr=subprocess.STDOUT
            )
        return self

    def wait_ready(self, timeout: float = 600, path: str = "/ready") -> Server:
        """Block until `path` answers 200; raise if the process exits or the time runs out."""
        assert self.proc is not None, "not started"
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.module} exited with {self.proc.returncode}; see {self.log_path}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(self.base + path, timeout=2).status_code == 200:
                    return self
            if time.monotonic() > deadline:
                raise TimeoutError(f"{self.module} not ready after {timeout}s; see {self.log_path}")
            time.sleep(0.25)

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def signal(self, sig: int) -> None:
        assert self.proc is not None, "not started"
        self.proc.send_signal(sig)

    def kill(self) -> int:
        """SIGKILL and reap; returns the exit status (-9)."""
        assert self.proc is not None, "not started"
        self.proc.kill()
        return self.proc.wait()

    def stop(self, timeout: float = 60) -> int | None:
        """SIGTERM, then SIGKILL after `timeout`; returns the exit status."""
        if self.proc is None or self.proc.poll() is not None:
            return None if self.proc is None else self.proc.returncode
        self.proc.terminate()
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            return self.kill()

    def log_tail(self, chars: int = 3000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return ""


@contextlib.contextmanager
def started(
    module: str, env: dict[str, str], *, port: int | None = None, timeout: float = 600, name: str | None = None
) -> Iterator[Server]:
    """A ready `Server`, stopped (SIGTERM, then SIGKILL) on exit whatever state the test left it in."""
    server = Server(module, env, port, name).start()
    try:
        server.wait_ready(timeout)
        yield server
    finally:
        server.stop()


def gateway_env(port: int, qdrant_path: Path | str, **extra: str) -> dict[str, str]:
    """The one-command stack's environment: its own port and Qdrant folder, quiet logs."""
    return {
        "INFERAG_PORT": str(port),
        "INFERAG_RAG_QDRANT_PATH": str(qdrant_path),
        "INFERAG_LOG_LEVEL": "warning",
        **extra,
    }


def rss_bytes(pid: int) -> int:
    """Resident memory of `pid` and its children (psutil)."""
    import psutil

    proc = psutil.Process(pid)
    total = proc.memory_info().rss
    for child in proc.children(recursive=True):
        with contextlib.suppress(psutil.Error):
            total += child.memory_info().rss
    return total


SIGTERM = signal.SIGTERM
SIGKILL = signal.SIGKILL
