"""RAG through a real server on its own data directory, and the ingest command."""

from __future__ import annotations

import asyncio
import json
import shutil
import sysconfig
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from retrieval.collections import Collections, Embedder
from retrieval.search import Passage, SearchResult
from services.commands.ingest import document_id, ingest, read_text
from services.config.models import load_model_specs
from services.config.settings import Settings
from services.gateway.rag import context_passages
from services.tasks.embedding import EmbeddingService
from tests.helpers.server import ServerProcess, running_server

FACTS = [
    {"id": "python", "text": "Python was created by Guido van Rossum and first released in 1991."},
    {"id": "paris", "text": "Paris is the capital and largest city of France, known for the Eiffel Tower."},
    {"id": "market", "text": "The stock market fell sharply on Monday after the central bank raised rates."},
]


@pytest.fixture(scope="module")
def rag_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    data_dir = tmp_path_factory.mktemp("rag-data")
    env = {"MMSERVE_DATA_DIR": str(data_dir), "OMP_NUM_THREADS": "1"}
    with running_server("services.commands.serve", env=env) as server:
        yield server


@pytest.fixture(scope="module")
def api(rag_server: ServerProcess) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=rag_server.base_url, timeout=120) as client:
        assert client.post("/v1/collections", json={"name": "facts"}).status_code == 201
        added = client.post("/v1/collections/facts/documents", json={"documents": FACTS})
        assert added.status_code == 200, added.text
        assert client.post("/v1/collections", json={"name": "empty"}).status_code == 201
        yield client


def test_rag_answers_from_the_retrieved_passage_and_cites_it(api: httpx.Client) -> None:
    got = api.post("/v1/rag", json={"collection": "facts", "query": "Who created Python?", "top_k": 2})
    assert got.status_code == 200, got.text
    body = got.json()
    assert "Guido" in body["answer"]
    assert body["citations"], body
    assert body["citations"][0]["document_id"] == "python"  # the best passage is the one about Python
    assert all(c["document_id"] in {"python", "paris", "market"} for c in body["citations"])
    assert body["usage"]["completion_tokens"] > 0
    assert (
        body["usage"]["total_tokens"] == body["usage"]["prompt_tokens"] + body["usage"]["completion_tokens"]
    )


def test_rag_context_fits_the_chat_model_whatever_a_chunk_holds(api: httpx.Client) -> None:
    """A word of 40,000 letters is one token to the embedding model, so one small chunk, but thousands to
    the chat model: the context keeps the best passages that fit, the first cut short if need be."""
    dna = "Chromosome notes: " + "ACGT" * 10_000 + " end of sequence."
    assert api.post("/v1/collections", json={"name": "dna"}).status_code == 201
    documents = [*FACTS, {"id": "dna", "text": dna}, {"id": "brca1", "text": "BRCA1 is on chromosome 17."}]
    assert api.post("/v1/collections/dna/documents", json={"documents": documents}).status_code == 200
    chat = next(m for m in api.get("/v1/models").json()["data"] if m.get("task") == "chat")
    # The BRCA1 question ranks the short fact first; the other ranks the long passage first, cut to fit.
    for query, stream in (("Which chromosome is BRCA1 on?", False), ("Chromosome notes ACGT sequence", True)):
        body = {"collection": "dna", "query": query, "top_k": 5, "max_tokens": 8, "stream": stream}
        got = api.post("/v1/rag", json=body)
        assert got.status_code == 200, got.text
        if stream:
            events = [
                json.loads(x[len("data: ") :]) for x in got.text.splitlines() if x.startswith("data: {")
            ]
            context, usage = events[0]["citations"], events[-1]["usage"]
        else:
            context, usage = got.json()["citations"], got.json()["usage"]
        assert context and usage["prompt_tokens"] + 8 <= chat["max_model_len"], (query, usage)
    dna_passages = [c["text"] for c in context if c["document_id"] == "dna"]
    assert dna_passages and all(len(t) < len(dna) for t in dna_passages), context


def test_rag_never_cites_an_empty_passage_when_max_tokens_leaves_little_room(api: httpx.Client) -> None:
    """max_tokens near the window leaves room for part of a passage, then for none of it: a passage is
    cut to what fits, and where nothing of it fits the answer is a 400 naming max_tokens."""
    chat = next(m for m in api.get("/v1/models").json()["data"] if m.get("task") == "chat")
    seen = set()
    for spare in range(60, 180, 8):
        body = {"collection": "facts", "query": "Who created Python?", "top_k": 1, "stream": True}
        body["max_tokens"] = chat["max_model_len"] - spare
        with api.stream("POST", "/v1/rag", json=body) as got:
            if got.status_code == 400:
                error = json.loads(got.read())["error"]
                assert error["param"] in ("max_tokens", "query"), error
                seen.add(error["param"])
                continue
            assert got.status_code == 200, got.read()
            first = next(line for line in got.iter_lines() if line.startswith("data: {"))
        citations = json.loads(first[len("data: ") :])["citations"]
        assert citations and all(c["text"].strip() for c in citations), (spare, citations)
        seen.add("cited")
    assert {"max_tokens", "cited"} <= seen, seen


def test_rag_context_takes_distinct_documents_first(api: httpx.Client) -> None:
    """A long document cannot fill the context alone: each document's best passage comes first."""
    long_text = " ".join(f"Paragraph {i}: Python's standard library keeps growing." for i in range(80))
    r = api.post("/v1/collections", json={"name": "mixed", "chunk_tokens": 32, "overlap_tokens": 0})
    assert r.status_code == 201, r.text
    added = api.post(
        "/v1/collections/mixed/documents", json={"documents": [*FACTS, {"id": "long", "text": long_text}]}
    )
    assert added.status_code == 200, added.text
    body = {"collection": "mixed", "query": "Who created Python?", "top_k": 3, "max_tokens": 8}
    for mode in ("hybrid", "dense", "lexical"):
        got = api.post("/v1/rag", json={**body, "mode": mode, "stream": True})
        assert got.status_code == 200, got.text
        lines = [x for x in got.text.splitlines() if x.startswith("data: {")]
        context = [c["document_id"] for c in json.loads(lines[0][len("data: ") :])["citations"]]
        assert len(context) == 3 and "python" in context, (mode, context)
        if mode != "lexical":  # four documents match: three distinct ones fill the context
            assert len(set(context)) == 3, (mode, context)
        else:  # only two hold a query word: the long one's second passage fills the third place
            assert context == ["python", "long", "long"], context
    assert api.post("/v1/rag", json={**body, "mode": "sparse"}).status_code == 400


def test_context_passages_round_robin_over_documents() -> None:
    def doc(doc_id: str, n: int) -> SearchResult:
        passages = tuple(Passage(i, f"{doc_id}{i}", 1.0 - i / 10) for i in range(n))
        return SearchResult(doc_id, 0, f"{doc_id}0", 1.0, {"k": doc_id}, passages)

    picked = context_passages([doc("a", 3), doc("b", 1), doc("c", 2)], 5)
    assert [p.text for p in picked] == ["a0", "b0", "c0", "a1", "c1"]
    assert all(p.metadata == {"k": p.document_id} for p in picked)
    assert [p.text for p in context_passages([doc("a", 4)], 3)] == ["a0", "a1", "a2"]
    assert context_passages([], 4) == []


def _events(response: httpx.Response) -> list[Any]:
    lines = [line[len("data: ") :] for line in response.iter_lines() if line.startswith("data: ")]
    assert lines[-1] == "[DONE]"
    return [json.loads(line) for line in lines[:-1]]


def test_rag_stream_sends_citations_then_text_then_usage(api: httpx.Client) -> None:
    body = {"collection": "facts", "query": "What is the capital of France?", "top_k": 2, "stream": True}
    with api.stream("POST", "/v1/rag", json=body) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        events = _events(response)
    assert events[0]["object"] == "rag.citations"
    assert events[0]["citations"][0]["document_id"] == "paris"
    deltas = [e["delta"] for e in events if e["object"] == "rag.delta"]
    assert "Paris" in "".join(deltas)
    assert events[-1]["object"] == "rag.done"
    assert events[-1]["usage"]["completion_tokens"] >= len(deltas) > 0  # a token may add no text
    assert events[-1]["citations"]


def test_rag_on_an_empty_collection_says_nothing_was_found(api: httpx.Client) -> None:
    got = api.post("/v1/rag", json={"collection": "empty", "query": "Who created Python?"})
    assert got.status_code == 200
    assert "Nothing in the collection `empty`" in got.json()["answer"]
    assert got.json()["citations"] == []


@pytest.mark.parametrize(
    ("body", "status", "code"),
    [
        ({"collection": "missing", "query": "x"}, 404, "collection_not_found"),
        ({"collection": "facts", "query": "x", "model": "no-such-model"}, 404, "model_not_found"),
        ({"collection": "facts", "query": "x", "model": "all-minilm-l6-v2"}, 404, "model_not_found"),
        ({"collection": "facts", "query": "x", "top_k": 0}, 400, None),
        ({"collection": "facts", "query": "   "}, 400, None),
        ({"collection": "facts"}, 400, None),
    ],
)
def test_rag_errors(api: httpx.Client, body: dict[str, Any], status: int, code: str | None) -> None:
    got = api.post("/v1/rag", json=body)
    assert got.status_code == status, got.text
    assert got.json()["error"]["code"] == code


# -- ingest -----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def embedder() -> Iterator[EmbeddingService]:
    spec = next(s for s in load_model_specs(Settings.from_env().models_config) if s.task == "embedding")
    service = EmbeddingService(spec)
    yield service
    service.shutdown()


def _corpus(folder: Path) -> Path:
    """A folder of real text shipped with Python (its licence, split in parts) plus one HTML page."""
    licence = Path(sysconfig.get_paths()["stdlib"]) / "LICENSE.txt"
    parts = licence.read_text().split("\n\n\n")
    folder.mkdir(parents=True)
    for i, part in enumerate(p for p in parts if p.strip()):
        (folder / f"licence-part-{i}.txt").write_text(part)
    sub = folder / "pages"
    sub.mkdir()
    (sub / "about.html").write_text(
        "<html><head><style>p {color: red}</style></head><body><h1>About</h1>"
        "<script>var hidden = 'do not index';</script><p>Guido van Rossum created Python.</p></body></html>"
    )
    return folder


def test_ingest_adds_skips_unchanged_and_replaces_changed(tmp_path: Path, embedder: EmbeddingService) -> None:
    corpus = _corpus(tmp_path / "corpus")
    files = sorted(p for p in corpus.rglob("*") if p.is_file())
    embedders: dict[str, Embedder] = {embedder.name: embedder}
    collections = Collections(tmp_path / "data", embedders, embedder.name)
    try:
        assert asyncio.run(ingest(collections, "docs", corpus)) == (len(files), 0)
        assert asyncio.run(ingest(collections, "docs", corpus)) == (0, len(files))
        (corpus / "pages" / "about.html").write_text("<p>The Zen of Python favours readability.</p>")
        assert asyncio.run(ingest(collections, "docs", corpus)) == (1, len(files) - 1)
        page = collections.get("docs", document_id(Path("pages/about.html")))
        assert page.text == "The Zen of Python favours readability."
        assert page.metadata["source"] == "pages/about.html"
        hits = asyncio.run(collections.query("docs", "Python Software Foundation licence agreement", 3))
        assert hits and hits[0].document_id.startswith("licence-part-")
    finally:
        collections.close()


def test_interrupted_ingest_resumes(tmp_path: Path, embedder: EmbeddingService) -> None:
    corpus = _corpus(tmp_path / "corpus")
    files = sorted(p for p in corpus.glob("*.txt"))
    first_half = tmp_path / "partial"
    first_half.mkdir()
    for f in files[: len(files) // 2]:
        shutil.copy(f, first_half / f.name)
    embedders: dict[str, Embedder] = {embedder.name: embedder}
    collections = Collections(tmp_path / "data", embedders, embedder.name)
    try:
        done, _ = asyncio.run(ingest(collections, "docs", first_half))  # the run that was cut short
        added, skipped = asyncio.run(ingest(collections, "docs", corpus))
        assert skipped == done and added == len(files) - done + 1  # + the html page
    finally:
        collections.close()


def test_html_text_skips_scripts_and_styles(tmp_path: Path) -> None:
    page = tmp_path / "p.html"
    page.write_text("<style>x{}</style><p>Hello <b>world</b></p><script>alert(1)</script>")
    assert read_text(page) == "Hello world"
    assert document_id(Path("a dir/../b.txt")) != "a dir/../b.txt"
