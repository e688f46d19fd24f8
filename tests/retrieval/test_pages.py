"""Cursor pagination over the files' and vector stores' rows: a cursor whose object was deleted, or is
left out of the list by a filter, still marks its place in creation order, both ways; an id never seen
has none; and a deleted vector store's files leave no places behind."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest

from retrieval.files import FileStore
from retrieval.pages import PageQuery
from retrieval.vector_store_records import VectorStoreFileRecord, VectorStoreRecord, VectorStoreRecords
from shared_engine.errors import InvalidRequest


@pytest.fixture
def db() -> Iterator[sqlite3.Connection]:
    connection = sqlite3.connect(":memory:", isolation_level=None)
    yield connection
    connection.close()


def test_file_cursors_outlive_their_files(db: sqlite3.Connection, tmp_path: Path) -> None:
    now = [1_000.0]
    files = FileStore(db, tmp_path, clock=lambda: now[0])
    ids = []
    for i, purpose in enumerate(("assistants", "assistants", "batch", "assistants", "assistants")):
        ids.append(files.save(f"{i}.txt", purpose, b"text").id)
        now[0] += 0.25
    assert [f.id for f in files.list().items] == ids

    files.delete(ids[3])
    page = files.list(query=PageQuery(2, "desc", after=ids[3]))
    assert ([f.id for f in page.items], page.has_more) == ([ids[2], ids[1]], True)
    page = files.list(query=PageQuery(2, "asc", before=ids[3]))
    assert ([f.id for f in page.items], page.has_more) == ([ids[1], ids[2]], True)
    page = files.list("assistants", PageQuery(2, "asc", after=ids[2]))  # a file of another purpose
    assert ([f.id for f in page.items], page.has_more) == ([ids[4]], False)
    page = files.list(query=PageQuery(10, "asc", after=ids[0], before=ids[3]))
    assert ([f.id for f in page.items], page.has_more) == ([ids[1], ids[2]], False)

    for name in ("after", "before"):
        with pytest.raises(InvalidRequest) as error:
            files.list(query=PageQuery(2, "asc", **{name: "file-never"}))
        assert error.value.param == name


def test_vector_store_cursors_outlive_their_objects(db: sqlite3.Connection) -> None:
    records = VectorStoreRecords(db)
    stores = [f"vs_{i}" for i in range(4)]
    for store_id in stores:  # one creation time: insertion order decides
        records.insert_store(VectorStoreRecord(store_id, store_id, {}, None, 5, 5), 5.0)
    records.delete_store(stores[1])
    page = records.stores(PageQuery(1, "asc", after=stores[1]))
    assert ([s.id for s in page.items], page.has_more) == ([stores[2]], True)
    page = records.stores(PageQuery(5, "desc", after=stores[1]))
    assert ([s.id for s in page.items], page.has_more) == ([stores[0]], False)

    files = [f"file-{i}" for i in range(4)]
    for i, file_id in enumerate(files):
        status = "completed" if i % 2 else "in_progress"
        records.upsert_file(
            VectorStoreFileRecord(stores[0], file_id, status, None, None, {}, 100, 0, None, 0, 6), 6.0
        )
    records.delete_file(stores[0], files[2])
    page = records.files(stores[0], query=PageQuery(2, "desc", after=files[2]))
    assert [f.file_id for f in page.items] == [files[1], files[0]]
    page = records.files(stores[0], "completed", query=PageQuery(5, "asc", after=files[0]))
    assert [f.file_id for f in page.items] == [files[1], files[3]]  # the cursor is left out by the filter
    with pytest.raises(InvalidRequest):
        records.files(stores[2], query=PageQuery(2, "asc", after=files[0]))  # another store's file

    records.delete_store(stores[0])
    assert (
        db.execute(
            "SELECT count(*) FROM deleted_positions WHERE list LIKE 'vector_store_files:%'"
        ).fetchone()[0]
        == 0
    )
