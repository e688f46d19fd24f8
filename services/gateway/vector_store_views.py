"""Records of files and vector stores as OpenAI's objects, request bodies as the store's arguments, and
OpenAI's list objects."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, Generic, NamedTuple, TypeVar

from retrieval.chunking import ChunkingConfig
from retrieval.files import FileRecord
from retrieval.pages import Page
from retrieval.vector_store_records import (
    FileBatchRecord,
    FileCounts,
    VectorStoreFileRecord,
    VectorStoreRecord,
)
from retrieval.vector_store_types import FileAttachment, SearchHit
from services.gateway.vector_store_schemas import (
    ChunkingStrategy,
    ChunkingStrategyOut,
    ExpiresAfter,
    FileBatchObject,
    FileCountsOut,
    FileObject,
    LastError,
    SearchContent,
    SearchResultOut,
    StaticChunking,
    VectorStoreFileObject,
    VectorStoreObject,
)
from shared_engine.errors import InvalidRequest

T = TypeVar("T")
Obj = TypeVar("Obj")
MAX_KEYS, MAX_KEY_CHARS, MAX_VALUE_CHARS = 16, 64, 512


def file_object(r: FileRecord) -> FileObject:
    return FileObject(
        id=r.id,
        bytes=r.bytes,
        created_at=r.created_at,
        filename=r.filename,
        purpose=r.purpose,
        expires_at=r.expires_at,
    )


def _counts(c: FileCounts) -> FileCountsOut:
    return FileCountsOut(c.in_progress, c.completed, c.failed, c.cancelled, c.total)


def vector_store_object(r: VectorStoreRecord) -> VectorStoreObject:
    expires_at = r.expires_at
    if r.expired(time.time()):
        status = "expired"
    else:
        status = "in_progress" if r.file_counts.in_progress else "completed"
    expires = None if r.expires_after_days is None else ExpiresAfter("last_active_at", r.expires_after_days)
    return VectorStoreObject(
        id=r.id, created_at=r.created_at, name=r.name, usage_bytes=r.usage_bytes,
        file_counts=_counts(r.file_counts), status=status, last_active_at=r.last_active_at,
        metadata=r.metadata, expires_after=expires, expires_at=expires_at,
    )  # fmt: skip


def vector_store_file_object(r: VectorStoreFileRecord) -> VectorStoreFileObject:
    error = None if r.error_code is None else LastError(r.error_code, r.error_message or "")
    return VectorStoreFileObject(
        id=r.file_id, created_at=r.created_at, vector_store_id=r.vector_store_id, status=r.status,
        usage_bytes=r.usage_bytes, last_error=error,
        chunking_strategy=ChunkingStrategyOut(static=StaticChunking(r.chunk_tokens, r.overlap_tokens)),
        attributes=r.attributes,
    )  # fmt: skip


def batch_object(r: FileBatchRecord) -> FileBatchObject:
    return FileBatchObject(
        id=r.id, created_at=r.created_at, vector_store_id=r.vector_store_id, status=r.status,
        file_counts=_counts(r.file_counts),
    )  # fmt: skip


def search_result(h: SearchHit) -> SearchResultOut:
    return SearchResultOut(
        h.file_id, h.filename, h.score, h.attributes, [SearchContent(t) for t in h.content]
    )


def chunking(strategy: ChunkingStrategy | None) -> ChunkingConfig | None:
    """The chunking a strategy asks for (None: the vector store's, for "auto" or none given)."""
    if strategy is None or strategy.type == "auto":
        if strategy is not None and strategy.static is not None:
            raise InvalidRequest("an `auto` chunking strategy takes no `static`", param="chunking_strategy")
        return None
    if strategy.static is None:
        raise InvalidRequest("a `static` chunking strategy needs `static`", param="chunking_strategy")
    s = strategy.static
    if s.chunk_overlap_tokens * 2 > s.max_chunk_size_tokens:
        raise InvalidRequest(
            "chunk_overlap_tokens must not exceed half of max_chunk_size_tokens", param="chunking_strategy"
        )
    return ChunkingConfig(s.max_chunk_size_tokens, s.chunk_overlap_tokens)


def check_pairs(pairs: dict[str, Any] | None, param: str) -> dict[str, Any]:
    """OpenAI's limits on metadata and attributes: 16 keys of up to 64 characters, strings of up to 512."""
    pairs = pairs or {}
    if len(pairs) > MAX_KEYS:
        raise InvalidRequest(f"{param} takes at most {MAX_KEYS} keys, got {len(pairs)}", param=param)
    for key, value in pairs.items():
        if not 1 <= len(key) <= MAX_KEY_CHARS:
            raise InvalidRequest(
                f"{param} keys must have 1 to {MAX_KEY_CHARS} characters: {key!r}", param=param
            )
        if isinstance(value, str) and len(value) > MAX_VALUE_CHARS:
            raise InvalidRequest(f"{param}[{key!r}] is longer than {MAX_VALUE_CHARS} characters", param=param)
    return pairs


def attachment(
    file_id: str, attributes: dict[str, Any] | None, strategy: ChunkingStrategy | None
) -> FileAttachment:
    return FileAttachment(file_id, check_pairs(attributes, "attributes"), chunking(strategy))


class CursorPage(NamedTuple, Generic[Obj]):
    """The fields of OpenAI's list objects (``object`` aside)."""

    data: list[Obj]
    has_more: bool
    first_id: str | None
    last_id: str | None


def cursor_page(page: Page[T], id_of: Callable[[T], str], to_object: Callable[[T], Obj]) -> CursorPage[Obj]:
    """A page as objects, with the first and last ids."""
    items = page.items
    first, last = (id_of(items[0]), id_of(items[-1])) if items else (None, None)
    return CursorPage([to_object(i) for i in items], page.has_more, first, last)
