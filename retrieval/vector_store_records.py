"""The rows behind OpenAI's vector stores: a vector store (its collection is named by its id), the
files attached to it with their processing status, and file batches. Plain SQL over the document
store's connection; the behaviour lives in retrieval.vector_stores."""

from __future__ import annotations

import json
import sqlite3
import time
from dataclasses import dataclass, field
from typing import Any

from retrieval.errors import FileBatchNotFound, VectorStoreFileNotFound, VectorStoreNotFound
from retrieval.pages import ALL, Page, PageQuery, Positions

SCHEMA = """
CREATE TABLE IF NOT EXISTS vector_stores (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    metadata TEXT NOT NULL,
    expires_after_days INTEGER,
    created REAL NOT NULL,
    last_active REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS vector_store_files (
    vector_store_id TEXT NOT NULL REFERENCES vector_stores(id) ON DELETE CASCADE,
    file_id TEXT NOT NULL,
    status TEXT NOT NULL,
    error_code TEXT,
    error_message TEXT,
    attributes TEXT NOT NULL,
    chunk_tokens INTEGER NOT NULL,
    overlap_tokens INTEGER NOT NULL,
    batch_id TEXT,
    usage_bytes INTEGER NOT NULL DEFAULT 0,
    created REAL NOT NULL,
    PRIMARY KEY (vector_store_id, file_id)
);
CREATE INDEX IF NOT EXISTS vector_store_files_by_status ON vector_store_files (status);
CREATE TABLE IF NOT EXISTS vector_store_file_batches (
    id TEXT PRIMARY KEY,
    vector_store_id TEXT NOT NULL REFERENCES vector_stores(id) ON DELETE CASCADE,
    cancelled INTEGER NOT NULL DEFAULT 0,
    created REAL NOT NULL
);
"""

STATUSES = ("in_progress", "completed", "cancelled", "failed")
# ``created`` holds the time (whole seconds in older rows): rows with one keep their insertion order, their
# rowid's (a deleted row's may be given again, never with an earlier time; nothing here runs a VACUUM).
_CREATION_ORDER = "created, rowid"
_FILE_COLUMNS = (
    "vector_store_id, file_id, status, error_code, error_message, attributes, chunk_tokens, overlap_tokens, "
    "batch_id, usage_bytes, created"
)


@dataclass(frozen=True)
class FileCounts:
    in_progress: int = 0
    completed: int = 0
    failed: int = 0
    cancelled: int = 0

    @property
    def total(self) -> int:
        return self.in_progress + self.completed + self.failed + self.cancelled


@dataclass(frozen=True)
class VectorStoreRecord:
    id: str
    name: str
    metadata: dict[str, str]
    expires_after_days: int | None
    created_at: int
    last_active_at: int
    usage_bytes: int = 0
    file_counts: FileCounts = field(default_factory=FileCounts)

    @property
    def expires_at(self) -> int | None:
        days = self.expires_after_days
        return None if days is None else self.last_active_at + days * 86_400

    def expired(self, now: float) -> bool:
        return self.expires_at is not None and self.expires_at <= now


@dataclass(frozen=True)
class VectorStoreFileRecord:
    vector_store_id: str
    file_id: str
    status: str
    error_code: str | None
    error_message: str | None
    attributes: dict[str, Any]
    chunk_tokens: int
    overlap_tokens: int
    batch_id: str | None
    usage_bytes: int
    created_at: int


@dataclass(frozen=True)
class FileBatchRecord:
    id: str
    vector_store_id: str
    cancelled: bool
    created_at: int
    file_counts: FileCounts = field(default_factory=FileCounts)

    @property
    def status(self) -> str:
        if self.file_counts.in_progress:
            return "in_progress"
        return "cancelled" if self.cancelled else "completed"


def _file(r: tuple[Any, ...]) -> VectorStoreFileRecord:
    return VectorStoreFileRecord(
        r[0], r[1], r[2], r[3], r[4], json.loads(r[5]), r[6], r[7], r[8], r[9], int(r[10])
    )


class VectorStoreRecords:
    def __init__(self, db: sqlite3.Connection) -> None:
        self.db = db
        self.db.executescript(SCHEMA)
        self.store_positions = Positions(db, "vector_stores", _CREATION_ORDER, "id")
        self.file_positions = Positions(
            db, "vector_store_files", _CREATION_ORDER, "file_id", scope_column="vector_store_id"
        )

    # -- vector stores -------------------------------------------------------------------------------

    def insert_store(self, record: VectorStoreRecord, created: float) -> None:
        self.db.execute(
            "INSERT INTO vector_stores VALUES (?, ?, ?, ?, ?, ?)",
            (record.id, record.name, json.dumps(record.metadata), record.expires_after_days, created,
             record.last_active_at),
        )  # fmt: skip

    def store(self, store_id: str) -> VectorStoreRecord:
        row = self.db.execute("SELECT * FROM vector_stores WHERE id = ?", (store_id,)).fetchone()
        if row is None:
            raise VectorStoreNotFound(store_id)
        usage = self.db.execute(
            "SELECT coalesce(sum(usage_bytes), 0) FROM vector_store_files WHERE vector_store_id = ?",
            (store_id,),
        ).fetchone()[0]
        counts = self._counts("vector_store_id = ?", store_id)
        return VectorStoreRecord(
            row[0], row[1], json.loads(row[2]), row[3], int(row[4]), int(row[5]), int(usage), counts
        )

    def stores(self, query: PageQuery = ALL) -> Page[VectorStoreRecord]:
        rows, more = self.store_positions.page("SELECT id FROM vector_stores", (), (), query)
        return Page([self.store(r[0]) for r in rows], more)

    def exists(self, store_id: str) -> bool:
        return self.db.execute("SELECT 1 FROM vector_stores WHERE id = ?", (store_id,)).fetchone() is not None

    def update_store(
        self, store_id: str, name: str | None, metadata: dict[str, str] | None, expires: int | bool | None
    ) -> None:
        """``expires``: days, None to clear, False to leave as it is."""
        self.store(store_id)
        if name is not None:
            self.db.execute("UPDATE vector_stores SET name = ? WHERE id = ?", (name, store_id))
        if metadata is not None:
            self.db.execute(
                "UPDATE vector_stores SET metadata = ? WHERE id = ?", (json.dumps(metadata), store_id)
            )
        if expires is not False:
            self.db.execute(
                "UPDATE vector_stores SET expires_after_days = ? WHERE id = ?", (expires, store_id)
            )

    def touch(self, store_id: str) -> None:
        self.db.execute("UPDATE vector_stores SET last_active = ? WHERE id = ?", (int(time.time()), store_id))

    def delete_store(self, store_id: str) -> None:
        self.store_positions.remember(store_id)
        self.file_positions.forget(store_id)
        self.db.execute("DELETE FROM vector_store_files WHERE vector_store_id = ?", (store_id,))
        self.db.execute("DELETE FROM vector_store_file_batches WHERE vector_store_id = ?", (store_id,))
        self.db.execute("DELETE FROM vector_stores WHERE id = ?", (store_id,))

    # -- files in a vector store -----------------------------------------------------------------------

    def upsert_file(self, r: VectorStoreFileRecord, created: float) -> None:
        self.db.execute(
            f"INSERT OR REPLACE INTO vector_store_files ({_FILE_COLUMNS}) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (r.vector_store_id, r.file_id, r.status, r.error_code, r.error_message, json.dumps(r.attributes),
             r.chunk_tokens, r.overlap_tokens, r.batch_id, r.usage_bytes, created),
        )  # fmt: skip

    def file(self, store_id: str, file_id: str) -> VectorStoreFileRecord:
        row = self.db.execute(
            f"SELECT {_FILE_COLUMNS} FROM vector_store_files WHERE vector_store_id = ? AND file_id = ?",
            (store_id, file_id),
        ).fetchone()
        if row is None:
            raise VectorStoreFileNotFound(file_id, f"vector store {store_id}")
        return _file(row)

    def files(
        self, store_id: str, status: str | None = None, batch_id: str | None = None, query: PageQuery = ALL
    ) -> Page[VectorStoreFileRecord]:
        """A page of a vector store's files (or a batch's: a cursor may be any file of the store)."""
        where, params = ["vector_store_id = ?"], [store_id]
        for column, value in (("status", status), ("batch_id", batch_id)):
            if value is not None:
                where, params = [*where, f"{column} = ?"], [*params, value]
        select = f"SELECT {_FILE_COLUMNS} FROM vector_store_files"
        rows, more = self.file_positions.page(select, where, params, query, scope=store_id)
        return Page([_file(r) for r in rows], more)

    def pending(self) -> list[tuple[str, str]]:
        """(vector store id, file id) of every file still to process, oldest first."""
        rows = self.db.execute(
            "SELECT vector_store_id, file_id FROM vector_store_files "
            f"WHERE status = 'in_progress' ORDER BY {_CREATION_ORDER}"
        )
        return [(r[0], r[1]) for r in rows]

    def stores_holding(self, file_id: str) -> list[str]:
        rows = self.db.execute("SELECT vector_store_id FROM vector_store_files WHERE file_id = ?", (file_id,))
        return [r[0] for r in rows]

    def finish_file(
        self,
        store_id: str,
        file_id: str,
        status: str,
        chunking: tuple[int, int],
        usage_bytes: int = 0,
        error: tuple[str, str] | None = None,
    ) -> bool:
        """Set the outcome of processing a file still in progress, and still to be chunked by ``chunking``
        (tokens, overlap); False if it no longer is (detached, cancelled, attached again to be chunked
        otherwise)."""
        code, message = error or (None, None)
        cur = self.db.execute(
            "UPDATE vector_store_files SET status = ?, usage_bytes = ?, error_code = ?, error_message = ? "
            "WHERE vector_store_id = ? AND file_id = ? AND status = 'in_progress' "
            "AND chunk_tokens = ? AND overlap_tokens = ?",
            (status, usage_bytes, code, message, store_id, file_id, *chunking),
        )
        return cur.rowcount > 0

    def set_attributes(self, store_id: str, file_id: str, attributes: dict[str, Any]) -> None:
        self.db.execute(
            "UPDATE vector_store_files SET attributes = ? WHERE vector_store_id = ? AND file_id = ?",
            (json.dumps(attributes), store_id, file_id),
        )

    def delete_file(self, store_id: str, file_id: str) -> None:
        self.file_positions.remember(file_id, scope=store_id)
        self.db.execute(
            "DELETE FROM vector_store_files WHERE vector_store_id = ? AND file_id = ?", (store_id, file_id)
        )

    # -- batches -----------------------------------------------------------------------------------------

    def insert_batch(self, batch_id: str, store_id: str, created: int) -> None:
        self.db.execute(
            "INSERT INTO vector_store_file_batches VALUES (?, ?, 0, ?)", (batch_id, store_id, created)
        )

    def batch(self, store_id: str, batch_id: str) -> FileBatchRecord:
        row = self.db.execute(
            "SELECT id, vector_store_id, cancelled, created FROM vector_store_file_batches "
            "WHERE id = ? AND vector_store_id = ?",
            (batch_id, store_id),
        ).fetchone()
        if row is None:
            raise FileBatchNotFound(batch_id, f"vector store {store_id}")
        counts = self._counts("vector_store_id = ? AND batch_id = ?", store_id, batch_id)
        return FileBatchRecord(row[0], row[1], bool(row[2]), int(row[3]), counts)

    def cancel_batch(self, store_id: str, batch_id: str) -> None:
        """Cancel the batch's files still in progress; a batch with none left keeps its status."""
        cur = self.db.execute(
            "UPDATE vector_store_files SET status = 'cancelled' "
            "WHERE vector_store_id = ? AND batch_id = ? AND status = 'in_progress'",
            (store_id, batch_id),
        )
        if cur.rowcount:
            self.db.execute("UPDATE vector_store_file_batches SET cancelled = 1 WHERE id = ?", (batch_id,))

    def _counts(self, where: str, *params: Any) -> FileCounts:
        rows = self.db.execute(
            f"SELECT status, count(*) FROM vector_store_files WHERE {where} GROUP BY status", params
        ).fetchall()
        return FileCounts(**{status: n for status, n in rows if status in STATUSES})
