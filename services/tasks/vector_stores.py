"""Files and vector stores as the gateway sees them: the same awaitable interface over the in-process
store (embedded mode: retrieval.VectorStores itself) and over the retrieval worker (distributed mode)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from typing import Any, Protocol

from retrieval.chunking import ChunkingConfig
from retrieval.files import FileRecord
from retrieval.pages import ALL, Page, PageQuery
from retrieval.vector_store_records import FileBatchRecord, VectorStoreFileRecord, VectorStoreRecord
from retrieval.vector_store_types import FileAttachment, SearchHit, SearchOptions


class VectorStoresAPI(Protocol):
    async def upload_file(
        self,
        filename: str,
        purpose: str,
        chunks: AsyncIterator[bytes],
        expires_after_s: int | None = None,
        content_type: str | None = None,
    ) -> FileRecord: ...

    async def list_files(self, purpose: str | None = None, query: PageQuery = ALL) -> Page[FileRecord]: ...

    async def get_file(self, file_id: str) -> FileRecord: ...

    async def file_content(self, file_id: str) -> tuple[FileRecord, AsyncIterator[bytes]]: ...

    async def delete_file(self, file_id: str) -> None: ...

    async def create(
        self,
        name: str,
        metadata: dict[str, str],
        expires_after_days: int | None,
        chunking: ChunkingConfig | None,
        attach: Sequence[FileAttachment] = (),
    ) -> VectorStoreRecord: ...

    async def list_stores(self, query: PageQuery = ALL) -> Page[VectorStoreRecord]: ...

    async def get(self, store_id: str) -> VectorStoreRecord: ...

    async def modify(
        self, store_id: str, name: str | None, metadata: dict[str, str] | None, expires: int | bool | None
    ) -> VectorStoreRecord: ...

    async def delete(self, store_id: str) -> None: ...

    async def attach(self, store_id: str, attachment: FileAttachment) -> VectorStoreFileRecord: ...

    async def list_attached(
        self, store_id: str, status: str | None = None, query: PageQuery = ALL
    ) -> Page[VectorStoreFileRecord]: ...

    async def get_attached(self, store_id: str, file_id: str) -> VectorStoreFileRecord: ...

    async def update_attributes(
        self, store_id: str, file_id: str, attributes: dict[str, Any]
    ) -> VectorStoreFileRecord: ...

    async def detach(self, store_id: str, file_id: str) -> None: ...

    async def create_batch(self, store_id: str, attach: Sequence[FileAttachment]) -> FileBatchRecord: ...

    async def get_batch(self, store_id: str, batch_id: str) -> FileBatchRecord: ...

    async def cancel_batch(self, store_id: str, batch_id: str) -> FileBatchRecord: ...

    async def batch_files(
        self, store_id: str, batch_id: str, status: str | None = None, query: PageQuery = ALL
    ) -> Page[VectorStoreFileRecord]: ...

    async def search(
        self, store_id: str, queries: Sequence[str], options: SearchOptions
    ) -> list[SearchHit]: ...
