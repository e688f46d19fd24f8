"""The durable document store: SQLite in WAL mode with full fsync.

A document's text, metadata, chunks, their vectors and their lexical (FTS5) index entries are written
in one transaction; when ``add_documents`` returns, they are on disk. The vector index is derived data:
it can always be rebuilt from the ``chunks`` table, whose row ids are the index's ids.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from retrieval import filters, lexical
from retrieval.filters import Filter

# 1: every collection has a lexical index (stores of version 0 get theirs built when first opened).
# 2: lexical indexes hold CJK text a character per token (those of version 1 are rebuilt when first opened).
SCHEMA_VERSION = 2
SCHEMA = """
CREATE TABLE IF NOT EXISTS collections (
    name TEXT PRIMARY KEY,
    model TEXT NOT NULL,
    index_kind TEXT NOT NULL,
    dimensions INTEGER NOT NULL,
    chunk_tokens INTEGER NOT NULL,
    overlap_tokens INTEGER NOT NULL,
    created REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS documents (
    collection TEXT NOT NULL REFERENCES collections(name) ON DELETE CASCADE,
    id TEXT NOT NULL,
    text TEXT NOT NULL,
    metadata TEXT NOT NULL,
    created REAL NOT NULL,
    PRIMARY KEY (collection, id)
);
CREATE TABLE IF NOT EXISTS chunks (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    collection TEXT NOT NULL,
    document_id TEXT NOT NULL,
    seq INTEGER NOT NULL,
    text TEXT NOT NULL,
    vector BLOB NOT NULL,
    FOREIGN KEY (collection, document_id) REFERENCES documents(collection, id) ON DELETE CASCADE
);
CREATE INDEX IF NOT EXISTS chunks_by_document ON chunks (collection, document_id);
"""


@dataclass(frozen=True)
class CollectionRecord:
    name: str
    model: str
    index_kind: str
    dimensions: int
    chunk_tokens: int
    overlap_tokens: int
    created: float


@dataclass(frozen=True)
class DocumentRecord:
    id: str
    text: str
    metadata: dict[str, Any]
    num_chunks: int


@dataclass(frozen=True)
class NewDocument:
    id: str
    text: str
    metadata: dict[str, Any]
    chunks: list[str]
    vectors: np.ndarray  # [len(chunks), dimensions] float32


@dataclass(frozen=True)
class ChunkHit:
    chunk_id: int
    document_id: str
    text: str
    metadata: dict[str, Any]


class DocumentStore:
    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=FULL")  # a commit is on disk before we answer 2xx
        self.db.execute("PRAGMA foreign_keys=ON")
        self.db.executescript(SCHEMA)
        self._upgrade()

    def _upgrade(self) -> None:
        """Bring a store written by an older version up to SCHEMA_VERSION, in one transaction: a crash
        halfway leaves the old store as it was, and the next open tries again."""
        if self.db.execute("PRAGMA user_version").fetchone()[0] >= SCHEMA_VERSION:
            return
        with self._transaction():
            for (name,) in self.db.execute("SELECT name FROM collections").fetchall():
                lexical.drop(self.db, name)
                lexical.create(self.db, name)
                lexical.fill(self.db, name)
            self.db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")

    def close(self) -> None:
        self.db.close()

    # -- collections --------------------------------------------------------------------------------

    def create_collection(self, record: CollectionRecord) -> None:
        with self._transaction():
            self.db.execute(
                "INSERT INTO collections VALUES (?, ?, ?, ?, ?, ?, ?)",
                (record.name, record.model, record.index_kind, record.dimensions, record.chunk_tokens,
                 record.overlap_tokens, record.created),
            )  # fmt: skip
            lexical.drop(self.db, record.name)  # a stale table's postings would skew BM25's statistics
            lexical.create(self.db, record.name)

    def collections(self) -> list[CollectionRecord]:
        rows = self.db.execute("SELECT * FROM collections ORDER BY created").fetchall()
        return [CollectionRecord(*row) for row in rows]

    def drop_collection(self, name: str) -> None:
        with self._transaction():
            self.db.execute("DELETE FROM chunks WHERE collection = ?", (name,))
            self.db.execute("DELETE FROM documents WHERE collection = ?", (name,))
            self.db.execute("DELETE FROM collections WHERE name = ?", (name,))
            lexical.drop(self.db, name)

    def count_documents(self, collection: str) -> int:
        return int(
            self.db.execute("SELECT count(*) FROM documents WHERE collection = ?", (collection,)).fetchone()[
                0
            ]
        )

    # -- documents ----------------------------------------------------------------------------------

    def existing_ids(self, collection: str, ids: Sequence[str]) -> set[str]:
        marks = ",".join("?" * len(ids))
        rows = self.db.execute(
            f"SELECT id FROM documents WHERE collection = ? AND id IN ({marks})", (collection, *ids)
        ).fetchall()
        return {r[0] for r in rows}

    def add_documents(self, collection: str, docs: Sequence[NewDocument]) -> list[list[int]]:
        """Insert (or replace) documents with their chunks; returns each document's chunk ids."""
        now = time.time()
        chunk_ids: list[list[int]] = []
        with self._transaction():
            for doc in docs:
                lexical.remove_document(self.db, collection, doc.id)
                self.db.execute(
                    "DELETE FROM chunks WHERE collection = ? AND document_id = ?", (collection, doc.id)
                )
                self.db.execute(
                    "INSERT OR REPLACE INTO documents VALUES (?, ?, ?, ?, ?)",
                    (collection, doc.id, doc.text, json.dumps(doc.metadata), now),
                )
                ids = []
                for seq, (text, vector) in enumerate(zip(doc.chunks, doc.vectors, strict=True)):
                    cur = self.db.execute(
                        "INSERT INTO chunks (collection, document_id, seq, text, vector) "
                        "VALUES (?, ?, ?, ?, ?)",
                        (collection, doc.id, seq, text, np.asarray(vector, dtype="<f4").tobytes()),
                    )
                    ids.append(int(cur.lastrowid or 0))
                lexical.insert(self.db, collection, zip(ids, doc.chunks, strict=True))
                chunk_ids.append(ids)
        return chunk_ids

    def document(self, collection: str, doc_id: str) -> DocumentRecord | None:
        row = self.db.execute(
            "SELECT id, text, metadata FROM documents WHERE collection = ? AND id = ?", (collection, doc_id)
        ).fetchone()
        if row is None:
            return None
        n = self.db.execute(
            "SELECT count(*) FROM chunks WHERE collection = ? AND document_id = ?", (collection, doc_id)
        ).fetchone()[0]
        return DocumentRecord(row[0], row[1], json.loads(row[2]), int(n))

    def set_metadata(self, collection: str, doc_id: str, metadata: Mapping[str, Any]) -> bool:
        """Replace a document's metadata; False if there is no such document."""
        cur = self.db.execute(
            "UPDATE documents SET metadata = ? WHERE collection = ? AND id = ?",
            (json.dumps(dict(metadata)), collection, doc_id),
        )
        return cur.rowcount > 0

    def chunk_ids_of(self, collection: str, doc_id: str) -> list[int]:
        rows = self.db.execute(
            "SELECT id FROM chunks WHERE collection = ? AND document_id = ?", (collection, doc_id)
        ).fetchall()
        return [r[0] for r in rows]

    def delete_document(self, collection: str, doc_id: str) -> list[int]:
        """Delete a document and its chunks; returns the chunk ids removed."""
        with self._transaction():
            ids = self.chunk_ids_of(collection, doc_id)
            lexical.remove_document(self.db, collection, doc_id)
            self.db.execute(
                "DELETE FROM chunks WHERE collection = ? AND document_id = ?", (collection, doc_id)
            )
            self.db.execute("DELETE FROM documents WHERE collection = ? AND id = ?", (collection, doc_id))
        return ids

    # -- chunks ---------------------------------------------------------------------------------------

    def iter_vectors(self, collection: str, batch: int = 4096) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """(ids, vectors) in batches, for rebuilding an index."""
        cur = self.db.execute("SELECT id, vector FROM chunks WHERE collection = ? ORDER BY id", (collection,))
        while rows := cur.fetchmany(batch):
            ids = np.array([r[0] for r in rows], dtype=np.int64)
            vectors = np.stack([np.frombuffer(r[1], dtype="<f4") for r in rows])
            yield ids, vectors

    def chunk_stats(self, collection: str) -> tuple[int, int]:
        """(number of chunks, sum of chunk ids): what a saved index must agree with."""
        count, total = self.db.execute(
            "SELECT count(*), coalesce(sum(id), 0) FROM chunks WHERE collection = ?", (collection,)
        ).fetchone()
        return int(count), int(total)

    def chunks(self, ids: Sequence[int]) -> dict[int, ChunkHit]:
        if not ids:
            return {}
        marks = ",".join("?" * len(ids))
        rows = self.db.execute(
            f"SELECT c.id, c.document_id, c.text, d.metadata FROM chunks c JOIN documents d "
            f"ON d.collection = c.collection AND d.id = c.document_id WHERE c.id IN ({marks})",
            tuple(ids),
        ).fetchall()
        return {r[0]: ChunkHit(r[0], r[1], r[2], json.loads(r[3])) for r in rows}

    def chunk_ids_matching(self, collection: str, where: Filter | Mapping[str, Any]) -> np.ndarray:
        """Chunk ids of the documents whose metadata the filter admits."""
        sql, params = self.matching_sql(collection, where)
        rows = self.db.execute(sql, params).fetchall()
        return np.array([r[0] for r in rows], dtype=np.int64)

    def matching_sql(self, collection: str, where: Filter | Mapping[str, Any]) -> tuple[str, list[Any]]:
        """A query selecting the chunk ids of ``chunk_ids_matching``, with its parameters (to be used
        as a subquery)."""
        f = filters.as_filter(where)
        condition, params = ("1", []) if f is None else filters.to_sql(f, "d.metadata")
        sql = (
            "SELECT c.id FROM chunks c JOIN documents d "
            "ON d.collection = c.collection AND d.id = c.document_id "
            f"WHERE c.collection = ? AND {condition}"
        )
        return sql, [collection, *params]

    def lexical_search(
        self, collection: str, text: str, k: int, where: Filter | Mapping[str, Any] | None = None
    ) -> list[tuple[int, float]]:
        """Top ``k`` (chunk id, BM25 score) of a collection for a text query, best first."""
        allowed = self.matching_sql(collection, where) if where else None
        return lexical.search(self.db, collection, text, k, allowed)

    # -- plumbing ---------------------------------------------------------------------------------------

    def _transaction(self) -> _Transaction:
        return _Transaction(self.db)

    def transaction(self) -> _Transaction:
        """One transaction for writes of other tables kept in this store (files, vector stores)."""
        return _Transaction(self.db)


class _Transaction:
    def __init__(self, db: sqlite3.Connection) -> None:
        self.db = db

    def __enter__(self) -> None:
        self.db.execute("BEGIN IMMEDIATE")

    def __exit__(self, exc_type: object, *_: object) -> None:
        self.db.execute("ROLLBACK" if exc_type else "COMMIT")
