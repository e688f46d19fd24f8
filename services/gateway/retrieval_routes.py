"""Collections, documents and retrieval queries (thin handlers over retrieval.Collections)."""

from __future__ import annotations

from litestar import Controller, delete, get, post
from litestar.di import NamedDependency
from litestar.openapi import ResponseSpec
from litestar.params import FromPath, JSONBody
from litestar.response import Stream

from pipelines.vision import decode_base64_image
from retrieval.chunking import ChunkingConfig
from retrieval.collections import DocumentInput
from retrieval.fusion import FusionWeights, QueryOptions
from retrieval.search import SearchResult
from services.gateway import rag, reranking
from services.gateway.api_docs import EVENT_STREAM, SERVICE_ERRORS, errors, operation, sse_events
from services.gateway.retrieval_schemas import (
    AddDocumentsRequest,
    AddDocumentsResponse,
    CollectionInfo,
    CollectionList,
    CreateCollectionRequest,
    Deleted,
    DocumentOut,
    PassageOut,
    QueryRequest,
    QueryResponse,
    QueryResult,
    RagRequest,
    RagResponse,
)
from services.gateway.sse import sse_response
from services.registry import ModelRegistry
from services.tasks.collections import CollectionSummary
from shared_engine.errors import InvalidRequest

Registry = NamedDependency[ModelRegistry]

_RAG_OK = "The answer; with `stream: true`, server-sent events"
_RAG_EVENT = "a JSON object (`rag.citations`, `rag.delta`…, `rag.done`), or [DONE]"
_NO_COLLECTION = "Unknown collection (code `collection_not_found`)"
_NO_DOCUMENT = "Unknown collection or document (code `collection_not_found` or `document_not_found`)"


def _info(summary: CollectionSummary) -> CollectionInfo:
    r = summary.record
    return CollectionInfo(
        r.name, r.model, r.index_kind, r.dimensions, r.chunk_tokens, r.overlap_tokens, summary.documents,
        int(r.created),
    )  # fmt: skip


def _image(data: str | None) -> bytes | None:
    return None if data is None else decode_base64_image(data)


def _options(data: QueryRequest) -> QueryOptions:
    w = data.weights
    weights = FusionWeights() if w is None else FusionWeights(w.dense, w.lexical)
    return QueryOptions(data.mode, data.group_by, data.passages, weights)


def _result(hit: SearchResult) -> QueryResult:
    passages = [PassageOut(p.chunk_id, p.text, p.score) for p in hit.passages] or None
    return QueryResult(hit.document_id, hit.chunk_id, hit.text, hit.score, hit.metadata, passages)


class CollectionsController(Controller):
    path = "/v1/collections"
    tags = ["retrieval"]

    @post(
        "/",
        status_code=201,
        summary="Create a collection (embedding model, index kind, chunking)",
        responses=errors(
            400, 404, 409, 413, *SERVICE_ERRORS, e404="Unknown model", e409="The collection already exists"
        ),
    )
    async def create(self, data: JSONBody[CreateCollectionRequest], registry: Registry) -> CollectionInfo:
        try:
            chunking = ChunkingConfig(data.chunk_tokens, data.overlap_tokens)
        except ValueError as exc:
            raise InvalidRequest(str(exc), param="overlap_tokens") from None
        return _info(await registry.collections.create(data.name, data.model, data.index, chunking))

    @get("/", summary="List collections", responses=errors(*SERVICE_ERRORS))
    async def list_all(self, registry: Registry) -> CollectionList:
        return CollectionList([_info(s) for s in await registry.collections.list_all()])

    @get(
        "/{name:str}",
        summary="One collection",
        responses=errors(400, 404, *SERVICE_ERRORS, e404=_NO_COLLECTION),
    )
    async def show(self, name: FromPath[str], registry: Registry) -> CollectionInfo:
        return _info(await registry.collections.show(name))

    @delete(
        "/{name:str}",
        status_code=200,
        summary="Drop a collection with its documents and index",
        responses=errors(400, 404, *SERVICE_ERRORS, e404=_NO_COLLECTION),
    )
    async def drop(self, name: FromPath[str], registry: Registry) -> Deleted:
        await registry.collections.drop(name)
        return Deleted(id=name)

    @post(
        "/{name:str}/documents",
        status_code=200,
        summary="Add documents (durable before the answer)",
        responses=errors(400, 404, 413, *SERVICE_ERRORS, e404=_NO_COLLECTION),
    )
    async def add_documents(
        self, name: FromPath[str], data: JSONBody[AddDocumentsRequest], registry: Registry
    ) -> AddDocumentsResponse:
        docs = [DocumentInput(d.text, d.id, d.metadata, _image(d.image)) for d in data.documents]
        ids, chunks = await registry.collections.add(name, docs)
        return AddDocumentsResponse(ids=ids, chunks=chunks)

    @get(
        "/{name:str}/documents/{doc_id:str}",
        summary="Fetch a document",
        responses=errors(400, 404, *SERVICE_ERRORS, e404=_NO_DOCUMENT),
    )
    async def get_document(
        self, name: FromPath[str], doc_id: FromPath[str], registry: Registry
    ) -> DocumentOut:
        doc = await registry.collections.get(name, doc_id)
        return DocumentOut(doc.id, name, doc.text, doc.metadata, doc.num_chunks)

    @delete(
        "/{name:str}/documents/{doc_id:str}",
        status_code=200,
        summary="Delete a document and its vectors",
        responses=errors(400, 404, *SERVICE_ERRORS, e404=_NO_DOCUMENT),
    )
    async def delete_document(
        self, name: FromPath[str], doc_id: FromPath[str], registry: Registry
    ) -> Deleted:
        await registry.collections.delete(name, doc_id)
        return Deleted(id=doc_id)


class RetrievalController(Controller):
    path = "/v1/retrieval"
    tags = ["retrieval"]

    @post(
        "/query",
        status_code=200,
        summary="Top-k documents (or chunks) for a query: hybrid, dense or lexical; filtered by metadata",
        responses=errors(400, 404, 413, *SERVICE_ERRORS, e404=_NO_COLLECTION),
    )
    async def query(self, data: JSONBody[QueryRequest], registry: Registry) -> QueryResponse:
        options = _options(data)
        reranker = reranking.requested(registry, data.rerank, data.rerank_model, data.image)
        depth = data.top_k if reranker is None else reranking.candidates(data.top_k)
        hits = await registry.collections.query(
            data.collection, data.query, depth, data.filter, _image(data.image), options
        )
        if reranker is not None:
            hits = await reranking.rerank_results(reranker, data.query or "", hits, data.top_k)
        return QueryResponse([_result(h) for h in hits])


class RagController(Controller):
    path = "/v1/rag"
    tags = ["retrieval"]

    @post(
        "/",
        status_code=200,
        summary="Answer from a collection with the chat model, with citations",
        responses={
            200: ResponseSpec(RagResponse, description=_RAG_OK, generate_examples=False),
            **errors(400, 404, 413, *SERVICE_ERRORS, e404="Unknown collection or model"),
        },
        operation_class=operation(success={EVENT_STREAM: sse_events(_RAG_EVENT)}),
    )
    async def answer(self, data: JSONBody[RagRequest], registry: Registry) -> RagResponse | Stream:
        result = await rag.answer(registry, data)
        return result if isinstance(result, RagResponse) else sse_response(result)
