"""OCR benchmark: character error rate and seconds per page on image-only pages of known English and French text.

Each language's pages (tests/ocr_pages.py) are typeset as a PDF text layer, rendered to
pictures and saved as an image-only PDF, then ingested through the parser as any upload
is (pages rendered again at `--dpi`, OCR'd in the service's pool). The baseline is the same
pages with their text layer (no OCR) through the same parser: the ratio is what OCR costs.
Each engine installed here is measured (Tesseract needs Debian's tesseract-ocr, -eng, -fra).

    .venv/bin/python bench/ocr.py                    # both engines, 200 dpi
    .venv/bin/python bench/ocr.py --engines tesseract --dpi 300
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from services.rag.parsing import ParseOptions, parse_upload  # noqa: E402
from services.rag.parsing.ocr import engine  # noqa: E402
from tests import documents as make  # noqa: E402
from tests.ocr_pages import ENGLISH, FRENCH, cer, page_lines  # noqa: E402


def timed_parse(data: bytes, options: ParseOptions) -> tuple[str, float]:
    start = time.perf_counter()
    [doc] = parse_upload("bench.pdf", data, options)
    return doc.text, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--engines", default="tesseract,rapidocr")
    parser.add_argument("--dpi", type=int, default=200, help="Resolution pages are rendered at for OCR.")
    parser.add_argument("--size", type=int, default=11, help="Font size of the pages, in points.")
    args = parser.parse_args()
    languages = {"en": ENGLISH, "fr": FRENCH}
    pages = {lang: [page_lines(p) for p in paragraphs] for lang, paragraphs in languages.items()}
    n_pages = sum(len(p) for p in pages.values())
    text_pdfs = {lang: make.text_pdf(p, size=args.size) for lang, p in pages.items()}
    scans = {lang: make.scanned_pdf(p, size=args.size) for lang, p in pages.items()}

    baseline = sum(timed_parse(pdf, ParseOptions())[1] for pdf in text_pdfs.values()) / n_pages
    print(f"{n_pages} pages ({args.size} pt, {args.dpi} dpi); baseline (text layer, no OCR): {baseline:.3f} s/page")
    print(f"{'engine':<10} {'CER en':>8} {'CER fr':>8} {'s/page':>8} {'pages/min':>10} {'vs text layer':>14}")
    for name in args.engines.split(","):
        try:
            loaded = time.perf_counter()
            engine(name, "fra+eng")
            load = time.perf_counter() - loaded
        except Exception as exc:
            print(f"{name:<10} not available: {exc}")
            continue
        options = ParseOptions(ocr_engine=name, ocr_dpi=args.dpi)
        rates, seconds = {}, []
        for lang, pdf in scans.items():
            text, spent = timed_parse(pdf, options)
            seconds.append(spent)
            rates[lang] = cer(" ".join(languages[lang]), text)
        per_page = sum(seconds) / n_pages
        print(f"{name:<10} {rates['en']:>8.2%} {rates['fr']:>8.2%} {per_page:>8.2f} {60 / per_page:>10.1f} "
              f"{per_page / baseline:>13.0f}x   (engine load {load:.1f} s)")  # fmt: skip


if __name__ == "__main__":
    main()
