"""Writes `inferag_client/_client.py` (the sync client) from `inferag_client/_async_client.py` with unasync.

    python clients/unasync_clients.py          # after editing _async_client.py; commit both files

tests/unit/test_sdk_client.py checks that the committed `_client.py` is what this writes.
"""

from __future__ import annotations

import shutil
import sys
import tempfile
from pathlib import Path

import unasync

PACKAGE = Path(__file__).resolve().parent / "inferag_client"
SOURCE, TARGET = "_async_client.py", "_client.py"
# unasync drops async/await and maps these names (Async<Name> otherwise becomes Sync<Name>).
REPLACEMENTS = {
    "asyncio": "time",  # `await asyncio.sleep(...)` -> `time.sleep(...)`
    "aclose": "close",
    "aread": "read",
    "aiter_sse": "iter_sse",
    "arun_blocking": "run_blocking",
    "anotify": "notify",
    "AsyncClient": "Client",
    "AsyncBaseTransport": "BaseTransport",
    "AsyncInferagClient": "InferagClient",
    "AsyncStream": "Stream",
    "AsyncCollections": "Collections",
    "AsyncDocuments": "Documents",
    "AsyncGraph": "Graph",
    "AsyncJobs": "Jobs",
}


def generate(folder: Path = PACKAGE) -> str:
    """The sync client's source, as unasync writes it from `folder/_async_client.py`."""
    with tempfile.TemporaryDirectory() as tmp:
        source = Path(tmp) / SOURCE
        shutil.copyfile(folder / SOURCE, source)
        unasync.unasync_files([str(source)], [unasync.Rule(f"/{SOURCE}", f"/{TARGET}", REPLACEMENTS)])
        return (Path(tmp) / TARGET).read_text(encoding="utf-8")


if __name__ == "__main__":
    (PACKAGE / TARGET).write_text(generate(), encoding="utf-8")
    sys.stdout.write(f"wrote {PACKAGE / TARGET}\n")
