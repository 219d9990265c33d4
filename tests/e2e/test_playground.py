"""The playground in a real browser: headless Chromium (Debian's `chromium`) driven by Playwright.

Loads the page from the started stack, stores an API key, uploads a small document into a new
collection, asks a question about it, and sees the answer stream in with its sources and timings;
then a plain chat (no collection) through /v1/chat/completions. `INFERAG_UPDATE_SCREENSHOT=1`
also writes the screenshot to docs/playground.png.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests import documents as make
from tests.e2e.stack import stack
from tests.servers import REPO_ROOT

pytestmark = [pytest.mark.slow, pytest.mark.browser]

CHROMIUM = os.environ.get("CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
if CHROMIUM is None:
    pytest.skip("headless Chromium not found (Debian: apt-get install -y chromium)", allow_module_level=True)
sync_api = pytest.importorskip("playwright.sync_api", reason="the playwright package is not installed")

KEY = "sk-playground"
DOC = (
    "# Eiffel Tower\n\nThe Eiffel Tower stands in Paris, the capital of France. "
    "Gustave Eiffel's company built it for the 1889 World's Fair.\n"
)


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with stack(tmp_path_factory.mktemp("playground"), INFERAG_API_KEY=KEY) as url:
        yield url


@pytest.fixture(scope="module")
def page(base: str) -> Iterator[Any]:
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=CHROMIUM, headless=True, args=["--headless", "--no-sandbox", "--disable-gpu"]
        )
        context = browser.new_context(viewport={"width": 1280, "height": 800})
        page = context.new_page()
        page.set_default_timeout(120_000)
        yield page
        context.close()
        browser.close()


def test_served_at_root_and_playground(base: str) -> None:
    import httpx

    for path in ("/", "/playground"):
        response = httpx.get(base + path)
        assert response.status_code == 200, f"{path}: {response.status_code} (is the playground mounted?)"
        assert "text/html" in response.headers["content-type"] and "inferag playground" in response.text


def test_upload_ask_and_see_sources(base: str, page: Any, tmp_path: Path) -> None:
    page.goto(base + "/playground")
    page.fill("#api-key", KEY)
    page.dispatch_event("#api-key", "change")
    assert page.evaluate("localStorage.getItem('inferag.apiKey')") == KEY

    doc = tmp_path / "eiffel.md"
    doc.write_text(DOC)
    page.fill("#upload-collection", "web-kb")
    page.set_input_files("#file", str(doc))
    page.click("#upload-btn")
    sync_api.expect(page.locator("#upload-status")).to_contain_text("Ingested 1 file(s) into web-kb")
    sync_api.expect(page.locator("#collection")).to_have_value("web-kb")

    page.fill("#max-tokens", "48")
    page.fill("#question", "Where is the Eiffel Tower?")
    page.click("#send")
    # Part of the answer is on screen before the stream has finished.
    page.wait_for_function(
        """() => { const m = document.querySelector('.message.assistant');
                   return m && !m.classList.contains('done') && m.querySelector('.answer').textContent.length > 0; }"""
    )
    answer = page.locator(".message.assistant.done").first
    answer.wait_for()
    assert answer.locator(".error").count() == 0, answer.inner_text()
    assert answer.locator(".answer").inner_text().strip()
    sources = answer.locator(".sources li")
    assert sources.count() >= 1 and "eiffel.md" in sources.first.inner_text()
    timings = answer.locator(".timings").inner_text()
    assert "retrieve" in timings and "total" in timings

    page.screenshot(path=str(tmp_path / "playground.png"))
    if os.environ.get("INFERAG_UPDATE_SCREENSHOT"):
        (REPO_ROOT / "docs").mkdir(exist_ok=True)
        page.screenshot(path=str(REPO_ROOT / "docs" / "playground.png"))


def test_plain_chat_streams(page: Any) -> None:
    page.select_option("#collection", "")
    page.fill("#question", "Say hello.")
    page.click("#send")
    answer = page.locator(".message.assistant.done").nth(1)
    answer.wait_for()
    assert answer.locator(".error").count() == 0, answer.inner_text()
    assert answer.locator(".answer").inner_text().strip() and "total (browser)" in answer.inner_text()


def test_graph_picture_behind_an_answer(page: Any) -> None:
    """With hybrid+graph, the entities and relations that brought the sources in are drawn under them."""
    page.select_option("#collection", "web-kb")
    page.select_option("#mode", "hybrid+graph")
    page.fill("#question", "Who built the tower of the 1889 World's Fair?")
    page.click("#send")
    answer = page.locator(".message.assistant.done").nth(2)
    answer.wait_for()
    assert answer.locator(".error").count() == 0, answer.inner_text()
    picture = answer.locator(".graph svg")
    assert picture.count() == 1, answer.inner_text()
    labels = set(picture.locator("text").all_text_contents())
    assert "World" in " ".join(labels) or "Eiffel" in " ".join(labels), labels
    assert picture.locator("circle.matched").count() >= 1  # an entity the question names
    page.select_option("#mode", "hybrid")


def test_a_cited_quote_is_highlighted(page: Any) -> None:
    """A citation's `quote` (document offsets) is marked inside its source's text, whatever the model wrote."""
    shown = page.evaluate(
        """() => {
             const el = document.createElement('div');
             showSources(el, [{number: 1, source: 'batteries.md', score: 0.9, start: 100,
                               text: 'Intro. The Zorblax 3000 battery lasts 41 hours. Outro.',
                               quote: {text: 'The Zorblax 3000 battery lasts 41 hours.', start: 107, end: 147}}]);
             return el.querySelector('.sources li').innerHTML;
           }"""
    )
    assert "Intro. <mark>The Zorblax 3000 battery lasts 41 hours.</mark> Outro." in shown, shown


def test_upload_form_takes_office_files(base: str, page: Any, tmp_path: Path) -> None:
    page.goto(base + "/playground")
    page.fill("#api-key", KEY)
    page.dispatch_event("#api-key", "change")
    accepted = page.get_attribute("#file", "accept") or ""
    assert {".docx", ".pptx", ".xlsx", ".epub", ".eml", ".png"} <= set(accepted.split(","))
    files = [tmp_path / "plan.docx", tmp_path / "figures.xlsx"]
    files[0].write_bytes(make.docx_file("Plan", ["The bridge opens in June."], [["Step", "Month"], ["Open", "June"]]))
    files[1].write_bytes(make.xlsx_file({"Budget": [["Item", "Cost"], ["Steel", 1200]]}))
    page.fill("#upload-collection", "web-office")
    page.set_input_files("#file", [str(f) for f in files])
    page.click("#upload-btn")
    sync_api.expect(page.locator("#upload-status")).to_contain_text("Ingested 2 file(s) into web-office")
