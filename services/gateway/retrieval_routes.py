"""Collections, documents and retrieval queries (thin handlers over retrieval.Collections)."""

from __future__ import annotations

from litestar import Controller, delete, get, post
from litestar.di import NamedDependency
from litestar.params import FromPath, JSONBody
from litestar.response import Stream

from pipelines.vision import decode_base64_image
from retrieval.chunking import ChunkingConfig
from retrieval.collections import DocumentInput
from services.collections_service import CollectionSummary
from services.gateway import rag
from services.gateway.retrieval_schemas import (
    AddDocumentsRequest,
    AddDocumentsResponse,
    CollectionInfo,
    CollectionList,
    CreateCollectionRequest,
    Deleted,
    DocumentOut,
    QueryRequest,
    QueryResponse,
    QueryResult,
    RagRequest,
    RagResponse,
)
from services.gateway.sse import sse_response
from services.registry import ModelRegistry
from shared_engine.errors import InvalidRequest

Registry = NamedDependency[ModelRegistry]


def _info(summary: CollectionSummary) -> CollectionInfo:
    r = summary.record
    return CollectionInfo(
        r.name, r.model, r.index_kind, r.dimensions, r.chunk_tokens, r.overlap_tokens, summary.documents,
        int(r.created),
    )  # fmt: skip


def _image(data: str | None) -> bytes | None:
    return None if data is None else decode_base64_image(data)


class CollectionsController(Controller):
    path = "/v1/collections"
    tags = ["retrieval"]

    @post("/", status_code=201, summary="Create a collection (embedding model, index kind, chunking)")
    async def create(self, data: JSONBody[CreateCollectionRequest], registry: Registry) -> CollectionInfo:
        try:
            chunking = ChunkingConfig(data.chunk_tokens, data.overlap_tokens)
        except ValueError as exc:
            raise InvalidRequest(str(exc), param="overlap_tokens") from None
        return _info(await registry.collections.create(data.name, data.model, data.index, chunking))

    @get("/", summary="List collections")
    async def list_all(self, registry: Registry) -> CollectionList:
        return CollectionList([_info(s) for s in await registry.collections.list_all()])

    @get("/{name:str}", summary="One collection")
    async def show(self, name: FromPath[str], registry: Registry) -> CollectionInfo:
        return _info(await registry.collections.show(name))

    @delete("/{name:str}", status_code=200, summary="Drop a collection with its documents and index")
    async def drop(self, name: FromPath[str], registry: Registry) -> Deleted:
        await registry.collections.drop(name)
        return Deleted(id=name)

    @post("/{name:str}/documents", status_code=200, summary="Add documents (durable before the answer)")
    async def add_documents(
        self, name: FromPath[str], data: JSONBody[AddDocumentsRequest], registry: Registry
    ) -> AddDocumentsResponse:
        docs = [DocumentInput(d.text, d.id, d.metadata, _image(d.image)) for d in data.documents]
        ids, chunks = await registry.collections.add(name, docs)
        return AddDocumentsResponse(ids=ids, chunks=chunks)

    @get("/{name:str}/documents/{doc_id:str}", summary="Fetch a document")
    async def get_document(
        self, name: FromPath[str], doc_id: FromPath[str], registry: Registry
    ) -> DocumentOut:
        doc = await registry.collections.get(name, doc_id)
        return DocumentOut(doc.id, name, doc.text, doc.metadata, doc.num_chunks)

    @delete(
        "/{name:str}/documents/{doc_id:str}", status_code=200, summary="Delete a document and its vectors"
    )
    async def delete_document(
        self, name: FromPath[str], doc_id: FromPath[str], registry: Registry
    ) -> Deleted:
        await registry.collections.delete(name, doc_id)
        return Deleted(id=doc_id)


class RetrievalController(Controller):
    path = "/v1/retrieval"
    tags = ["retrieval"]

    @post("/query", status_code=200, summary="Top-k chunks for a query, optionally filtered by metadata")
    async def query(self, data: JSONBody[QueryRequest], registry: Registry) -> QueryResponse:
        hits = await registry.collections.query(
            data.collection, data.query, data.top_k, data.filter, _image(data.image)
        )
        return QueryResponse(
            [QueryResult(h.document_id, h.chunk_id, h.text, h.score, h.metadata) for h in hits]
        )


class RagController(Controller):
    path = "/v1/rag"
    tags = ["retrieval"]

    @post("/", status_code=200, summary="Answer from a collection with the chat model, with citations")
    async def answer(self, data: JSONBody[RagRequest], registry: Registry) -> RagResponse | Stream:
        result = await rag.answer(registry, data)
        return result if isinstance(result, RagResponse) else sse_response(result)
