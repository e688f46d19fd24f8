"""OpenAI's Files and Vector Stores APIs driven by the openai SDK, unchanged, against the session's server
(embedded, or the gRPC topology with MMSERVE_TEST_DISTRIBUTED=1): files.create/retrieve/list/content/
delete (and expires_after), vector_stores.create/retrieve/update/list/delete, files.create_and_poll,
upload_and_poll, file_batches.upload_and_poll, search with filters and ranking options, the document
formats people have (PDF, DOCX, HTML, JSON, Markdown; CSV and JSON Lines as text), failures that end as
`failed` with `last_error`, 4xx in OpenAI's shape (bounded list limits and filter integers, a vector
store's collection left to the vector stores API), lists newest first and paged both ways, and RAG over a
vector store. Documents are real texts from tests/data, never written for the test."""

from __future__ import annotations

import contextlib
import csv
import io
import json
import os
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest
from docx import Document

from tests.helpers.api import error_of
from tests.helpers.server import DEFAULT_DATA_DIR

DATA = Path(__file__).resolve().parents[1] / "data"
DOCS = DATA / "retrieval" / "docs"
FORMATS = DATA / "documents"
QUERIES = json.loads((DATA / "retrieval" / "queries.json").read_text())["queries"]


def query_for(stem: str) -> str:
    return next(q["query"] for q in QUERIES if q["answer"] == stem)


class Created:
    """What a test made, removed at the end of the module whatever happens."""

    def __init__(self) -> None:
        self.files: list[str] = []
        self.stores: list[str] = []


@pytest.fixture(scope="module")
def made(client: openai.OpenAI) -> Iterator[Created]:
    created = Created()
    yield created
    for store_id in created.stores:
        with contextlib.suppress(openai.NotFoundError):
            client.vector_stores.delete(store_id)
    for file_id in created.files:
        with contextlib.suppress(openai.NotFoundError):
            client.files.delete(file_id)


def upload(client: openai.OpenAI, made: Created, path: Path, name: str | None = None) -> str:
    f = client.files.create(file=(name or path.name, path.read_bytes()), purpose="assistants")
    made.files.append(f.id)
    return f.id


def docx_of(text: str) -> bytes:
    doc = Document()
    for paragraph in text.split("\n\n"):
        doc.add_paragraph(paragraph)
    out = io.BytesIO()
    doc.save(out)
    return out.getvalue()


def test_files_round_trip(client: openai.OpenAI, made: Created) -> None:
    source = DOCS / "tqdm.txt"
    f = client.files.create(file=("tqdm.txt", source.read_bytes()), purpose="assistants")
    made.files.append(f.id)
    assert (f.object, f.filename, f.bytes, f.purpose) == (
        "file",
        "tqdm.txt",
        source.stat().st_size,
        "assistants",
    )
    assert client.files.retrieve(f.id).id == f.id
    assert f.id in [x.id for x in client.files.list(purpose="assistants")]
    assert f.id not in [x.id for x in client.files.list(purpose="batch")]
    assert client.files.content(f.id).content == source.read_bytes()
    deleted = client.files.delete(f.id)
    assert deleted.deleted and deleted.id == f.id
    with pytest.raises(openai.NotFoundError) as info:
        client.files.retrieve(f.id)
    assert info.value.body["code"] == "file_not_found"  # type: ignore[index]


def test_a_file_uploaded_with_an_expiry_states_it(
    client: openai.OpenAI, made: Created, http: httpx.Client
) -> None:
    """The SDK's expires_after (sent as two form fields); what happens once it passes is the store's test."""
    f = client.files.create(
        file=("brief.txt", b"gone in an hour"),
        purpose="assistants",
        expires_after={"anchor": "created_at", "seconds": 3_600},
    )
    made.files.append(f.id)
    assert f.expires_at == f.created_at + 3_600
    assert client.files.retrieve(f.id).expires_at == f.expires_at
    assert next(x for x in client.files.list() if x.id == f.id).expires_at == f.expires_at
    assert client.files.retrieve(upload(client, made, DOCS / "tqdm.txt")).expires_at is None
    for form, param in (
        (
            {"expires_after[anchor]": "last_active_at", "expires_after[seconds]": "3600"},
            "expires_after[anchor]",
        ),
        ({"expires_after[anchor]": "created_at", "expires_after[seconds]": "60"}, "expires_after[seconds]"),
        ({"expires_after[anchor]": "created_at"}, "expires_after[seconds]"),
        ({"expires_after[seconds]": "3600"}, "expires_after[anchor]"),
        ({"expires_after[anchor]": "created_at", "expires_after[seconds]": "soon"}, "expires_after[seconds]"),
        ({"expires_after": '{"anchor": "created_at", "seconds": 3600}'}, "expires_after"),  # not as the SDK
    ):
        sent = http.post(
            "/v1/files", files={"file": ("a.txt", b"text")}, data={"purpose": "assistants", **form}
        )
        assert error_of(sent, 400)["param"] == param, (form, sent.text)


def test_vector_store_files_search_and_filters(client: openai.OpenAI, made: Created) -> None:
    store = client.vector_stores.create(name="package docs", metadata={"owner": "tests"})
    made.stores.append(store.id)
    assert (store.object, store.name, store.metadata, store.status) == (
        "vector_store",
        "package docs",
        {"owner": "tests"},
        "completed",
    )
    stems = ["numpy", "pytest", "faiss", "h11", "idna"]
    for stem in stems[:2]:
        file_id = upload(client, made, DOCS / f"{stem}.txt")
        vsf = client.vector_stores.files.create_and_poll(
            file_id=file_id,
            vector_store_id=store.id,
            attributes={"package": stem, "stars": len(stem)},
            poll_interval_ms=100,
        )
        assert (vsf.status, vsf.last_error, vsf.attributes) == (
            "completed",
            None,
            {"package": stem, "stars": len(stem)},
        )
    for stem in stems[2:4]:
        with open(DOCS / f"{stem}.txt", "rb") as fh:
            vsf = client.vector_stores.files.upload_and_poll(
                vector_store_id=store.id, file=fh, poll_interval_ms=100
            )
        made.files.append(vsf.id)
        assert vsf.status == "completed"
        client.vector_stores.files.update(
            vsf.id, vector_store_id=store.id, attributes={"package": stem, "stars": len(stem)}
        )
    batch = client.vector_stores.file_batches.upload_and_poll(
        vector_store_id=store.id, files=[("idna.txt", (DOCS / "idna.txt").read_bytes())], poll_interval_ms=100
    )
    assert (batch.object, batch.status, batch.file_counts.completed) == (
        "vector_store.files_batch",
        "completed",
        1,
    )
    assert client.vector_stores.retrieve(store.id).file_counts.completed == 5

    page = client.vector_stores.files.list(vector_store_id=store.id, limit=2, order="asc")
    assert len(page.data) == 2 and page.has_more
    rest = client.vector_stores.files.list(
        vector_store_id=store.id, limit=10, order="asc", after=page.data[-1].id
    )
    assert len(rest.data) == 3 and not rest.has_more

    for stem in ("numpy", "faiss", "idna"):
        results = client.vector_stores.search(store.id, query=query_for(stem), max_num_results=3)
        assert results.data[0].filename == f"{stem}.txt", [r.filename for r in results.data]
        assert 0 < results.data[0].score <= 1 and results.data[0].content[0].type == "text"
    hits = client.vector_stores.search(
        store.id, query=query_for("numpy"), filters={"type": "gte", "key": "stars", "value": 5}
    )
    assert {r.attributes["package"] for r in hits.data} <= {"numpy", "pytest", "faiss"}  # type: ignore[index]
    assert "numpy.txt" in {r.filename for r in hits.data}
    hits = client.vector_stores.search(
        store.id,
        query=[query_for("numpy")],
        filters={
            "type": "and",
            "filters": [
                {"type": "eq", "key": "package", "value": "pytest"},
                {"type": "lt", "key": "stars", "value": 10},
            ],
        },
        ranking_options={"ranker": "none"},
    )
    assert [r.filename for r in hits.data] == ["pytest.txt"]

    updated = client.vector_stores.update(
        store.id, name="renamed", expires_after={"anchor": "last_active_at", "days": 7}
    )
    assert updated.name == "renamed" and updated.expires_after is not None and updated.expires_at
    assert store.id in [s.id for s in client.vector_stores.list(limit=100)]
    gone = client.vector_stores.files.delete(file_id, vector_store_id=store.id)
    assert gone.deleted
    assert "pytest.txt" not in {
        r.filename for r in client.vector_stores.search(store.id, query=query_for("pytest")).data
    }


def test_document_formats_and_failures(client: openai.OpenAI, made: Created, http: httpx.Client) -> None:
    store = client.vector_stores.create(name="formats")
    made.stores.append(store.id)
    pdf = (FORMATS / "shared-mime-info-spec.pdf").read_bytes()
    licence = (FORMATS / "COPYING.GPL-2").read_text()
    uploads = {
        "spec.pdf": pdf,
        "licence.docx": docx_of(licence),
        "section.html": (FORMATS / "shared-mime-info-spec-section-2.html").read_bytes(),
        "punycode.json": (FORMATS / "punycode.json").read_bytes(),
        "punycode.md": (FORMATS / "punycode.md").read_bytes(),
        "broken.pdf": pdf[: len(pdf) // 4],
        "empty.txt": b"",
    }
    ids = {}
    for name, data in uploads.items():
        f = client.files.create(file=(name, data), purpose="assistants")
        made.files.append(f.id)
        ids[name] = f.id
    batch = client.vector_stores.file_batches.create_and_poll(
        vector_store_id=store.id, file_ids=list(ids.values()), poll_interval_ms=100
    )
    assert (batch.file_counts.completed, batch.file_counts.failed) == (5, 2)
    for name in ("broken.pdf", "empty.txt"):
        vsf = client.vector_stores.files.retrieve(ids[name], vector_store_id=store.id)
        assert vsf.status == "failed" and vsf.last_error is not None
        assert vsf.last_error.code == "invalid_file" and name in vsf.last_error.message
    failed = client.vector_stores.files.list(vector_store_id=store.id, filter="failed")
    assert {f.id for f in failed.data} == {ids["broken.pdf"], ids["empty.txt"]}
    for query, name in (
        ("Free Software Foundation warranty and redistribution of the program", "licence.docx"),
        ("shared MIME database glob patterns and magic rules", "spec.pdf"),
    ):
        names = [
            r.filename for r in client.vector_stores.search(store.id, query=query, max_num_results=3).data
        ]
        assert name in names, (query, names)

    with pytest.raises(openai.BadRequestError) as info:
        client.files.create(file=("tool.exe", b"MZ\x90\x00\x03"), purpose="assistants")
    assert info.value.body["code"] == "unsupported_file"  # type: ignore[index]
    too_big = http.post(
        "/v1/files", files={"file": ("big.txt", b"a" * (26 << 20))}, data={"purpose": "assistants"}
    )
    assert error_of(too_big, 413)

    answer = http.post(
        "/v1/rag",
        json={
            "collection": store.id,
            "query": "Who publishes the GNU General Public License?",
            "max_tokens": 16,
        },
    )
    assert answer.status_code == 200, answer.text
    assert ids["licence.docx"] in {c["document_id"] for c in answer.json()["citations"]}


def summary(stem: str) -> str:
    """The first paragraph of a package's description, on one line."""
    return " ".join((DOCS / f"{stem}.txt").read_text().strip().split("\n\n")[0].split())


def test_csv_and_json_lines_are_searched_as_text(client: openai.OpenAI, made: Created) -> None:
    store = client.vector_stores.create(name="tables")
    made.stores.append(store.id)
    table = io.StringIO()
    writer = csv.writer(table, lineterminator="\n")
    writer.writerow(["package", "summary"])
    writer.writerows((stem, summary(stem)) for stem in ("numpy", "uvicorn", "mpmath"))
    records = [{"package": stem, "summary": summary(stem)} for stem in ("networkx", "h11", "tokenizers")]
    uploads = {
        "packages.csv": table.getvalue(),
        "packages.jsonl": "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records),
    }
    for name, text in uploads.items():
        f = client.files.create(file=(name, text.encode()), purpose="assistants")
        made.files.append(f.id)
        vsf = client.vector_stores.files.create_and_poll(
            file_id=f.id, vector_store_id=store.id, poll_interval_ms=100
        )
        assert (vsf.status, vsf.last_error) == ("completed", None), name
    for stem, name in (("uvicorn", "packages.csv"), ("h11", "packages.jsonl")):
        hits = client.vector_stores.search(store.id, query=query_for(stem), max_num_results=2).data
        assert hits and hits[0].filename == name, (stem, [h.filename for h in hits])
        passages = [c.text for c in hits[0].content]
        assert all(p in uploads[name] for p in passages), passages
        assert any(summary(stem) in p for p in passages), (stem, passages)


def test_errors_are_openai_shaped(http: httpx.Client, client: openai.OpenAI, made: Created) -> None:
    error = error_of(http.get("/v1/vector_stores/vs_missing"), 404)
    assert error["code"] == "vector_store_not_found"
    error = error_of(http.post("/v1/vector_stores/vs_missing/search", json={"query": "x"}), 404)
    assert error["code"] == "vector_store_not_found"
    store = client.vector_stores.create(name="errors")
    made.stores.append(store.id)
    error = error_of(http.post(f"/v1/vector_stores/{store.id}/files", json={"file_id": "file-missing"}), 404)
    assert error["code"] == "file_not_found"
    bad = {"query": "x", "filters": {"type": "like", "key": "a", "value": 1}}
    assert error_of(http.post(f"/v1/vector_stores/{store.id}/search", json=bad), 400)["param"] == "filters"
    error = error_of(
        http.post("/v1/files", files={"file": ("a.txt", b"text")}, data={"purpose": "homework"}), 400
    )
    assert error["param"] == "purpose"
    chunking = {"type": "static", "static": {"max_chunk_size_tokens": 4096, "chunk_overlap_tokens": 0}}
    error = error_of(http.post("/v1/vector_stores", json={"name": "x", "chunking_strategy": chunking}), 400)
    assert error["param"] == "chunking_strategy", error  # the request's own words, not the collection's
    assert "max_chunk_size_tokens 4096 exceeds" in error["message"], error
    error = error_of(
        http.post("/v1/vector_stores", json={"metadata": {f"k{i}": "v" for i in range(17)}}), 400
    )
    assert error["param"] == "metadata"


def test_lists_are_bounded_ordered_and_paged_both_ways(
    http: httpx.Client, client: openai.OpenAI, made: Created
) -> None:
    stores = []
    for i in range(5):
        stores.append(client.vector_stores.create(name=f"order {i}").id)
        made.stores.append(stores[-1])
    batch = client.vector_stores.file_batches.upload_and_poll(
        vector_store_id=stores[0], files=[("h11.txt", (DOCS / "h11.txt").read_bytes())], poll_interval_ms=100
    )
    made.files.extend(
        f.id for f in client.vector_stores.file_batches.list_files(batch.id, vector_store_id=stores[0])
    )
    lists = ["/v1/vector_stores", f"/v1/vector_stores/{stores[0]}/files"]
    lists.append(f"/v1/vector_stores/{stores[0]}/file_batches/{batch.id}/files")
    for path in lists:
        for limit in (0, -1, 101, 500):
            assert error_of(http.get(path, params={"limit": limit}), 400)["param"] == "limit", (path, limit)
        assert http.get(path, params={"limit": 100}).status_code == 200

    newest = http.get("/v1/vector_stores", params={"limit": 5}).json()
    assert [s["id"] for s in newest["data"]] == stores[::-1]  # newest first, even within one second
    page = http.get("/v1/vector_stores", params={"limit": 2, "before": stores[1]}).json()
    assert ([s["id"] for s in page["data"]], page["has_more"]) == ([stores[3], stores[2]], True)
    page = http.get("/v1/vector_stores", params={"limit": 2, "before": stores[3]}).json()
    assert ([s["id"] for s in page["data"]], page["has_more"]) == ([stores[4]], False)
    page = http.get("/v1/vector_stores", params={"limit": 2, "after": stores[3]}).json()
    assert [s["id"] for s in page["data"]] == [stores[2], stores[1]] and page["has_more"]

    attached = [upload(client, made, DOCS / f"{stem}.txt") for stem in ("numpy", "idna", "tqdm", "faiss")]
    for file_id in attached:
        client.vector_stores.files.create(vector_store_id=stores[1], file_id=file_id)
    listed = client.vector_stores.files.list(vector_store_id=stores[1], order="asc")
    assert [f.id for f in listed.data] == attached

    cancelled = client.vector_stores.file_batches.cancel(batch.id, vector_store_id=stores[0])
    assert (cancelled.status, cancelled.file_counts.completed, cancelled.file_counts.cancelled) == (
        "completed",
        1,
        0,
    )


def test_vector_store_collections_and_filters_are_guarded(
    http: httpx.Client, client: openai.OpenAI, made: Created
) -> None:
    store = client.vector_stores.create(name="guarded")
    made.stores.append(store.id)
    file_id = upload(client, made, DOCS / "idna.txt")
    client.vector_stores.files.create_and_poll(
        file_id=file_id, vector_store_id=store.id, attributes={"n": 1}, poll_interval_ms=100
    )
    for value in ([99999999999999999999], [-(2**63) - 1]):
        huge = {"query": "x", "filters": {"type": "in", "key": "n", "value": value}}
        error = error_of(http.post(f"/v1/vector_stores/{store.id}/search", json=huge), 400)
        assert error["param"] == "filters"

    for response in (
        http.delete(f"/v1/collections/{store.id}"),
        http.post(f"/v1/collections/{store.id}/documents", json={"documents": [{"text": "t"}]}),
        http.delete(f"/v1/collections/{store.id}/documents/{file_id}"),
    ):
        error = error_of(response, 400)
        assert error["code"] == "collection_owned" and "/v1/vector_stores" in error["message"], error
    assert store.id in {c["name"] for c in http.get("/v1/collections").json()["data"]}
    hits = client.vector_stores.search(store.id, query=query_for("idna"))
    assert [h.file_id for h in hits.data] == [file_id]


def test_attributes_updated_while_processing_are_searched(client: openai.OpenAI, made: Created) -> None:
    store = client.vector_stores.create(name="late attributes")
    made.stores.append(store.id)
    file_id = upload(client, made, FORMATS / "COPYING.GPL-2", "licence.txt")
    client.vector_stores.files.create(vector_store_id=store.id, file_id=file_id, attributes={"team": "old"})
    client.vector_stores.files.update(file_id, vector_store_id=store.id, attributes={"team": "new"})
    vsf = client.vector_stores.files.poll(file_id, vector_store_id=store.id, poll_interval_ms=100)
    assert (vsf.status, vsf.attributes) == ("completed", {"team": "new"})
    query = "Free Software Foundation warranty"
    for team, expected in (("new", [file_id]), ("old", [])):
        hits = client.vector_stores.search(
            store.id, query=query, filters={"type": "eq", "key": "team", "value": team}
        )
        assert [h.file_id for h in hits.data] == expected, team


def test_lists_go_on_past_a_deleted_cursor(http: httpx.Client, client: openai.OpenAI, made: Created) -> None:
    """The SDK's "iterate and delete" loop: each page's cursor is an object the loop has just deleted, and it
    still marks its place in creation order (for all four lists); an id never seen by a list is a 400."""
    names = ("numpy", "idna", "tqdm", "faiss", "h11")
    store = client.vector_stores.create(name="cleanup")
    made.stores.append(store.id)
    batch = client.vector_stores.file_batches.upload_and_poll(
        vector_store_id=store.id,
        files=[(f"{n}.txt", (DOCS / f"{n}.txt").read_bytes()) for n in names],
        poll_interval_ms=100,
    )
    attached = [f.id for f in client.vector_stores.files.list(vector_store_id=store.id, order="asc")]
    made.files.extend(attached)
    assert len(attached) == 5

    other = client.vector_stores.create(name="cleanup too")
    made.stores.append(other.id)
    client.vector_stores.file_batches.create(vector_store_id=other.id, file_ids=attached)
    seen = []
    for f in client.vector_stores.file_batches.list_files(batch.id, vector_store_id=store.id, limit=2):
        seen.append(f.id)
        client.vector_stores.files.delete(f.id, vector_store_id=store.id)
    assert seen == attached[::-1]
    assert client.vector_stores.files.list(vector_store_id=store.id).data == []
    seen = []
    for f in client.vector_stores.files.list(vector_store_id=other.id, limit=2):
        seen.append(f.id)
        client.vector_stores.files.delete(f.id, vector_store_id=other.id)
    assert seen == attached[::-1]

    seen = []
    for f in client.files.list(purpose="assistants", limit=2):  # the newest files are the test's own
        if f.id not in attached:
            break
        seen.append(f.id)
        client.files.delete(f.id)
    assert sorted(seen) == sorted(attached)

    stores = [client.vector_stores.create(name=f"cleanup {i}").id for i in range(5)]
    made.stores.extend(stores)
    seen = []
    for s in client.vector_stores.list(limit=2):
        if s.id not in stores:
            break
        seen.append(s.id)
        client.vector_stores.delete(s.id)
    assert seen == stores[::-1]

    for path in ("/v1/files", "/v1/vector_stores", f"/v1/vector_stores/{store.id}/files"):
        error = error_of(http.get(path, params={"after": "file-madeup"}), 400)
        assert error["param"] == "after", (path, error)


def test_retrieval_and_rag_use_a_vector_store_and_obey_its_expiry(
    http: httpx.Client, client: openai.OpenAI, made: Created
) -> None:
    """A vector store is a collection named by its id: querying it through /v1/retrieval/query or /v1/rag
    is a use (last_active_at moves), and once it has expired those routes refuse it as its search does."""
    store = client.vector_stores.create(name="used", expires_after={"anchor": "last_active_at", "days": 1})
    made.stores.append(store.id)
    client.vector_stores.file_batches.upload_and_poll(
        vector_store_id=store.id,
        files=[("numpy.txt", (DOCS / "numpy.txt").read_bytes())],
        poll_interval_ms=100,
    )
    made.files.extend(f.id for f in client.vector_stores.files.list(vector_store_id=store.id))
    query = query_for("numpy")
    routes = {
        "/v1/retrieval/query": {"collection": store.id, "query": query, "top_k": 1},
        "/v1/rag": {"collection": store.id, "query": query, "top_k": 1, "max_tokens": 1},
        f"/v1/vector_stores/{store.id}/search": {"query": query},
    }
    for path in ("/v1/retrieval/query", "/v1/rag"):
        before = client.vector_stores.retrieve(store.id).last_active_at
        time.sleep(1.1)  # last_active_at counts whole seconds
        assert http.post(path, json=routes[path]).status_code == 200, path
        assert client.vector_stores.retrieve(store.id).last_active_at > before, path

    # Two days without use, as the server's own store records it.
    data_dir = Path(os.environ.get("MMSERVE_DATA_DIR", DEFAULT_DATA_DIR))
    with contextlib.closing(sqlite3.connect(data_dir / "retrieval" / "store.sqlite3")) as db, db:
        db.execute("UPDATE vector_stores SET last_active = last_active - 172800 WHERE id = ?", (store.id,))
    assert client.vector_stores.retrieve(store.id).status == "expired"
    for path, body in routes.items():
        assert error_of(http.post(path, json=body), 400)["code"] == "vector_store_expired", path


def test_a_file_without_a_suffix_is_read_by_its_content_type(
    http: httpx.Client, client: openai.OpenAI, made: Created
) -> None:
    """`curl -F 'file=@punycode.md;filename=notes;type=text/markdown'`: no suffix, so the part's Content-Type
    tells the format, at upload and when the file is processed; without one it is still a 400."""
    markdown = (FORMATS / "punycode.md").read_bytes()
    answer = http.post(
        "/v1/files",
        files={"file": ("notes", markdown, "text/markdown; charset=utf-8")},
        data={"purpose": "assistants"},
    )
    assert answer.status_code == 200, answer.text
    file_id = answer.json()["id"]
    made.files.append(file_id)
    store = client.vector_stores.create(name="typed")
    made.stores.append(store.id)
    vsf = client.vector_stores.files.create_and_poll(file_id, vector_store_id=store.id, poll_interval_ms=100)
    assert vsf.status == "completed", vsf.last_error
    hits = client.vector_stores.search(store.id, query="Punycode encoding of Unicode domain names")
    assert [h.filename for h in hits.data] == ["notes"]

    untyped = http.post(
        "/v1/files",
        files={"file": ("notes", markdown, "application/octet-stream")},
        data={"purpose": "assistants"},
    )
    error = error_of(untyped, 400)
    assert error["code"] == "unsupported_file" and "application/octet-stream" in error["message"], error
