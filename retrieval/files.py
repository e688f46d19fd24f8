"""Uploaded files (OpenAI's Files API), kept durably beside the document store.

A file's bytes are written to a temporary name, flushed to disk and renamed into place before its row
is committed; the row is what makes it exist. A crash leaves at worst an orphan on disk (removed at the
next open) and never a row without its bytes. A file uploaded with an expiry is gone once it passes:
never listed or read again; its owner deletes it (``expired`` names those due).
"""

from __future__ import annotations

import hashlib
import os
import sqlite3
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from retrieval.errors import FileNotFound
from retrieval.pages import ALL, Page, PageQuery, Positions
from shared_engine.errors import InvalidRequest

_LIVE = "(expires IS NULL OR expires > ?)"
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
    created REAL NOT NULL,
    expires REAL,
    content_type TEXT
);
"""
COLUMNS = "id, filename, purpose, bytes, sha256, created, expires, content_type"
# Columns a store written by an older version lacks: added (NULL in the rows it has) when it opens.
_ADDED_COLUMNS = {"expires": "REAL", "content_type": "TEXT"}
# OpenAI's bounds on a file's ``expires_after.seconds``: an hour to 30 days after its creation.
MIN_EXPIRY_S, MAX_EXPIRY_S = 3_600, 2_592_000


@dataclass(frozen=True)
class FileRecord:
    id: str
    filename: str
    purpose: str
    bytes: int
    sha256: str
    created_at: int
    expires_at: int | None = None
    content_type: str | None = None  # the media type the upload declared, if any


def check_expiry(anchor: str | None, seconds: int | None) -> int | None:
    """Seconds from a file's creation to its expiry (None: never); InvalidRequest for a bad policy."""
    if anchor is None and seconds is None:
        return None
    if anchor != "created_at":
        raise InvalidRequest(
            f"expires_after[anchor] must be 'created_at', got {anchor!r}", param="expires_after[anchor]"
        )
    if seconds is None or not MIN_EXPIRY_S <= seconds <= MAX_EXPIRY_S:
        raise InvalidRequest(
            f"expires_after[seconds] must be from {MIN_EXPIRY_S} to {MAX_EXPIRY_S}, got {seconds}",
            param="expires_after[seconds]",
        )
    return seconds


def media_type(content_type: str | None) -> str | None:
    """``text/markdown`` of ``Text/Markdown; charset=utf-8``; None for none."""
    return (content_type or "").split(";")[0].strip().lower() or None


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

    def __init__(
        self,
        files: FileStore,
        filename: str,
        purpose: str,
        expires_after_s: int | None,
        content_type: str | None = None,
    ) -> None:
        self.files = files
        self.filename = check_upload(filename, purpose)
        self.purpose = purpose
        self.content_type = media_type(content_type)
        self.expires_after_s = (
            None if expires_after_s is None else check_expiry("created_at", expires_after_s)
        )
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
        created = self.files.clock()
        expires = None if self.expires_after_s is None else created + self.expires_after_s
        row = (self.id, self.filename, self.purpose, self.size, self.hash.hexdigest(), created, expires,
               self.content_type)  # fmt: skip
        with self.files.db:
            self.files.db.execute(f"INSERT INTO files ({COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?)", row)
        return _record(row)

    def abort(self) -> None:
        self.out.close()
        self.tmp.unlink(missing_ok=True)


def _record(row: tuple[Any, ...]) -> FileRecord:
    expires = None if row[6] is None else int(row[6])
    return FileRecord(row[0], row[1], row[2], row[3], row[4], int(row[5]), expires, row[7])


class FileStore:
    def __init__(
        self, db: sqlite3.Connection, directory: Path, clock: Callable[[], float] = time.time
    ) -> None:
        self.db = db
        self.dir = directory
        self.clock = clock
        self.dir.mkdir(parents=True, exist_ok=True)
        self.db.executescript(SCHEMA)
        present = {row[1] for row in self.db.execute("PRAGMA table_info(files)")}
        for column, kind in _ADDED_COLUMNS.items():
            if column not in present:
                with self.db:
                    self.db.execute(f"ALTER TABLE files ADD COLUMN {column} {kind}")
        self.positions = Positions(db, "files", "created, id", "id")
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

    def upload(
        self, filename: str, purpose: str, expires_after_s: int | None = None, content_type: str | None = None
    ) -> Upload:
        return Upload(self, filename, purpose, expires_after_s, content_type)

    def save(self, filename: str, purpose: str, data: bytes) -> FileRecord:
        upload = self.upload(filename, purpose)
        try:
            upload.write(data)
            return upload.commit()
        except BaseException:
            upload.abort()
            raise

    def next_expiry(self) -> float | None:
        """When the next file to expire does (None: no file will)."""
        row = self.db.execute("SELECT MIN(expires) FROM files").fetchone()
        return None if row[0] is None else float(row[0])

    def expired(self) -> list[str]:
        """The files past their expiry, still to be deleted."""
        rows = self.db.execute("SELECT id FROM files WHERE NOT " + _LIVE, (self.clock(),))
        return [r[0] for r in rows]

    def get(self, file_id: str) -> FileRecord:
        row = self.db.execute(
            f"SELECT {COLUMNS} FROM files WHERE id = ? AND {_LIVE}", (file_id, self.clock())
        ).fetchone()
        if row is None:
            raise FileNotFound(file_id)
        return _record(row)

    def list(self, purpose: str | None = None, query: PageQuery = ALL) -> Page[FileRecord]:
        """A page of the files (of one purpose) not expired."""
        where, params = [_LIVE], list[Any]([self.clock()])
        if purpose:
            where, params = [*where, "purpose = ?"], [*params, purpose]
        rows, more = self.positions.page(f"SELECT {COLUMNS} FROM files", where, params, query)
        return Page([_record(r) for r in rows], more)

    def read(self, file_id: str) -> bytes:
        self.get(file_id)
        return self.path(file_id).read_bytes()

    def iter_content(self, file_id: str) -> Iterator[bytes]:
        self.get(file_id)
        with open(self.path(file_id), "rb") as f:
            while chunk := f.read(READ_CHUNK):
                yield chunk

    def delete(self, file_id: str) -> None:
        """Delete a file, expired or not."""
        if self.db.execute("SELECT 1 FROM files WHERE id = ?", (file_id,)).fetchone() is None:
            raise FileNotFound(file_id)
        with self.db:
            self.positions.remember(file_id)
            self.db.execute("DELETE FROM files WHERE id = ?", (file_id,))
        self.path(file_id).unlink(missing_ok=True)
