"""Uploaded files (OpenAI's Files API), kept durably beside the document store.

A file's bytes are written to a temporary name, flushed to disk and renamed into place before its row
is committed; the row is what makes it exist. A crash leaves at worst an orphan on disk (removed at the
next open) and never a row without its bytes.
"""

from __future__ import annotations

import hashlib
import os
import sqlite3
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from retrieval.errors import FileNotFound
from shared_engine.errors import InvalidRequest

PURPOSES = ("assistants", "batch", "fine-tune", "vision", "user_data", "evals")
MAX_FILENAME = 255
READ_CHUNK = 1 << 20
SCHEMA = """
CREATE TABLE IF NOT EXISTS files (
    id TEXT PRIMARY KEY,
    filename TEXT NOT NULL,
    purpose TEXT NOT NULL,
    bytes INTEGER NOT NULL,
    sha256 TEXT NOT NULL,
    created REAL NOT NULL
);
"""


@dataclass(frozen=True)
class FileRecord:
    id: str
    filename: str
    purpose: str
    bytes: int
    sha256: str
    created_at: int


def check_upload(filename: str, purpose: str) -> str:
    """The name a file is kept under (its base name); InvalidRequest for a bad name or purpose."""
    if purpose not in PURPOSES:
        raise InvalidRequest(
            f"purpose must be one of {', '.join(PURPOSES)}, got {purpose!r}", param="purpose"
        )
    name = filename.replace("\\", "/").rsplit("/", 1)[-1].strip()
    if not name or len(name) > MAX_FILENAME or any(ord(c) < 32 for c in name):
        raise InvalidRequest(
            f"the file needs a name of 1 to {MAX_FILENAME} printable characters, got {filename!r}",
            param="file",
        )
    return name


class Upload:
    """One file being received: written chunk by chunk, then ``commit``ted (durable) or ``abort``ed."""

    def __init__(self, files: FileStore, filename: str, purpose: str) -> None:
        self.files = files
        self.filename = check_upload(filename, purpose)
        self.purpose = purpose
        self.id = f"file-{uuid.uuid4().hex}"
        self.tmp = files.dir / f".upload-{self.id}"
        self.out: BinaryIO = open(self.tmp, "wb")  # noqa: SIM115  (closed by commit or abort)
        self.hash = hashlib.sha256()
        self.size = 0

    def write(self, data: bytes) -> None:
        self.out.write(data)
        self.hash.update(data)
        self.size += len(data)

    def commit(self) -> FileRecord:
        self.persist()
        return self.register()

    def persist(self) -> None:
        """Put the bytes durably in place (slow disk work, which any thread may do)."""
        self.out.flush()
        os.fsync(self.out.fileno())
        self.out.close()
        os.replace(self.tmp, self.files.path(self.id))
        self.files.sync_dir()

    def register(self) -> FileRecord:
        """Commit the row that makes the persisted bytes a file, on the thread that owns the connection:
        from another one its statements could land inside a transaction of that thread's."""
        record = FileRecord(
            self.id, self.filename, self.purpose, self.size, self.hash.hexdigest(), int(time.time())
        )
        with self.files.db:
            self.files.db.execute(
                "INSERT INTO files VALUES (?, ?, ?, ?, ?, ?)",
                (record.id, record.filename, record.purpose, record.bytes, record.sha256, time.time()),
            )
        return record

    def abort(self) -> None:
        self.out.close()
        self.tmp.unlink(missing_ok=True)


class FileStore:
    def __init__(self, db: sqlite3.Connection, directory: Path) -> None:
        self.db = db
        self.dir = directory
        self.dir.mkdir(parents=True, exist_ok=True)
        self.db.executescript(SCHEMA)
        self._remove_orphans()

    def _remove_orphans(self) -> None:
        """Bytes whose row was never committed (a crash between the two) are not a file."""
        known = {r[0] for r in self.db.execute("SELECT id FROM files")}
        for path in self.dir.iterdir():
            if path.name.startswith(".upload-") or (path.name.startswith("file-") and path.name not in known):
                path.unlink(missing_ok=True)

    def path(self, file_id: str) -> Path:
        return self.dir / file_id

    def sync_dir(self) -> None:
        fd = os.open(self.dir, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def upload(self, filename: str, purpose: str) -> Upload:
        return Upload(self, filename, purpose)

    def save(self, filename: str, purpose: str, data: bytes) -> FileRecord:
        upload = self.upload(filename, purpose)
        try:
            upload.write(data)
            return upload.commit()
        except BaseException:
            upload.abort()
            raise

    def get(self, file_id: str) -> FileRecord:
        row = self.db.execute(
            "SELECT id, filename, purpose, bytes, sha256, created FROM files WHERE id = ?", (file_id,)
        ).fetchone()
        if row is None:
            raise FileNotFound(file_id)
        return FileRecord(row[0], row[1], row[2], row[3], row[4], int(row[5]))

    def list(self, purpose: str | None = None) -> list[FileRecord]:
        """Every file (of one purpose), oldest first."""
        sql = "SELECT id, filename, purpose, bytes, sha256, created FROM files"
        rows = (
            self.db.execute(sql + " WHERE purpose = ? ORDER BY created, id", (purpose,))
            if purpose
            else self.db.execute(sql + " ORDER BY created, id")
        ).fetchall()
        return [FileRecord(r[0], r[1], r[2], r[3], r[4], int(r[5])) for r in rows]

    def read(self, file_id: str) -> bytes:
        self.get(file_id)
        return self.path(file_id).read_bytes()

    def iter_content(self, file_id: str) -> Iterator[bytes]:
        self.get(file_id)
        with open(self.path(file_id), "rb") as f:
            while chunk := f.read(READ_CHUNK):
                yield chunk

    def delete(self, file_id: str) -> None:
        self.get(file_id)
        with self.db:
            self.db.execute("DELETE FROM files WHERE id = ?", (file_id,))
        self.path(file_id).unlink(missing_ok=True)
