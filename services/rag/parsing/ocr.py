"""OCR of page images, offline: Tesseract (Debian's `tesseract-ocr`, eng+fra data) or RapidOCR's packaged models.

`auto` takes Tesseract when its binary and languages are installed (it keeps accents, and
reads French as well as English), else RapidOCR, whose ONNX models ship in its wheel. The
engine loads once, on first use, in the worker thread that needs it; pages are recognised
in one bounded pool shared by every request, so a big scan cannot take every core.
"""

from __future__ import annotations

import io
import logging
import os
import shutil
import subprocess
import threading
from collections import deque
from collections.abc import Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Protocol

from services.common.errors import EngineError, InvalidRequest

log = logging.getLogger(__name__)


class OcrEngine(Protocol):
    name: str

    def read(self, image: Any) -> str:
        """Text of a PIL image, lines in reading order."""
        ...


class Tesseract:
    """The `tesseract` command, one page per call, PNG in and text out through pipes (no temporary files).

    Called directly rather than through pytesseract to give each call its own environment:
    OMP_THREAD_LIMIT=1, since parallelism comes from the OCR pool and Tesseract's own OpenMP
    threads only fight over the cores (a page took twice as long on 2 busy cores).
    """

    name = "tesseract"

    def __init__(self, languages: str, timeout: float = 300):
        binary = shutil.which("tesseract")
        if binary is None:
            raise RuntimeError("no tesseract command (Debian: tesseract-ocr)")
        listed = subprocess.run([binary, "--list-langs"], capture_output=True, text=True, timeout=60, check=True)
        missing = set(languages.split("+")) - set(listed.stdout.split()[1:])  # first line is a title
        if missing:
            raise RuntimeError(f"Tesseract has no data for {sorted(missing)} (Debian: tesseract-ocr-<lang>)")
        self.binary, self.languages, self.timeout = binary, languages, timeout
        self._env = {**os.environ, "OMP_THREAD_LIMIT": "1"}

    def read(self, image: Any) -> str:
        png = io.BytesIO()
        image.save(png, "PNG")
        try:
            proc = subprocess.run([self.binary, "stdin", "stdout", "-l", self.languages], input=png.getvalue(),
                                  capture_output=True, timeout=self.timeout, env=self._env)  # fmt: skip
        except subprocess.TimeoutExpired as exc:
            raise EngineError(f"OCR of a page took over {self.timeout:g} s.") from exc
        if proc.returncode != 0:
            raise EngineError(f"tesseract failed: {proc.stderr.decode(errors='replace').strip()[-300:]}")
        return proc.stdout.decode("utf-8", errors="replace")


class RapidOcr:
    name = "rapidocr"

    def __init__(self) -> None:
        from rapidocr_onnxruntime import RapidOCR

        self._engine = RapidOCR()

    def read(self, image: Any) -> str:
        import numpy as np

        result, _ = self._engine(np.asarray(image.convert("RGB")))
        return "\n".join(_lines(result or []))


def _lines(boxes: list[Any]) -> Iterator[str]:
    """RapidOCR's text boxes joined into lines: boxes whose vertical middles are close share a line."""
    items = sorted(((min(p[1] for p in box), max(p[1] for p in box), min(p[0] for p in box), text)
                    for box, text, _score in boxes), key=lambda b: (b[0] + b[1]) / 2)  # fmt: skip
    line: list[tuple[float, float, float, str]] = []
    for item in items:
        if line and (item[0] + item[1]) / 2 > (line[-1][0] + line[-1][1]) / 2 + (line[-1][1] - line[-1][0]) / 2:
            yield " ".join(t for *_, t in sorted(line, key=lambda b: b[2]))
            line = []
        line.append(item)
    if line:
        yield " ".join(t for *_, t in sorted(line, key=lambda b: b[2]))


_lock = threading.Lock()
_engines: dict[tuple[str, str], OcrEngine] = {}
_pool: ThreadPoolExecutor | None = None
_pool_size = 1


def engine(kind: str = "auto", languages: str = "fra+eng") -> OcrEngine:
    """The OCR engine, loaded once per process (the first call takes a second or two)."""
    with _lock:
        key = (kind, languages)
        if key not in _engines:
            _engines[key] = _load(kind, languages)
            log.info("OCR engine: %s", _engines[key].name)
        return _engines[key]


def _load(kind: str, languages: str) -> OcrEngine:
    if kind in ("auto", "tesseract"):
        try:
            return Tesseract(languages)
        except Exception as exc:
            if kind == "tesseract":
                raise InvalidRequest(f"OCR engine 'tesseract' is not usable here: {exc}", code="ocr_unavailable") \
                    from exc  # fmt: skip
            # measured on our known pages (bench/ocr.py): RapidOCR drops lines and accents, Tesseract does not
            log.warning("Tesseract not usable (%s): OCR falls back to RapidOCR, much less accurate; install "
                        "tesseract-ocr tesseract-ocr-eng tesseract-ocr-fra", exc)  # fmt: skip
    if kind not in ("auto", "rapidocr"):
        raise InvalidRequest(f"Unknown OCR engine '{kind}' (auto, tesseract, rapidocr).", code="ocr_unavailable")
    return RapidOcr()


def read_all(ocr: OcrEngine, images: Iterable[Any], workers: int = 1) -> Iterator[str]:
    """Texts of the images in order; images are made (rendered) only as workers free up.

    The pool is made by the first call (its `workers` stay for the process: one setting).
    """
    global _pool, _pool_size
    with _lock:
        if _pool is None:
            _pool_size = max(1, workers)
            _pool = ThreadPoolExecutor(max_workers=_pool_size, thread_name_prefix="ocr")
        pool, window = _pool, _pool_size + 1
    pending: deque[Future[str]] = deque()
    for image in images:
        pending.append(pool.submit(ocr.read, image))
        if len(pending) >= window:
            yield pending.popleft().result()
    while pending:
        yield pending.popleft().result()
