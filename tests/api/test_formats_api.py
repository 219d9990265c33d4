"""Every supported format through the started stack: upload a real file, then find a sentence of it by a question.

Files are built by each format's own library; retrieval is the real one (MiniLM dense + BM25,
embedded Qdrant). PDF hits carry their page, OCR'd pages say so.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import pytest_asyncio

from inferag_client import AsyncInferagClient
from services.gateway.app import Gateway
from tests import documents as make
from tests.rag_stack import rag_stack
from tests.web_server import web_server

pytestmark = pytest.mark.asyncio(loop_scope="session")

DOCX = "application/vnd.openxmlformats-officedocument.wordprocessingml.document"
# (file name, bytes, a question, the sentence it must find)
FILES: list[tuple[str, bytes, str, str]] = [
    ("handbook.docx",
     make.docx_file("Employee handbook", ["New employees receive their badge from the reception desk on day one.",
                                          "The cafeteria serves lunch between noon and two."],
                    [["Benefit", "Amount"], ["Meal voucher", "9 EUR"]]),
     "Where do new staff get their badge?", "receive their badge from the reception desk"),
    ("roadmap.pptx",
     make.pptx_file([("Vision", "We build quiet electric ferries.", "Stress the silence of the engines."),
                     ("Schedule", "The first ferry sails in September 2027.", "Mention the shipyard delay.")]),
     "When does the first ferry sail?", "The first ferry sails in September 2027"),
    ("inventory.xlsx",
     make.xlsx_file({"Warehouse": [["Item", "Shelf"], ["Copper wire", "B12"], ["Steel bolts", "C3"]],
                     "Suppliers": [["Supplier", "Country"], ["Nordic Metals", "Finland"]]}),
     "Which country is the supplier Nordic Metals from?", "Nordic Metals | Finland"),
    ("orchards.epub",
     make.epub_file("Orchards", [("Apples", "Apple trees need a cold winter to bear fruit."),
                                 ("Cherries", "Cherry blossoms open in early April in the valley.")]),
     "When do the cherry trees blossom?", "Cherry blossoms open in early April"),
    ("minutes.odt", make.odt_file("Board minutes", ["The board voted to open a second bakery in Lyon."]),
     "What did the board vote for?", "open a second bakery in Lyon"),
    ("faq.jsonl", make.jsonl_file([{"id": "faq-1", "question": "Refunds?", "text": "Refunds are paid within ten days."},
                                   {"id": "faq-2", "question": "Pets?", "text": "Dogs on a leash are welcome."}]),
     "How long does a refund take?", "Refunds are paid within ten days"),
    ("rates.csv", b"city,tram fare\nGrenoble,1.70\nNantes,1.80\n", "What is the tram fare in Nantes?",
     "Nantes | 1.80"),
    ("memo.msg", make.msg_file("Parking", "The parking garage closes for repairs on the tenth of March.", []),
     "When does the parking garage close?", "closes for repairs on the tenth of March"),
    ("scan.pdf", make.scanned_pdf([["Cover page of the lease."],
                                   ["The tenant pays the rent on the fifth day of each month."]]),
     "When does the tenant pay the rent?", "pays the rent on the fifth day"),
]  # fmt: skip
REPORT = make.docx_file("Audit report", ["The auditors found the ledger accurate to the cent."], [["a", "b"]])
MAIL = make.eml_file("Audit results", "Hello team, the audit is done and the report is attached.",
                     [("audit.docx", REPORT, DOCX)])  # fmt: skip


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def started(tiny_model_dir: Path) -> AsyncIterator[tuple[httpx.AsyncClient, Gateway]]:
    settings: dict[str, Any] = {"fetch_allow_networks": ["127.0.0.0/8"], "max_expanded_bytes": 8 * 1024 * 1024}
    async with rag_stack(tiny_model_dir, **settings) as (client, gateway):
        files = [("files", (name, data, "application/octet-stream")) for name, data, *_ in FILES]
        files.append(("files", ("audit.eml", MAIL, "message/rfc822")))
        resp = await client.post("/rag/collections/formats/documents", files=files, data={"background": "false"})
        assert resp.status_code == 200, resp.text
        yield client, gateway


@pytest.fixture
def stack(started: tuple[httpx.AsyncClient, Gateway]) -> httpx.AsyncClient:
    return started[0]


async def search(c: httpx.AsyncClient, query: str, top_k: int = 1, collection: str = "formats") -> list[Any]:
    resp = await c.post("/rag/retrieve", json={"collection": collection, "query": query, "top_k": top_k})
    assert resp.status_code == 200, resp.text
    hits: list[Any] = resp.json()["data"]
    return hits


@pytest.mark.parametrize(("name", "question", "sentence"), [(f[0], f[2], f[3]) for f in FILES])
async def test_a_sentence_of_each_format_is_found_by_a_question(
    stack: httpx.AsyncClient, name: str, question: str, sentence: str
) -> None:
    [hit] = await search(stack, question)
    assert hit["source"] == name and sentence in hit["text"], hit


async def test_structure_reaches_the_chunks(stack: httpx.AsyncClient) -> None:
    [slide] = await search(stack, "shipyard delay")
    assert slide["metadata"]["slide"] == 2 and slide["metadata"]["headings"][0] == "Slide 2: Schedule"
    [sheet] = await search(stack, "Copper wire shelf")
    assert sheet["metadata"]["headings"] == ["Warehouse"]
    [record] = await search(stack, "Are dogs allowed?")
    assert record["doc_id"] == "faq-2" and record["metadata"]["question"] == "Pets?"


async def test_ocr_runs_off_the_event_loop(stack: httpx.AsyncClient) -> None:
    scan = make.scanned_pdf([[f"Scanned page {n} about the lighthouse fuel."] * 12 for n in range(3)])
    files = [("files", ("slow-scan.pdf", scan, "application/pdf"))]
    began = time.perf_counter()
    ingest = asyncio.create_task(stack.post("/rag/collections/ocr-loop/documents", files=files))
    slowest = 0.0  # the longest round of a health check and a short sleep: the event loop's lag
    while not ingest.done():
        started = time.perf_counter()
        assert (await stack.get("/health")).status_code == 200
        await asyncio.sleep(0.02)
        slowest = max(slowest, time.perf_counter() - started)
    assert (await ingest).status_code == 200
    total = time.perf_counter() - began
    # OCR on the loop would stall it for most of the ingestion
    assert slowest < total / 4, f"the event loop stalled {slowest:.2f} s while a scan was OCR'd in {total:.2f} s"


async def test_a_mail_attachment_is_a_document_of_its_own(stack: httpx.AsyncClient) -> None:
    [hit] = await search(stack, "Was the ledger accurate?")
    assert hit["source"] == "audit.eml/audit.docx" and "ledger accurate to the cent" in hit["text"]
    parent = hit["metadata"]["attachment_of"]
    mail = (await stack.get(f"/rag/collections/formats/documents/{parent}")).json()
    assert mail["source"] == "audit.eml" and mail["metadata"]["subject"] == "Audit results"
    assert mail["metadata"]["from"] == "Alice Martin <alice@example.com>"


async def test_the_citation_of_a_pdf_hit_carries_its_page(stack: httpx.AsyncClient) -> None:
    body = {"collection": "formats", "query": "On which day is the rent paid?", "filter": {"source": "scan.pdf"},
            "max_tokens": 8, "rerank_top_n": 1}  # fmt: skip
    resp = await stack.post("/rag/query", json=body)
    assert resp.status_code == 200, resp.text
    [source] = resp.json()["sources"]
    assert source["metadata"]["page"] == 2 and source["metadata"]["ocr"] is True
    assert "fifth day" in source["text"]


async def test_a_web_page_is_fetched_converted_and_kept_with_its_url(stack: httpx.AsyncClient) -> None:
    with web_server() as (base, _):
        url = f"{base}/page.html"
        resp = await stack.post("/rag/collections/web/documents", json={"documents": [{"url": url}]})
        assert resp.status_code == 200, resp.text
        assert resp.json()["documents"][0]["source"] == url
        job = await stack.post("/rag/collections/web/documents", json={"documents": [{"url": f"{base}/article"}],
                                                                        "background": True})  # fmt: skip
        assert job.status_code == 202
        await wait(stack, job.json()["id"])
    hits = await search(stack, "When is the lighthouse lamp lit?", top_k=2, collection="web")
    assert {h["source"] for h in hits} == {url, f"{base}/article"}  # the same page under two URLs: two documents
    for hit in hits:
        assert "lights the lamp" in hit["text"] and hit["metadata"]["headings"] == ["Lighthouse keeping"]
        assert hit["metadata"]["url"] == hit["source"]


@pytest.mark.parametrize("url", ["http://10.0.0.1/", "http://169.254.169.254/latest/meta-data/"])
async def test_a_private_url_is_a_400_naming_the_setting(stack: httpx.AsyncClient, url: str) -> None:
    for background in (False, True):  # refused before a job is made
        body = {"documents": [{"text": "fine"}, {"url": url}], "background": background}
        resp = await stack.post("/rag/collections/ssrf/documents", json=body)
        assert resp.status_code == 400, resp.text
        error = resp.json()["error"]
        assert "INFERAG_RAG_FETCH_ALLOW_NETWORKS" in error["message"] and error["code"] == "url_refused"
        assert error["param"] == "documents.1.url"
    assert (await stack.get("/rag/collections/ssrf")).status_code == 404


async def wait(c: httpx.AsyncClient, job_id: str) -> dict[str, Any]:
    for _ in range(600):
        job: dict[str, Any] = (await c.get(f"/rag/jobs/{job_id}")).json()
        if job["finished_at"] is not None:
            return job
        await asyncio.sleep(0.1)
    raise AssertionError(f"job {job_id} did not finish")


async def test_a_background_job_counts_attachments_as_documents(stack: httpx.AsyncClient) -> None:
    files = [("files", ("audit.eml", MAIL, "message/rfc822")), ("files", ("broken.docx", REPORT[:500], DOCX))]
    resp = await stack.post("/rag/collections/mailjob/documents", files=files, data={"background": "true"})
    assert resp.status_code == 202, resp.text
    job = await wait(stack, resp.json()["id"])
    assert (job["documents_total"], job["documents_done"], job["documents_failed"]) == (3, 2, 1)
    assert job["errors"][0]["document"] == "broken.docx" and job["errors"][0]["code"] == "corrupt_file"


@pytest.mark.parametrize(
    ("name", "data", "status", "code"),
    [
        ("broken.docx", REPORT[: len(REPORT) // 2], 400, "corrupt_file"),
        ("locked.xlsx", make.encrypted_office(make.xlsx_file({"S": [["a"]]})), 400, "corrupt_file"),
        ("broken.pptx", b"PK\x03\x04 truncated", 400, "corrupt_file"),
        ("bomb.docx", make.zip_bomb(size=32 * 1024 * 1024), 413, "payload_too_large"),
    ],
)
async def test_bad_files_fail_the_request_and_store_nothing(
    stack: httpx.AsyncClient, name: str, data: bytes, status: int, code: str
) -> None:
    collection = f"bad-{name.replace('.', '-')}"
    files = [("files", ("fine.txt", b"A fine file that must not be stored.", "text/plain")),
             ("files", (name, data, "application/octet-stream"))]  # fmt: skip
    resp = await stack.post(f"/rag/collections/{collection}/documents", files=files, data={"background": "false"})
    assert resp.status_code == status, resp.text
    error = resp.json()["error"]
    assert error["code"] == code and f"'{name}'" in error["message"]
    info = await stack.get(f"/rag/collections/{collection}")
    assert info.status_code == 404 or info.json()["points"] == 0


async def test_the_sdk_uploads_json_with_a_text_field_and_ingests_urls(
    started: tuple[httpx.AsyncClient, Gateway], tmp_path: Path
) -> None:
    client, gateway = started
    faq = tmp_path / "faq.json"
    faq.write_bytes(b'[{"q": "Opening hours?", "answer": "The museum opens at ten on Sundays."}]')
    sdk = AsyncInferagClient("http://test", transport=httpx.ASGITransport(app=gateway))
    result = await sdk.documents.upload("sdk-formats", faq, text_field="answer")
    assert result.documents[0].metadata == {"q": "Opening hours?", "record": 1}  # type: ignore[union-attr]
    with web_server() as (base, _):
        fetched = await sdk.documents.ingest("sdk-formats", {"url": f"{base}/page.html"})
    assert fetched.documents[0].source == f"{base}/page.html"  # type: ignore[union-attr]
    [hit] = await search(client, "When does the museum open on Sundays?", collection="sdk-formats")
    assert hit["text"] == "The museum opens at ten on Sundays."
