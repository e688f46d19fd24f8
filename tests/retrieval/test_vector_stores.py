"""Files and vector stores over real collections (all-MiniLM-L6-v2) and real documents (tests/data): files
are durable and orphans are swept, attached files end completed or failed with a clear last_error, search
finds the right file under OpenAI's filters (with the attributes last set, even while the file was
processed), detaching/deleting/cancelling leave nothing behind (a finished batch stays as it is), a vector
store's collection changes only through it, lists keep creation order, files left in progress by a
crash are processed when the store is opened again, and files past their expiry are gone."""

from __future__ import annotations

import asyncio
import io
import json
import sqlite3
import threading
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from retrieval.chunking import ChunkingConfig
from retrieval.collections import Collections, DocumentInput
from retrieval.errors import (
    CollectionOwned,
    DocumentNotFound,
    FileNotFound,
    UnsupportedFormat,
    VectorStoreExpired,
    VectorStoreFileNotFound,
    VectorStoreNotFound,
)
from retrieval.files import FileRecord, FileStore
from retrieval.filters import parse_filter
from retrieval.vector_store_records import VectorStoreFileRecord
from retrieval.vector_store_types import FileAttachment, SearchOptions
from retrieval.vector_stores import VectorStores
from services.tasks.embedding import EmbeddingService
from shared_engine.errors import InvalidRequest

DATA = Path(__file__).resolve().parents[1] / "data"
DOCS = DATA / "retrieval" / "docs"
QUERIES = json.loads((DATA / "retrieval" / "queries.json").read_text())


def open_stores(data_dir: Path, embedder: EmbeddingService) -> VectorStores:
    return VectorStores.open(Collections(data_dir, {embedder.name: embedder}, embedder.name))


async def one(data: bytes) -> AsyncIterator[bytes]:
    yield data


async def upload(vs: VectorStores, path: Path, name: str | None = None) -> str:
    record = await vs.upload_file(name or path.name, "assistants", one(path.read_bytes()))
    return record.id


async def settled(
    vs: VectorStores, store_id: str, file_id: str, timeout: float = 120.0
) -> VectorStoreFileRecord:
    deadline = asyncio.get_running_loop().time() + timeout
    while (f := await vs.get_attached(store_id, file_id)).status == "in_progress":
        assert asyncio.get_running_loop().time() < deadline, f"{file_id} still in progress"
        await asyncio.sleep(0.05)
    return f


def first_query_for(stem: str) -> str:
    return next(q["query"] for q in QUERIES["queries"] if q["answer"] == stem)


async def test_files_are_durable_and_orphans_are_swept(tmp_path: Path, embedder: EmbeddingService) -> None:
    vs = open_stores(tmp_path, embedder)
    source = DOCS / "numpy.txt"
    file_id = await upload(vs, source, "dir/numpy.txt")
    record = await vs.get_file(file_id)
    assert (record.filename, record.bytes, record.purpose) == (
        "numpy.txt",
        source.stat().st_size,
        "assistants",
    )
    _, chunks = await vs.file_content(file_id)
    assert b"".join([c async for c in chunks]) == source.read_bytes()
    orphan = vs.files.dir / "file-0123"
    orphan.write_bytes(b"never committed")
    (vs.files.dir / ".upload-file-4567").write_bytes(b"half written")
    vs.collections.store.close()
    vs = open_stores(tmp_path, embedder)
    assert [r.id for r in (await vs.list_files()).items] == [file_id]
    assert sorted(p.name for p in vs.files.dir.iterdir()) == [file_id]
    await vs.delete_file(file_id)
    with pytest.raises(FileNotFound):
        await vs.get_file(file_id)
    assert list(vs.files.dir.iterdir()) == []
    with pytest.raises(InvalidRequest, match="purpose"):
        await vs.upload_file("a.txt", "homework", one(b"text"))
    with pytest.raises(UnsupportedFormat, match="not a supported file type"):
        await vs.upload_file("tool.exe", "assistants", one(b"MZ\x90\x00"))
    vs.collections.store.close()


async def test_uploads_use_the_stores_connection_only_from_the_event_loop(
    tmp_path: Path, embedder: EmbeddingService
) -> None:
    """The event loop's transactions and an upload's row must not share a transaction: every statement
    on the connection runs on the loop's thread (bytes are written, synced and read back in workers)."""
    vs = open_stores(tmp_path, embedder)
    store = await vs.create("docs", {}, None, None)
    threads: set[int] = set()
    vs.collections.store.db.set_trace_callback(lambda _: threads.add(threading.get_ident()))
    file_ids = await asyncio.gather(*(upload(vs, DOCS / "numpy.txt", f"{i}.txt") for i in range(4)))
    await vs.attach(store.id, FileAttachment(file_ids[0]))
    assert (await settled(vs, store.id, file_ids[0])).status == "completed"
    vs.collections.store.db.set_trace_callback(None)
    assert threads == {threading.get_ident()}
    assert sorted(r.id for r in (await vs.list_files()).items) == sorted(file_ids)
    vs.collections.store.close()


async def test_attach_search_filter_and_detach(tmp_path: Path, embedder: EmbeddingService) -> None:
    vs = open_stores(tmp_path, embedder)
    store = await vs.create("docs", {"team": "search"}, None, None)
    ids = {}
    for path in sorted(DOCS.glob("*.txt")):
        ids[path.stem] = await upload(vs, path)
    batch = await vs.create_batch(
        store.id,
        [
            FileAttachment(fid, {"package": stem, "size": (DOCS / f"{stem}.txt").stat().st_size})
            for stem, fid in ids.items()
        ],
    )
    for fid in ids.values():
        assert (await settled(vs, store.id, fid)).status == "completed"
    batch = await vs.get_batch(store.id, batch.id)
    assert (batch.status, batch.file_counts.completed, batch.file_counts.total) == (
        "completed",
        len(ids),
        len(ids),
    )
    record = await vs.get(store.id)
    assert record.file_counts.completed == len(ids) and record.usage_bytes > 0

    for stem in ("numpy", "pytest", "faiss"):
        hits = await vs.search(store.id, [first_query_for(stem)], SearchOptions(max_num_results=5))
        assert hits[0].file_id == ids[stem], [h.filename for h in hits]
        assert hits[0].filename == f"{stem}.txt" and hits[0].attributes["package"] == stem
        assert 0 < hits[0].score <= 1 and hits[0].content
        assert len({h.file_id for h in hits}) == len(hits)  # one result per file

    query = first_query_for("numpy")
    only = parse_filter({"type": "ne", "key": "package", "value": "numpy"})
    hits = await vs.search(store.id, [query], SearchOptions(filters=only))
    assert ids["numpy"] not in {h.file_id for h in hits}
    small = parse_filter(
        {
            "type": "and",
            "filters": [
                {"type": "lt", "key": "size", "value": 3100},
                {"type": "in", "key": "package", "value": ["numpy", "idna", "h11"]},
            ],
        }
    )
    hits = await vs.search(store.id, [query], SearchOptions(filters=small, max_num_results=10))
    expected = {s for s in ("numpy", "idna", "h11") if (DOCS / f"{s}.txt").stat().st_size < 3100}
    assert {h.attributes["package"] for h in hits} == expected

    dense = await vs.search(store.id, [query], SearchOptions(ranker="none"))
    assert dense[0].file_id == ids["numpy"]
    none = await vs.search(store.id, [query], SearchOptions(score_threshold=1.0))
    assert all(h.score >= 1.0 for h in none)

    await vs.update_attributes(store.id, ids["numpy"], {"package": "renamed"})
    hits = await vs.search(
        store.id,
        [query],
        SearchOptions(filters=parse_filter({"type": "eq", "key": "package", "value": "renamed"})),
    )
    assert [h.file_id for h in hits] == [ids["numpy"]]

    await vs.detach(store.id, ids["numpy"])
    assert ids["numpy"] not in {h.file_id for h in await vs.search(store.id, [query], SearchOptions())}
    await vs.get_file(ids["numpy"])  # the file itself stays
    await vs.delete_file(ids["pytest"])  # a deleted file leaves every vector store
    with pytest.raises(VectorStoreFileNotFound):
        await vs.get_attached(store.id, ids["pytest"])
    await vs.delete(store.id)
    with pytest.raises(VectorStoreNotFound):
        await vs.get(store.id)
    assert store.id not in {r.name for r in vs.collections.records()}
    vs.collections.store.close()


async def test_unreadable_files_fail_with_last_error(tmp_path: Path, embedder: EmbeddingService) -> None:
    vs = open_stores(tmp_path, embedder)
    store = await vs.create("mixed", {}, None, None)
    pdf = (DATA / "documents" / "shared-mime-info-spec.pdf").read_bytes()
    good = await upload(vs, DATA / "documents" / "shared-mime-info-spec.pdf")
    broken = (await vs.upload_file("broken.pdf", "assistants", one(pdf[: len(pdf) // 3]))).id
    empty = (await vs.upload_file("empty.txt", "assistants", one(b""))).id
    image = io.BytesIO()
    Image.new("RGB", (8, 8), "white").save(image, "PNG")
    png = (await vs.upload_file("photo.png", "vision", one(image.getvalue()))).id
    for fid in (good, broken, empty, png):
        await vs.attach(store.id, FileAttachment(fid))
    assert (await settled(vs, store.id, good)).status == "completed"
    for fid, code in ((broken, "invalid_file"), (empty, "invalid_file"), (png, "unsupported_file")):
        f = await settled(vs, store.id, fid)
        assert (f.status, f.error_code) == ("failed", code), f
        assert f.error_message
    hits = await vs.search(store.id, ["glob patterns for file names"], SearchOptions())
    assert [h.file_id for h in hits] == [good]
    assert (await vs.get(store.id)).file_counts.failed == 3
    vs.collections.store.close()


async def test_in_progress_files_resume_after_a_crash(tmp_path: Path, embedder: EmbeddingService) -> None:
    vs = open_stores(tmp_path, embedder)
    store = await vs.create("crash", {}, None, None)
    fid = await upload(vs, DOCS / "idna.txt")
    vs._attach(store.id, FileAttachment(fid, {"k": "v"}), None)  # recorded, never processed: the process died
    vs.collections.store.close()

    vs = open_stores(tmp_path, embedder)
    assert (await vs.get_attached(store.id, fid)).status in ("in_progress", "completed")
    f = await settled(vs, store.id, fid)
    assert f.status == "completed" and f.attributes == {"k": "v"}
    hits = await vs.search(store.id, [first_query_for("idna")], SearchOptions())
    assert hits[0].file_id == fid
    vs.collections.store.close()


async def test_cancelled_batch_leaves_unprocessed_files_out(
    tmp_path: Path, embedder: EmbeddingService
) -> None:
    vs = open_stores(tmp_path, embedder)
    store = await vs.create("cancel", {}, None, None)
    files = [await upload(vs, p) for p in sorted(DOCS.glob("*.txt"))]
    batch = await vs.create_batch(store.id, [FileAttachment(f) for f in files])
    batch = await vs.cancel_batch(store.id, batch.id)
    for f in files:
        await settled(vs, store.id, f)
    batch = await vs.get_batch(store.id, batch.id)
    assert batch.status == "cancelled" and batch.file_counts.cancelled >= 1
    searchable = {h.file_id for h in await vs.search(store.id, ["python"], SearchOptions(max_num_results=50))}
    completed = {r.file_id for r in (await vs.batch_files(store.id, batch.id, "completed")).items}
    assert searchable <= completed
    vs.collections.store.close()


async def test_attributes_set_while_a_file_is_processed_are_the_ones_searched(
    tmp_path: Path, embedder: EmbeddingService
) -> None:
    vs = open_stores(tmp_path, embedder)
    store = await vs.create("late", {}, None, None)
    fid = await upload(vs, DOCS / "numpy.txt")
    async with vs.collections.lock:  # the file's document cannot be written yet
        await vs.attach(store.id, FileAttachment(fid, {"team": "old"}))
        await asyncio.sleep(0.5)  # its processing has started, with the attributes it was attached with
        updated = await vs.update_attributes(store.id, fid, {"team": "new"})
        assert updated.status == "in_progress" and updated.attributes == {"team": "new"}
    assert (await settled(vs, store.id, fid)).attributes == {"team": "new"}

    async def found(team: str) -> list[str]:
        options = SearchOptions(filters=parse_filter({"type": "eq", "key": "team", "value": team}))
        return [h.file_id for h in await vs.search(store.id, [first_query_for("numpy")], options)]

    assert (await found("new"), await found("old")) == ([fid], [])
    vs.collections.store.close()
    vs = open_stores(tmp_path, embedder)
    assert (await found("new"), await found("old")) == ([fid], [])
    await vs.update_attributes(store.id, fid, {"team": "newer"})  # completed: applied at once
    assert (await found("newer"), await found("new")) == ([fid], [])
    vs.collections.store.close()


async def test_collections_of_vector_stores_change_only_through_them(
    tmp_path: Path, embedder: EmbeddingService
) -> None:
    vs = open_stores(tmp_path, embedder)
    store = await vs.create("owned", {}, None, None)
    fid = await upload(vs, DOCS / "idna.txt")
    await vs.attach(store.id, FileAttachment(fid))
    assert (await settled(vs, store.id, fid)).status == "completed"
    cols = vs.collections
    with pytest.raises(CollectionOwned, match="/v1/vector_stores") as info:
        cols.drop(store.id)
    assert info.value.code == "collection_owned"
    with pytest.raises(CollectionOwned):
        await cols.add(store.id, [DocumentInput("some text", "doc")])
    with pytest.raises(CollectionOwned):
        await cols.delete(store.id, fid)
    hits = await vs.search(store.id, [first_query_for("idna")], SearchOptions())
    assert [h.file_id for h in hits] == [fid]
    assert store.id in {r.name for r in cols.records()}  # listed, and readable
    cols.create("plain", None)
    await cols.add("plain", [DocumentInput("some text", "doc")])
    cols.drop("plain")
    await vs.delete(store.id)
    assert store.id not in {r.name for r in cols.records()}
    vs.collections.store.close()


async def test_lists_keep_creation_order_within_a_second(tmp_path: Path, embedder: EmbeddingService) -> None:
    vs = open_stores(tmp_path, embedder)
    stores = [(await vs.create(f"s{i}", {}, None, None)).id for i in range(8)]
    assert [s.id for s in (await vs.list_stores()).items] == stores
    files = [await upload(vs, p) for p in sorted(DOCS.glob("*.txt"))[:8]]
    for f in files:
        await vs.attach(stores[0], FileAttachment(f))
    assert [f.file_id for f in (await vs.list_attached(stores[0])).items] == files
    batch = await vs.create_batch(stores[1], [FileAttachment(f) for f in files])
    assert [f.file_id for f in (await vs.batch_files(stores[1], batch.id)).items] == files
    for f in files:
        await settled(vs, stores[0], f)
        await settled(vs, stores[1], f)
    vs.collections.store.close()


async def test_cancelling_a_finished_batch_changes_nothing(
    tmp_path: Path, embedder: EmbeddingService
) -> None:
    vs = open_stores(tmp_path, embedder)
    store = await vs.create("done", {}, None, None)
    files = [await upload(vs, DOCS / f"{stem}.txt") for stem in ("idna", "h11")]
    batch = await vs.create_batch(store.id, [FileAttachment(f) for f in files])
    for f in files:
        await settled(vs, store.id, f)
    batch = await vs.cancel_batch(store.id, batch.id)
    assert (batch.status, batch.file_counts.completed, batch.file_counts.cancelled) == ("completed", 2, 0)
    assert (await vs.get_batch(store.id, batch.id)).status == "completed"
    vs.collections.store.close()


async def test_a_file_attached_again_to_be_chunked_otherwise_is_chunked_so(
    tmp_path: Path, embedder: EmbeddingService
) -> None:
    """Detached and attached again, with other chunking, while its first processing runs: that run's
    document is not the one kept; the file ends chunked as its attachment says."""
    vs = open_stores(tmp_path, embedder)
    store = await vs.create("rechunk", {}, None, None)
    fid = await upload(vs, DOCS / "numpy.txt")
    fresh = await vs.create("fresh", {}, None, None)
    await vs.attach(fresh.id, FileAttachment(fid, chunking=ChunkingConfig(50, 0)))
    await settled(vs, fresh.id, fid)
    expected = len(vs.collections.store.chunk_ids_of(fresh.id, fid))
    cols, add = vs.collections, vs.collections.add
    reached, go_on = asyncio.Event(), asyncio.Event()

    async def held_add(*args: Any, **kwargs: Any) -> tuple[list[str], int]:
        reached.set()
        await go_on.wait()
        return await add(*args, **kwargs)

    cols.add = held_add  # type: ignore[method-assign]
    await vs.attach(store.id, FileAttachment(fid, chunking=ChunkingConfig(200, 0)))
    await asyncio.wait_for(reached.wait(), 60)  # its chunks of 200 tokens are about to be written
    cols.add = add  # type: ignore[method-assign]
    await vs.detach(store.id, fid)
    await vs.attach(store.id, FileAttachment(fid, chunking=ChunkingConfig(50, 0)))
    go_on.set()
    done = await settled(vs, store.id, fid)
    assert (done.status, done.chunk_tokens) == ("completed", 50)
    assert len(vs.collections.store.chunk_ids_of(store.id, fid)) == expected > 0
    vs.collections.store.close()


async def test_a_long_file_holds_up_no_other_and_stops_when_its_batch_is_cancelled(
    tmp_path: Path, embedder: EmbeddingService
) -> None:
    """A file still embedding (held here) does not keep a file attached after it waiting, in any store; and
    cancelling its batch stops its work at once instead of letting it run to the end to be thrown away."""
    vs = open_stores(tmp_path, embedder)
    slow_store, quick_store = [await vs.create(name, {}, None, None) for name in ("slow", "quick")]
    slow, quick = await upload(vs, DOCS / "numpy.txt"), await upload(vs, DOCS / "faiss.txt")
    cols, add = vs.collections, vs.collections.add
    reached, stopped = asyncio.Event(), asyncio.Event()

    async def held_add(name: str, *args: Any, **kwargs: Any) -> tuple[list[str], int]:
        if name != slow_store.id:
            return await add(name, *args, **kwargs)
        reached.set()
        try:
            await asyncio.Event().wait()  # a file that takes for ever to embed
        except asyncio.CancelledError:
            stopped.set()
            raise
        raise AssertionError("unreachable")

    cols.add = held_add  # type: ignore[method-assign]
    batch = await vs.create_batch(slow_store.id, [FileAttachment(slow)])
    await asyncio.wait_for(reached.wait(), 60)
    await vs.attach(quick_store.id, FileAttachment(quick))
    assert (await settled(vs, quick_store.id, quick, timeout=60)).status == "completed"
    assert (await vs.get_attached(slow_store.id, slow)).status == "in_progress"
    await vs.cancel_batch(slow_store.id, batch.id)
    await asyncio.wait_for(stopped.wait(), 10)
    assert (await vs.get_attached(slow_store.id, slow)).status == "cancelled"
    cols.add = add  # type: ignore[method-assign]
    assert vs.collections.store.chunk_ids_of(slow_store.id, slow) == []
    vs.collections.store.close()


async def test_a_file_past_its_expiry_is_gone_and_leaves_its_vector_stores(
    tmp_path: Path, embedder: EmbeddingService
) -> None:
    """OpenAI's expires_after: the file states when it expires; from then on it is never listed, read or
    found by a search, and its bytes and its place in vector stores are deleted."""
    vs = open_stores(tmp_path, embedder)
    now = [1_800_000_000.0]
    vs.files.clock = lambda: now[0]
    kept = await upload(vs, DOCS / "numpy.txt")
    source = DOCS / "pytest.txt"
    brief = await vs.upload_file(source.name, "assistants", one(source.read_bytes()), expires_after_s=3_600)
    assert brief.expires_at == brief.created_at + 3_600 and (await vs.get_file(kept)).expires_at is None
    store = await vs.create("docs", {}, None, None)
    await vs.create_batch(store.id, [FileAttachment(kept), FileAttachment(brief.id)])
    for file_id in (kept, brief.id):
        assert (await settled(vs, store.id, file_id)).status == "completed"
    query = first_query_for("pytest")
    assert (await vs.search(store.id, [query], SearchOptions()))[0].file_id == brief.id

    now[0] += 3_599
    assert (await vs.get_file(brief.id)).id == brief.id  # a second to go
    vs.expiry_check_s = 0.05
    await vs.resume()  # what a server does once loaded: files are deleted as they expire
    now[0] += 1
    await asyncio.sleep(0.5)
    with pytest.raises(DocumentNotFound):  # the store's collection, which retrieval and RAG read
        vs.collections.get(store.id, brief.id)
    with pytest.raises(FileNotFound):
        await vs.get_file(brief.id)
    with pytest.raises(FileNotFound):
        await vs.file_content(brief.id)
    assert brief.id not in {h.file_id for h in await vs.search(store.id, [query], SearchOptions())}
    with pytest.raises(VectorStoreFileNotFound):
        await vs.get_attached(store.id, brief.id)
    assert [r.id for r in (await vs.list_files()).items] == [kept]
    assert sorted(p.name for p in vs.files.dir.iterdir()) == [kept]
    for seconds in (3_599, 2_592_001):
        with pytest.raises(InvalidRequest, match=r"expires_after\[seconds\] must be from 3600 to 2592000"):
            await vs.upload_file("a.txt", "assistants", one(b"text"), expires_after_s=seconds)
    vs.close()
    vs.collections.store.close()


async def test_an_expired_vector_store_is_not_searched_nor_revived(
    tmp_path: Path, embedder: EmbeddingService
) -> None:
    """Past its expires_after (days without use) a store says expired; searching it is refused, and
    does not count as a use that would bring it back; a new expires_after does."""
    vs = open_stores(tmp_path, embedder)
    store = await vs.create("brief", {}, 1, None)
    file_id = await upload(vs, DOCS / "numpy.txt")
    await vs.attach(store.id, FileAttachment(file_id))
    assert (await settled(vs, store.id, file_id)).status == "completed"
    assert await vs.search(store.id, [first_query_for("numpy")], SearchOptions())
    two_days_ago = (await vs.get(store.id)).last_active_at - 2 * 86_400
    vs.records.db.execute("UPDATE vector_stores SET last_active = ? WHERE id = ?", (two_days_ago, store.id))
    with pytest.raises(VectorStoreExpired, match="expired") as refused:
        await vs.search(store.id, [first_query_for("numpy")], SearchOptions())
    assert refused.value.code == "vector_store_expired"
    assert (await vs.get(store.id)).expired(time.time())
    await vs.modify(store.id, None, None, 7)  # a new policy counts from now
    assert not (await vs.get(store.id)).expired(time.time())
    assert await vs.search(store.id, [first_query_for("numpy")], SearchOptions())
    vs.collections.store.close()


def test_a_files_table_from_before_expiry_gains_it(tmp_path: Path) -> None:
    """A store written before files could expire opens with its files kept, none of them expiring."""
    db = sqlite3.connect(tmp_path / "store.db")
    db.execute(
        "CREATE TABLE files (id TEXT PRIMARY KEY, filename TEXT NOT NULL, purpose TEXT NOT NULL, "
        "bytes INTEGER NOT NULL, sha256 TEXT NOT NULL, created REAL NOT NULL)"
    )
    db.execute("INSERT INTO files VALUES ('file-old', 'a.txt', 'assistants', 4, 'ab', 1700000000.5)")
    db.commit()
    (tmp_path / "files").mkdir()
    (tmp_path / "files" / "file-old").write_bytes(b"text")
    files = FileStore(db, tmp_path / "files")
    assert files.get("file-old") == FileRecord(
        "file-old", "a.txt", "assistants", 4, "ab", 1_700_000_000, None
    )
    assert files.read("file-old") == b"text" and files.expired() == []


async def test_every_query_of_a_store_is_a_use_and_obeys_its_expiry(
    tmp_path: Path, embedder: EmbeddingService
) -> None:
    """/v1/retrieval/query and /v1/rag query a vector store's collection by its id, through the collections:
    like the store's own search, that is a use (last_active_at moves, so the store does not expire while
    it is used), and once the store has expired it is refused the same way (and is no use)."""
    vs = open_stores(tmp_path, embedder)
    store = await vs.create("brief", {}, 1, None)
    file_id = await upload(vs, DOCS / "numpy.txt")
    await vs.attach(store.id, FileAttachment(file_id))
    assert (await settled(vs, store.id, file_id)).status == "completed"

    def last_active(seconds_ago: int) -> int:
        at = int(time.time()) - seconds_ago
        vs.records.db.execute("UPDATE vector_stores SET last_active = ? WHERE id = ?", (at, store.id))
        return at

    idle_since = last_active(20 * 3_600)
    with pytest.raises(InvalidRequest, match="query must not be empty"):  # refused: no use
        await vs.collections.query(store.id, "   ", 3)
    assert (await vs.get(store.id)).last_active_at == idle_since
    hits = await vs.collections.query(store.id, first_query_for("numpy"), 3)
    assert [h.document_id for h in hits] == [file_id]
    assert (await vs.get(store.id)).last_active_at >= int(time.time()) - 60

    two_days_ago = last_active(2 * 86_400)
    with pytest.raises(VectorStoreExpired) as refused:
        await vs.collections.query(store.id, first_query_for("numpy"), 3)
    assert refused.value.code == "vector_store_expired"
    assert (await vs.get(store.id)).last_active_at == two_days_ago

    vs.collections.create("plain", None)  # a collection of no store is queried as before
    await vs.collections.add("plain", [DocumentInput((DOCS / "numpy.txt").read_text(), "doc")])
    assert [h.document_id for h in await vs.collections.query("plain", first_query_for("numpy"), 1)] == [
        "doc"
    ]
    vs.collections.store.close()


def test_a_files_table_from_before_content_types_gains_them(tmp_path: Path) -> None:
    """A store written before uploads kept their content type opens with its files kept (of no type), and
    keeps the media type of the uploads that follow."""
    db = sqlite3.connect(tmp_path / "store.db")
    db.execute(
        "CREATE TABLE files (id TEXT PRIMARY KEY, filename TEXT NOT NULL, purpose TEXT NOT NULL, "
        "bytes INTEGER NOT NULL, sha256 TEXT NOT NULL, created REAL NOT NULL, expires REAL)"
    )
    db.execute("INSERT INTO files VALUES ('file-old', 'a.txt', 'assistants', 4, 'ab', 1700000000.5, NULL)")
    db.commit()
    (tmp_path / "files").mkdir()
    (tmp_path / "files" / "file-old").write_bytes(b"text")
    files = FileStore(db, tmp_path / "files")
    assert files.get("file-old").content_type is None
    upload = files.upload("notes", "assistants", None, "Text/Markdown; charset=utf-8")
    upload.write(b"# Notes")
    record = upload.commit()
    assert record.content_type == files.get(record.id).content_type == "text/markdown"
