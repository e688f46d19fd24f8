"""Files and vector stores' records ↔ vector_stores.proto's messages (both directions, both sides)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from retrieval.chunking import ChunkingConfig
from retrieval.files import FileRecord
from retrieval.filters import parse_filter, to_json
from retrieval.pages import Page, PageQuery
from retrieval.vector_store_records import (
    FileBatchRecord,
    FileCounts,
    VectorStoreFileRecord,
    VectorStoreRecord,
)
from retrieval.vector_store_types import FileAttachment, SearchHit, SearchOptions
from services.rpc import vector_stores_pb2 as pb

Expiry = pb.ModifyVectorStoreRequest.Expiry
CHUNK_BYTES = 1 << 20  # a file's bytes per message, far below gRPC's 4 MiB default


def pieces(data: bytes) -> list[bytes]:
    """``data`` in messages' worth."""
    return [data[at : at + CHUNK_BYTES] for at in range(0, len(data), CHUNK_BYTES)]


def _json(text: str) -> Any:
    return json.loads(text) if text else {}


def optional(message: Any, name: str) -> Any:
    """An optional field's value, None when absent."""
    return getattr(message, name) if message.HasField(name) else None


def file_message(r: FileRecord) -> Any:
    return pb.File(
        id=r.id,
        filename=r.filename,
        purpose=r.purpose,
        bytes=r.bytes,
        sha256=r.sha256,
        created_at=r.created_at,
        expires_at=r.expires_at,
        content_type=r.content_type,
    )


def file_record(m: Any) -> FileRecord:
    return FileRecord(
        m.id, m.filename, m.purpose, m.bytes, m.sha256, m.created_at, optional(m, "expires_at"),
        optional(m, "content_type"),
    )  # fmt: skip


def chunking_message(c: ChunkingConfig | None) -> Any:
    return None if c is None else pb.Chunking(chunk_tokens=c.chunk_tokens, overlap_tokens=c.overlap_tokens)


def chunking_config(message: Any, field: str = "chunking") -> ChunkingConfig | None:
    if not message.HasField(field):
        return None
    c = getattr(message, field)
    return ChunkingConfig(c.chunk_tokens, c.overlap_tokens)


def attachment_message(a: FileAttachment) -> Any:
    return pb.FileAttachment(
        file_id=a.file_id, attributes_json=json.dumps(a.attributes), chunking=chunking_message(a.chunking)
    )


def attachment(m: Any) -> FileAttachment:
    return FileAttachment(m.file_id, _json(m.attributes_json), chunking_config(m))


def attachments(messages: Sequence[Any]) -> list[FileAttachment]:
    return [attachment(m) for m in messages]


def _counts_message(c: FileCounts) -> Any:
    return pb.FileCounts(
        in_progress=c.in_progress, completed=c.completed, failed=c.failed, cancelled=c.cancelled
    )


def _counts(m: Any) -> FileCounts:
    return FileCounts(m.in_progress, m.completed, m.failed, m.cancelled)


def store_message(r: VectorStoreRecord) -> Any:
    return pb.VectorStore(
        id=r.id, name=r.name, metadata_json=json.dumps(r.metadata), expires_after_days=r.expires_after_days,
        created_at=r.created_at, last_active_at=r.last_active_at, usage_bytes=r.usage_bytes,
        file_counts=_counts_message(r.file_counts),
    )  # fmt: skip


def store_record(m: Any) -> VectorStoreRecord:
    return VectorStoreRecord(
        m.id, m.name, _json(m.metadata_json), optional(m, "expires_after_days"), m.created_at,
        m.last_active_at, m.usage_bytes, _counts(m.file_counts),
    )  # fmt: skip


def modify_request(
    store_id: str, name: str | None, metadata: dict[str, str] | None, expires: int | bool | None
) -> Any:
    """``expires``: days, None to clear, False to leave as it is (True is no number of days)."""
    request = pb.ModifyVectorStoreRequest(
        vector_store_id=store_id, name=name, metadata_json=None if metadata is None else json.dumps(metadata)
    )
    if expires is None:
        request.expiry = Expiry.EXPIRY_CLEARED
    elif not isinstance(expires, bool):
        request.expiry, request.expires_after_days = Expiry.EXPIRY_SET, expires
    return request


def modify_expires(m: Any) -> int | bool | None:
    """``modify``'s ``expires`` from a ModifyVectorStoreRequest."""
    if m.expiry == Expiry.EXPIRY_SET:
        return int(m.expires_after_days)
    return None if m.expiry == Expiry.EXPIRY_CLEARED else False


def attached_message(r: VectorStoreFileRecord) -> Any:
    return pb.VectorStoreFile(
        vector_store_id=r.vector_store_id, file_id=r.file_id, status=r.status, error_code=r.error_code,
        error_message=r.error_message, attributes_json=json.dumps(r.attributes), chunk_tokens=r.chunk_tokens,
        overlap_tokens=r.overlap_tokens, batch_id=r.batch_id, usage_bytes=r.usage_bytes,
        created_at=r.created_at,
    )  # fmt: skip


def attached_record(m: Any) -> VectorStoreFileRecord:
    return VectorStoreFileRecord(
        m.vector_store_id, m.file_id, m.status, optional(m, "error_code"), optional(m, "error_message"),
        _json(m.attributes_json), m.chunk_tokens, m.overlap_tokens, optional(m, "batch_id"), m.usage_bytes,
        m.created_at,
    )  # fmt: skip


def attached_list(page: Page[VectorStoreFileRecord]) -> Any:
    return pb.VectorStoreFileList(files=[attached_message(r) for r in page.items], has_more=page.has_more)


def attached_page(m: Any) -> Page[VectorStoreFileRecord]:
    return Page([attached_record(f) for f in m.files], m.has_more)


def batch_message(r: FileBatchRecord) -> Any:
    return pb.FileBatch(
        id=r.id, vector_store_id=r.vector_store_id, cancelled=r.cancelled, created_at=r.created_at,
        file_counts=_counts_message(r.file_counts),
    )  # fmt: skip


def batch_record(m: Any) -> FileBatchRecord:
    return FileBatchRecord(m.id, m.vector_store_id, m.cancelled, m.created_at, _counts(m.file_counts))


def search_request(store_id: str, queries: Sequence[str], o: SearchOptions) -> Any:
    filters = None if o.filters is None else json.dumps(to_json(o.filters))
    return pb.SearchRequest(
        vector_store_id=store_id, queries=list(queries), max_num_results=o.max_num_results,
        filters_json=filters, ranker=o.ranker, score_threshold=o.score_threshold,
    )  # fmt: skip


def search_options(m: Any) -> SearchOptions:
    filters = parse_filter(json.loads(m.filters_json)) if m.HasField("filters_json") else None
    return SearchOptions(m.max_num_results, filters, m.ranker, m.score_threshold)


def hit_message(h: SearchHit) -> Any:
    return pb.SearchHit(
        file_id=h.file_id, filename=h.filename, score=h.score, attributes_json=json.dumps(h.attributes),
        content=list(h.content),
    )  # fmt: skip


def search_hit(m: Any) -> SearchHit:
    return SearchHit(m.file_id, m.filename, m.score, _json(m.attributes_json), tuple(m.content))


def done(_: None) -> Any:
    return pb.Done()


def page_message(q: PageQuery) -> Any:
    return pb.PageRequest(limit=q.limit, order=q.order, after=q.after, before=q.before)


def page_query(m: Any) -> PageQuery:
    p = m.page
    return PageQuery(optional(p, "limit"), p.order or "asc", optional(p, "after"), optional(p, "before"))


def file_list(page: Page[FileRecord]) -> Any:
    return pb.FileList(files=[file_message(r) for r in page.items], has_more=page.has_more)


def store_list(page: Page[VectorStoreRecord]) -> Any:
    return pb.VectorStoreList(vector_stores=[store_message(r) for r in page.items], has_more=page.has_more)


def search_response(hits: list[SearchHit]) -> Any:
    return pb.SearchResponse(hits=[hit_message(h) for h in hits])
