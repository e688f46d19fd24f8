"""Records of files and vector stores as OpenAI's objects, request bodies as the store's arguments, and
OpenAI's cursor pagination of lists."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any, Generic, NamedTuple, TypeVar

from retrieval.chunking import ChunkingConfig
from retrieval.files import FileRecord
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


def cursor_page(
    items: Sequence[T],
    id_of: Callable[[T], str],
    to_object: Callable[[T], Obj],
    limit: int,
    order: str,
    after: str | None,
    before: str | None,
) -> CursorPage[Obj]:
    """One page of ``items`` (see ``paginate``) as objects, with the first and last ids."""
    page, more = paginate(items, id_of, limit, order, after, before)
    first, last = (id_of(page[0]), id_of(page[-1])) if page else (None, None)
    return CursorPage([to_object(i) for i in page], more, first, last)


def paginate(
    items: Sequence[T],
    id_of: Callable[[T], str],
    limit: int,
    order: str,
    after: str | None,
    before: str | None,
) -> tuple[list[T], bool]:
    """One page of a list kept oldest first, in ``order``: the ``limit`` items right after the ``after``
    cursor (or from the top), or, given ``before`` alone, the ``limit`` items right before that cursor;
    and whether more items lie beyond the page in the direction of travel (past its end going forward,
    before its start going back)."""
    ordered = list(items) if order == "asc" else list(reversed(items))
    ids = [id_of(i) for i in ordered]
    start, end = 0, len(ordered)
    if after is not None:
        if after not in ids:
            raise InvalidRequest(f"after: no object {after!r} in this list", param="after")
        start = ids.index(after) + 1
    if before is not None:
        if before not in ids:
            raise InvalidRequest(f"before: no object {before!r} in this list", param="before")
        end = ids.index(before)
        if after is None:
            start = max(0, end - limit)
            return ordered[start:end], start > 0
    page = ordered[start:end][:limit]
    return page, start + len(page) < end
