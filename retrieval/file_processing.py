"""Processing the files attached to vector stores, in the background: each file's text is extracted
(retrieval.formats), chunked and embedded into its vector store's collection as one document, and the
attachment marked ``completed``, or ``failed`` with ``last_error`` (the code and message of the error).
A few files are processed at once, so that their chunks share the embedding model's batches; as one ends
the next waiting file starts, and a file no longer wanted (detached, its batch cancelled, its store or
itself deleted) stops at once, its queued chunks dropped."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import Any

from retrieval.chunking import ChunkingConfig
from retrieval.collections import Collections, DocumentInput, Owner
from retrieval.errors import CollectionNotFound, DocumentNotFound, FileNotFound, VectorStoreFileNotFound
from retrieval.files import FileStore
from retrieval.formats import extract_text
from retrieval.vector_store_records import VectorStoreRecords
from shared_engine.errors import InvalidRequest

logger = logging.getLogger(__name__)

PARALLEL_FILES = 4
# How vector stores name themselves to the collections they own.
WRITER = "vector store"


def claim_collections(
    collections: Collections, records: VectorStoreRecords, admit_query: Callable[[str], None] | None = None
) -> None:
    """Leave each collection named by a vector store's id to the vector stores: other writes to it are
    refused (CollectionOwned); each query of one calls ``admit_query`` with its id first, and counts as a
    use of the store once it has answered."""
    collections.claim(Owner(WRITER, "/v1/vector_stores", records.exists, admit_query, records.touch))


class FileProcessor:
    def __init__(self, collections: Collections, files: FileStore, records: VectorStoreRecords) -> None:
        self.collections = collections
        self.files = files
        self.records = records
        self._worker: asyncio.Task[None] | None = None
        self._running: dict[tuple[str, str], asyncio.Task[None]] = {}  # (store, file) -> its processing
        self._attached = asyncio.Event()  # new files wait while the worker runs: look again
        self._resumed = False

    def resume_once(self) -> None:
        """On the first call, pick up files a crash left in progress; later calls cost nothing (every
        attachment since then started processing itself)."""
        if not self._resumed:
            self._resumed = True
            self.kick()

    def kick(self) -> None:
        """Start processing waiting files, if any and not already under way."""
        if self._worker is not None and not self._worker.done():
            self._attached.set()
        elif self.records.pending():
            self._worker = asyncio.get_running_loop().create_task(self._process_pending())

    def stop(self) -> None:
        """Stop processing (before the store closes): a file cut short stays in progress, and is
        processed again when the store is next opened."""
        if self._worker is not None:
            self._worker.cancel()
        for task in self._running.values():
            task.cancel()

    def drop_unwanted(self) -> None:
        """Stop processing the files that are no longer in progress in their store (detached, cancelled,
        deleted): whatever they have not embedded yet is dropped, and nothing of them is written."""
        for (store_id, file_id), task in list(self._running.items()):
            try:
                wanted = self.records.file(store_id, file_id).status == "in_progress"
            except VectorStoreFileNotFound:
                wanted = False
            if not wanted:
                task.cancel()

    async def _process_pending(self) -> None:
        running = self._running
        try:
            loop = asyncio.get_running_loop()
            while True:
                self._attached.clear()
                for key in self.records.pending():
                    if len(running) >= PARALLEL_FILES:
                        break
                    if key not in running:
                        running[key] = loop.create_task(self._process(*key))
                if not running:
                    return
                attached = loop.create_task(self._attached.wait())
                await asyncio.wait([*running.values(), attached], return_when=asyncio.FIRST_COMPLETED)
                attached.cancel()
                for key in [k for k, task in running.items() if task.done()]:
                    del running[key]
        finally:
            for task in running.values():
                task.cancel()
            running.clear()

    async def _process(self, store_id: str, file_id: str) -> None:
        try:
            attached = self.records.file(store_id, file_id)
        except VectorStoreFileNotFound:
            return
        if attached.status != "in_progress":
            return
        chunked = (attached.chunk_tokens, attached.overlap_tokens)  # a re-attachment may chunk otherwise

        def failed(code: str, exc: BaseException) -> None:
            self.records.finish_file(store_id, file_id, "failed", chunked, error=(code, str(exc)))

        try:
            record = self.files.get(file_id)
            data = await asyncio.to_thread(self.files.path(file_id).read_bytes)  # the disk, not the db
            text = await asyncio.to_thread(extract_text, data, record.filename, record.content_type)
            chunking = ChunkingConfig(*chunked)
            document = DocumentInput(text, file_id, dict(attached.attributes))
            _, chunks = await self.collections.add(store_id, [document], chunking, WRITER)
        except (FileNotFound, FileNotFoundError, CollectionNotFound) as exc:
            failed("invalid_file", exc)
        except InvalidRequest as exc:
            failed(getattr(exc, "code", "invalid_file"), exc)
        except Exception as exc:  # the file stays failed; the store and the service go on
            logger.exception("processing %s for vector store %s failed", file_id, store_id)
            failed("server_error", exc)
        else:
            usage = len(text.encode()) + chunks * self.collections.record(store_id).dimensions * 4
            with self.collections.store.transaction():
                finished = self.records.finish_file(store_id, file_id, "completed", chunked, usage)
                if finished:
                    self._take_new_attributes(store_id, file_id, document.metadata)
            if not finished:  # detached, cancelled, or attached again to be chunked otherwise
                await self._forget(store_id, file_id)

    def _take_new_attributes(self, store_id: str, file_id: str, written: dict[str, Any]) -> None:
        """Attributes set while the file was processed replace those its document was written with."""
        latest = self.records.file(store_id, file_id).attributes
        if latest != written:
            self.collections.set_metadata(store_id, file_id, latest, WRITER)

    async def _forget(self, store_id: str, file_id: str) -> None:
        with contextlib.suppress(DocumentNotFound, CollectionNotFound):
            await self.collections.delete(store_id, file_id, WRITER)
