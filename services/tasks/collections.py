"""Collections as the gateway sees them: every operation awaitable, so the same routes and RAG flow
serve an in-process store (embedded mode) or the retrieval worker over gRPC (distributed mode)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from retrieval.chunking import ChunkingConfig
from retrieval.collections import Collections, DocumentInput, SearchResult
from retrieval.filters import Filter
from retrieval.fusion import QueryOptions
from retrieval.store import CollectionRecord, DocumentRecord


@dataclass(frozen=True)
class CollectionSummary:
    record: CollectionRecord
    documents: int


class CollectionsAPI(Protocol):
    async def create(
        self, name: str, model: str | None, index_kind: str, chunking: ChunkingConfig
    ) -> CollectionSummary: ...

    async def list_all(self) -> list[CollectionSummary]: ...

    async def show(self, name: str) -> CollectionSummary: ...

    async def drop(self, name: str) -> None: ...

    async def add(self, name: str, docs: Sequence[DocumentInput]) -> tuple[list[str], int]: ...

    async def get(self, name: str, doc_id: str) -> DocumentRecord: ...

    async def delete(self, name: str, doc_id: str) -> None: ...

    async def query(
        self,
        name: str,
        text: str | None,
        top_k: int,
        where: dict[str, Any] | Filter | None = None,
        image: bytes | None = None,
        options: QueryOptions | None = None,
    ) -> list[SearchResult]: ...

    def close(self) -> None: ...


class LocalCollections:
    """The in-process store behind the async interface (the retrieval worker serves this too)."""

    def __init__(self, collections: Collections) -> None:
        self.collections = collections

    def _summary(self, record: CollectionRecord) -> CollectionSummary:
        return CollectionSummary(record, self.collections.store.count_documents(record.name))

    async def create(
        self, name: str, model: str | None, index_kind: str, chunking: ChunkingConfig
    ) -> CollectionSummary:
        return self._summary(self.collections.create(name, model, index_kind, chunking))

    async def list_all(self) -> list[CollectionSummary]:
        return [self._summary(r) for r in self.collections.records()]

    async def show(self, name: str) -> CollectionSummary:
        return self._summary(self.collections.record(name))

    async def drop(self, name: str) -> None:
        self.collections.drop(name)

    async def add(self, name: str, docs: Sequence[DocumentInput]) -> tuple[list[str], int]:
        return await self.collections.add(name, docs)

    async def get(self, name: str, doc_id: str) -> DocumentRecord:
        return self.collections.get(name, doc_id)

    async def delete(self, name: str, doc_id: str) -> None:
        await self.collections.delete(name, doc_id)

    async def query(
        self,
        name: str,
        text: str | None,
        top_k: int,
        where: dict[str, Any] | Filter | None = None,
        image: bytes | None = None,
        options: QueryOptions | None = None,
    ) -> list[SearchResult]:
        return await self.collections.query(name, text, top_k, where, image, options)

    def close(self) -> None:
        self.collections.close()
