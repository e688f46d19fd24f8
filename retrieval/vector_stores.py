"""OpenAI's Files and Vector Stores over the collections: a vector store is a collection named by its id,
each file attached to it one document (its id the file's id, its metadata the file's attributes).

Attaching a file records it ``in_progress`` (durably) and returns; retrieval.file_processing does the
rest in the background. Work left ``in_progress`` by a crash is picked up again on the next call, so an
acknowledged file is never lost.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import AsyncIterator, Sequence
from typing import Any

from retrieval.chunking import ChunkingConfig
from retrieval.collections import Collections
from retrieval.errors import CollectionNotFound, DocumentNotFound
from retrieval.file_processing import WRITER, FileProcessor, claim_collections
from retrieval.files import FileRecord, FileStore
from retrieval.formats import format_of
from retrieval.pages import ALL, Page, PageQuery
from retrieval.vector_store_records import (
    FileBatchRecord,
    VectorStoreFileRecord,
    VectorStoreRecord,
    VectorStoreRecords,
)
from retrieval.vector_store_search import StoreSearch
from retrieval.vector_store_types import FileAttachment, SearchHit, SearchOptions
from shared_engine.errors import InvalidRequest

CHUNKING_FIELD = "chunking_strategy.static.max_chunk_size_tokens"
EXPIRY_CHECK_S = 60.0  # how often files are checked for expiry at the least

logger = logging.getLogger(__name__)


class VectorStores:
    def __init__(self, collections: Collections, files: FileStore, records: VectorStoreRecords) -> None:
        self.collections = collections
        self.files = files
        self.records = records
        self.processor = FileProcessor(collections, files, records)
        self.expiry_check_s = EXPIRY_CHECK_S
        self._expiry: asyncio.Task[None] | None = None
        self.searcher = StoreSearch(collections, files, records)
        claim_collections(collections, records, self.searcher.check_live)

    @classmethod
    def open(cls, collections: Collections) -> VectorStores:
        db = collections.store.db
        return cls(collections, FileStore(db, collections.dir / "files"), VectorStoreRecords(db))

    # -- files ----------------------------------------------------------------------------------------

    async def upload_file(
        self,
        filename: str,
        purpose: str,
        chunks: AsyncIterator[bytes],
        expires_after_s: int | None = None,
        content_type: str | None = None,
    ) -> FileRecord:
        """Store an uploaded file; durable on return. Files for file search must be in a format whose
        text can be read, by their name's suffix or else the ``content_type`` the upload declared
        (UnsupportedFormat otherwise). With ``expires_after_s``, the file is gone that many seconds
        after its creation."""
        if purpose == "assistants":
            format_of(filename, content_type)
        upload = self.files.upload(filename, purpose, expires_after_s, content_type)
        try:
            async for chunk in chunks:
                upload.write(chunk)
            await asyncio.to_thread(upload.persist)
            return upload.register()
        except BaseException:
            upload.abort()
            raise

    async def list_files(self, purpose: str | None = None, query: PageQuery = ALL) -> Page[FileRecord]:
        return self.files.list(purpose, query)

    async def get_file(self, file_id: str) -> FileRecord:
        return self.files.get(file_id)

    async def file_content(self, file_id: str) -> tuple[FileRecord, AsyncIterator[bytes]]:
        record = self.files.get(file_id)

        async def chunks() -> AsyncIterator[bytes]:
            for chunk in self.files.iter_content(file_id):
                yield chunk

        return record, chunks()

    async def delete_file(self, file_id: str) -> None:
        """Delete a file, detaching it from every vector store that holds it."""
        self.files.get(file_id)
        await self._delete_file(file_id)

    async def delete_expired_files(self) -> None:
        """Delete the files past their expiry (out of sight of the files API from that moment: the files'
        own queries leave them out)."""
        for file_id in self.files.expired():
            await self._delete_file(file_id)

    async def _delete_files_as_they_expire(self) -> None:
        """Delete each file when it expires, so that no route (a collection's documents, retrieval, RAG)
        finds it after: a file expires at least an hour after its upload, so checking at least every
        ``expiry_check_s`` misses none."""
        while True:
            try:
                await self.delete_expired_files()
            except Exception:  # the next check tries again; the store and the service go on
                logger.exception("deleting expired files failed")
            next_at = self.files.next_expiry()
            wait = self.expiry_check_s if next_at is None else next_at - self.files.clock()
            await asyncio.sleep(min(max(wait, 0.01), self.expiry_check_s))

    async def _delete_file(self, file_id: str) -> None:
        for store_id in self.records.stores_holding(file_id):
            await self.detach(store_id, file_id)
        self.files.delete(file_id)

    # -- vector stores ----------------------------------------------------------------------------------

    async def create(
        self,
        name: str,
        metadata: dict[str, str],
        expires_after_days: int | None,
        chunking: ChunkingConfig | None,
        attach: Sequence[FileAttachment] = (),
    ) -> VectorStoreRecord:
        for a in attach:
            self.files.get(a.file_id)
        store_id = f"vs_{uuid.uuid4().hex}"
        if chunking is not None and self.collections.default_model is not None:
            self.collections.check_chunking(self.collections.default_model, chunking, CHUNKING_FIELD)
        self.collections.create(store_id, None, "flat", chunking)
        now = time.time()
        record = VectorStoreRecord(store_id, name, metadata, expires_after_days, int(now), int(now))
        self.records.insert_store(record, now)
        for a in attach:
            self._attach(store_id, a, None)
        self.processor.kick()
        return self.records.store(store_id)

    async def list_stores(self, query: PageQuery = ALL) -> Page[VectorStoreRecord]:
        self.processor.resume_once()
        return self.records.stores(query)

    async def get(self, store_id: str) -> VectorStoreRecord:
        self.processor.resume_once()
        return self.records.store(store_id)

    async def modify(
        self, store_id: str, name: str | None, metadata: dict[str, str] | None, expires: int | bool | None
    ) -> VectorStoreRecord:
        self.records.update_store(store_id, name, metadata, expires)
        if expires is not False:  # a new expiry policy is a use: it counts from now
            self.records.touch(store_id)
        return self.records.store(store_id)

    async def delete(self, store_id: str) -> None:
        self.records.store(store_id)
        with self.collections.store.transaction():
            self.records.delete_store(store_id)
        self.processor.drop_unwanted()
        with contextlib.suppress(CollectionNotFound):
            self.collections.drop(store_id, WRITER)

    # -- files in a vector store --------------------------------------------------------------------------

    async def attach(self, store_id: str, attachment: FileAttachment) -> VectorStoreFileRecord:
        self.records.store(store_id)
        self.files.get(attachment.file_id)
        self._attach(store_id, attachment, None)
        self.processor.kick()
        return self.records.file(store_id, attachment.file_id)

    def _attach(self, store_id: str, a: FileAttachment, batch_id: str | None) -> None:
        record = self.collections.record(store_id)
        chunking = a.chunking or ChunkingConfig(record.chunk_tokens, record.overlap_tokens)
        self.collections.check_chunking(record.model, chunking, CHUNKING_FIELD)
        now = time.time()
        self.records.upsert_file(
            VectorStoreFileRecord(
                store_id, a.file_id, "in_progress", None, None, dict(a.attributes), chunking.chunk_tokens,
                chunking.overlap_tokens, batch_id, 0, int(now),
            ),
            now,
        )  # fmt: skip

    async def list_attached(
        self, store_id: str, status: str | None = None, query: PageQuery = ALL
    ) -> Page[VectorStoreFileRecord]:
        self.records.store(store_id)
        self.processor.resume_once()
        return self.records.files(store_id, status, None, query)

    async def get_attached(self, store_id: str, file_id: str) -> VectorStoreFileRecord:
        self.processor.resume_once()
        return self.records.file(store_id, file_id)

    async def update_attributes(
        self, store_id: str, file_id: str, attributes: dict[str, Any]
    ) -> VectorStoreFileRecord:
        """New attributes for a file, and for filtering its document once it is processed (a file still
        in progress gets them when its processing ends)."""
        with self.collections.store.transaction():
            current = self.records.file(store_id, file_id)
            self.records.set_attributes(store_id, file_id, attributes)
            if current.status == "completed":
                self.collections.set_metadata(store_id, file_id, attributes, WRITER)
        return self.records.file(store_id, file_id)

    async def detach(self, store_id: str, file_id: str) -> None:
        """Remove a file from a vector store (the file itself stays)."""
        self.records.file(store_id, file_id)
        self.records.delete_file(store_id, file_id)
        self.processor.drop_unwanted()
        with contextlib.suppress(DocumentNotFound):  # never processed, or failed
            await self.collections.delete(store_id, file_id, WRITER)

    # -- batches ----------------------------------------------------------------------------------------

    async def create_batch(self, store_id: str, attach: Sequence[FileAttachment]) -> FileBatchRecord:
        self.records.store(store_id)
        if not attach:
            raise InvalidRequest("a file batch needs file_ids or files", param="file_ids")
        for a in attach:
            self.files.get(a.file_id)
        batch_id = f"vsfb_{uuid.uuid4().hex}"
        with self.collections.store.transaction():
            self.records.insert_batch(batch_id, store_id, int(time.time()))
            for a in attach:
                self._attach(store_id, a, batch_id)
        self.processor.kick()
        return self.records.batch(store_id, batch_id)

    async def get_batch(self, store_id: str, batch_id: str) -> FileBatchRecord:
        self.processor.resume_once()
        return self.records.batch(store_id, batch_id)

    async def cancel_batch(self, store_id: str, batch_id: str) -> FileBatchRecord:
        """Cancel the batch's files not yet processed; a finished batch is returned as it is."""
        self.records.batch(store_id, batch_id)
        with self.collections.store.transaction():
            self.records.cancel_batch(store_id, batch_id)
        self.processor.drop_unwanted()
        return self.records.batch(store_id, batch_id)

    async def batch_files(
        self, store_id: str, batch_id: str, status: str | None = None, query: PageQuery = ALL
    ) -> Page[VectorStoreFileRecord]:
        self.records.batch(store_id, batch_id)
        return self.records.files(store_id, status, batch_id, query)

    async def resume(self) -> None:
        """Pick up files left in progress (by a crash or a restart), and delete files as they expire."""
        if self._expiry is None:
            self._expiry = asyncio.get_running_loop().create_task(self._delete_files_as_they_expire())
        self.processor.resume_once()

    def close(self) -> None:
        """Stop processing files and deleting expired ones (before the store closes)."""
        self.processor.stop()
        if self._expiry is not None:
            self._expiry.cancel()

    # -- search -------------------------------------------------------------------------------------------

    async def search(self, store_id: str, queries: Sequence[str], options: SearchOptions) -> list[SearchHit]:
        return await self.searcher.search(store_id, queries, options)
