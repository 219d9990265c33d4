"""Re-create `corpus.jsonl` from `course.txt` (the course text, copied from the project's seed folder).

The split is deterministic: the course is cut at its slide titles (a short line standing alone between
blank lines), then consecutive slides are packed into documents of MIN_CHARS..MAX_CHARS characters, so
that a one-line title slide joins the slide after it and a long slide is cut at blank lines. Document ids
are positional (`course-000`, ...), which is why `qrels/test.tsv` must be re-checked whenever the split
changes (`tests/unit/test_eval.py` does: each gold answer must appear in one of its query's documents).

    python datasets/course/build.py           # rewrite corpus.jsonl
    python datasets/course/build.py --check   # exit 1 if corpus.jsonl is not what the script builds
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
SOURCE = HERE / "course.txt"
CORPUS = HERE / "corpus.jsonl"

MIN_CHARS = 350
MAX_CHARS = 1500

# A title line never starts like a bullet, formula, table, code or quote, and does not end a sentence.
_NOT_TITLE_START = tuple('-$*|!#>`[•“"(')
_NOT_TITLE_END = (".", ":", ";", ",", "]")
_EMAIL = re.compile(r"\S+@\S+")


def _clean(text: str) -> list[str]:
    """Lines with trailing spaces removed and runs of blank lines (incl. whitespace-only) collapsed to one."""
    out: list[str] = []
    for raw in text.replace("\r\n", "\n").split("\n"):
        line = raw.rstrip()
        if not line.strip():
            if out and out[-1] != "":
                out.append("")
            continue
        out.append(line)
    while out and out[-1] == "":
        out.pop()
    return out


def _is_title(lines: list[str], i: int) -> bool:
    line = lines[i]
    s = line.strip()
    if line != s or not s or len(s) > 80 or s.startswith(_NOT_TITLE_START) or s.endswith(_NOT_TITLE_END):
        return False
    if len(s) < 4 or _EMAIL.search(s) or '"' in s or "**" in s or not (s[0].isupper() or s[0].isdigit()):
        return False
    before = lines[i - 1] if i > 0 else ""
    after = lines[i + 1] if i + 1 < len(lines) else ""
    return before == "" and after == ""


def _slides(lines: list[str]) -> list[tuple[str, str]]:
    """(title, body) per slide; the text before the first title is its own slide."""
    slides: list[tuple[str, list[str]]] = [("", [])]
    for i, line in enumerate(lines):
        if _is_title(lines, i):
            slides.append((line.strip(), []))
        else:
            slides[-1][1].append(line)
    return [(title, "\n".join(body).strip()) for title, body in slides if title or "\n".join(body).strip()]


def _cut(text: str, limit: int) -> list[str]:
    """Cut text at blank lines (or at line ends, for one huge paragraph) into pieces of at most `limit`."""
    pieces: list[str] = []
    current = ""
    for para in re.split(r"\n\n+", text):
        units = [para] if len(para) <= limit else para.split("\n")
        for unit in units:
            sep = "\n\n" if unit is para else "\n"
            if current and len(current) + len(sep) + len(unit) > limit:
                pieces.append(current)
                current = unit
            else:
                current = f"{current}{sep}{unit}" if current else unit
    if current:
        pieces.append(current)
    return pieces


def build(text: str) -> list[dict[str, str]]:
    """The corpus documents (`_id`, `title`, `text`) for the course text.

    A title with no body right before a slide with one (a section heading) opens a new document that keeps
    the section's short slides while they fit in MAX_CHARS; a slide of MIN_CHARS or more, or any slide
    outside a section, opens a new document once the current one has MIN_CHARS. Short slides and figures
    (titles without a body) join their neighbour.
    """
    docs: list[tuple[str, str]] = []  # (title, text)
    parts: list[str] = []  # the slides of the document being packed
    titles: list[str] = []  # its section heading and first slide title, or its first slide title
    figure_title = ""  # names it only if nothing else does
    in_section = False

    def size() -> int:
        return sum(len(p) + 2 for p in parts)

    def flush() -> None:
        title = " — ".join(titles) or figure_title
        if parts and size() < MIN_CHARS and docs and len(docs[-1][1]) + size() <= MAX_CHARS:
            docs[-1] = (docs[-1][0], "\n\n".join([docs[-1][1], *parts]))  # a short tail joins the doc before it
        elif parts:
            docs.extend((title, piece) for piece in _cut("\n\n".join(parts), MAX_CHARS))
        titles.clear()
        parts.clear()

    slides = _slides(_clean(text))
    for i, (slide_title, body) in enumerate(slides):
        block = f"{slide_title}\n\n{body}".strip() if slide_title else body
        heading = bool(slide_title) and not body
        # a bodiless title right before a slide with a body opens a section; other bodiless slides are figures
        opens = heading and i + 1 < len(slides) and bool(slides[i + 1][1])
        big = len(block) >= MIN_CHARS  # a full slide stands on its own even inside a section
        if parts and size() >= MIN_CHARS and (opens or big or not in_section or size() + len(block) > MAX_CHARS):
            flush()
        if not parts:
            in_section, figure_title = opens, (slide_title if heading and not opens else "")
        if slide_title and (opens or body) and (not titles or (len(titles) == 1 and in_section and body)):
            titles.append(slide_title)
        parts.append(block)
    flush()
    return [{"_id": f"course-{i:03d}", "title": t, "text": body} for i, (t, body) in enumerate(docs)]


def render(docs: list[dict[str, str]]) -> str:
    return "".join(json.dumps(d, ensure_ascii=False) + "\n" for d in docs)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true", help="only compare with the existing corpus.jsonl")
    args = parser.parse_args()
    content = render(build(SOURCE.read_text(encoding="utf-8")))
    if args.check:
        same = CORPUS.exists() and CORPUS.read_text(encoding="utf-8") == content
        print("corpus.jsonl is up to date" if same else "corpus.jsonl differs from build.py's output")
        return 0 if same else 1
    CORPUS.write_text(content, encoding="utf-8")
    print(f"wrote {CORPUS} ({content.count(chr(10))} documents)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
