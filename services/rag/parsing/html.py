"""HTML (pages, e-book chapters, mail bodies) to markdown with markdownify: headings, lists, tables kept."""

from __future__ import annotations

import re
from typing import Any

from bs4 import BeautifulSoup, Comment, Declaration, Doctype, ProcessingInstruction
from markdownify import MarkdownConverter

_DROP = ["head", "script", "style", "noscript", "template", "svg", "iframe", "form", "button"]
_CONVERTER = MarkdownConverter(heading_style="ATX", bullets="-", strip=["img", "a"], escape_misc=False,
                               escape_asterisks=False, escape_underscores=False)  # fmt: skip


def html_markdown(html: str | bytes) -> tuple[str, dict[str, Any]]:
    """Markdown of an HTML page's visible content, and its title as metadata."""
    soup = BeautifulSoup(html, "html.parser")
    title = soup.title.get_text(strip=True) if soup.title else None
    for tag in soup(_DROP):
        tag.decompose()
    for node in soup.find_all(string=lambda s: isinstance(s, Comment | Declaration | Doctype | ProcessingInstruction)):
        node.extract()
    text = _CONVERTER.convert_soup(soup)
    text = re.sub(r"[ \t]+\n", "\n", text)
    text = re.sub(r"\n{3,}", "\n\n", text).strip()
    return text, ({"title": title} if title else {})
