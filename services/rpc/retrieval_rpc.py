"""Collections over gRPC: the retrieval worker's servicer (over LocalCollections, the object embedded
mode uses) and the gateway's client (the same async interface, CollectionsAPI)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import grpc

from retrieval.chunking import ChunkingConfig
from retrieval.collections import DocumentInput
from retrieval.filters import Filter, parse_filter, to_json
from retrieval.fusion import FusionWeights, QueryOptions
from retrieval.search import Passage, SearchResult
from retrieval.store import CollectionRecord, DocumentRecord
from services.errors import ServiceUnavailable
from services.rpc import retrieval_pb2 as pb
from services.rpc import retrieval_pb2_grpc
from services.rpc.channels import Channels
from services.rpc.servicers import answer
from services.rpc.timing import timed
from services.tasks.collections import CollectionSummary, LocalCollections


def _collection(s: CollectionSummary) -> Any:
    r = s.record
    return pb.Collection(
        name=r.name, model=r.model, index=r.index_kind, dimensions=r.dimensions, chunk_tokens=r.chunk_tokens,
        overlap_tokens=r.overlap_tokens, created=r.created, documents=s.documents,
    )  # fmt: skip


def _hit(h: SearchResult) -> Any:
    return pb.Hit(
        document_id=h.document_id, chunk_id=h.chunk_id, text=h.text, score=h.score,
        metadata_json=json.dumps(h.metadata),
        passages=[pb.Passage(chunk_id=p.chunk_id, text=p.text, score=p.score) for p in h.passages],
    )  # fmt: skip


def _search_result(h: Any) -> SearchResult:
    passages = tuple(Passage(p.chunk_id, p.text, p.score) for p in h.passages)
    metadata = json.loads(h.metadata_json or "{}")
    return SearchResult(h.document_id, h.chunk_id, h.text, h.score, metadata, passages)


def query_options(request: Any) -> QueryOptions:
    """The query's options. A gateway older than these fields sends none of them (proto3 zeros): it gets
    what it knew, dense ranking of single chunks."""
    if request.dense_weight == 0 and request.lexical_weight == 0:
        weights = FusionWeights()
    else:
        weights = FusionWeights(request.dense_weight, request.lexical_weight)
    return QueryOptions(request.mode or "dense", request.group_by or "chunk", request.passages or 3, weights)


def _summary(m: Any) -> CollectionSummary:
    record = CollectionRecord(
        m.name, m.model, m.index, m.dimensions, m.chunk_tokens, m.overlap_tokens, m.created
    )
    return CollectionSummary(record, m.documents)


class RetrievalServicer(retrieval_pb2_grpc.RetrievalServicer):
    def __init__(self, collections: LocalCollections | None = None) -> None:
        self._collections = collections

    @property
    def c(self) -> LocalCollections:
        if self._collections is None:  # the worker answers from the start, before its store is open
            raise ServiceUnavailable("the retrieval worker is still loading")
        return self._collections

    def open(self, collections: LocalCollections) -> None:
        self._collections = collections

    def close(self) -> None:
        if self._collections is not None:
            self._collections.close()

    async def CreateCollection(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        async def work() -> Any:
            chunking = ChunkingConfig(request.chunk_tokens, request.overlap_tokens)
            model = request.model if request.HasField("model") else None
            return _collection(await self.c.create(request.name, model, request.index, chunking))

        return await answer(context, work())

    async def ListCollections(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        async def work() -> Any:
            return pb.CollectionList(collections=[_collection(s) for s in await self.c.list_all()])

        return await answer(context, work())

    async def GetCollection(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        async def work() -> Any:
            return _collection(await self.c.show(request.name))

        return await answer(context, work())

    async def DropCollection(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        async def work() -> Any:
            await self.c.drop(request.name)
            return pb.Done()

        return await answer(context, work())

    async def AddDocuments(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        async def work() -> Any:
            docs = [
                DocumentInput(
                    d.text, d.id if d.HasField("id") else None, json.loads(d.metadata_json or "{}"),
                    d.image if d.HasField("image") else None,
                )
                for d in request.documents
            ]  # fmt: skip
            ids, chunks = await self.c.add(request.collection, docs)
            return pb.AddDocumentsResponse(ids=ids, chunks=chunks)

        return await answer(context, work())

    async def GetDocument(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        async def work() -> Any:
            d = await self.c.get(request.collection, request.id)
            return pb.Document(
                id=d.id, text=d.text, metadata_json=json.dumps(d.metadata), chunks=d.num_chunks
            )

        return await answer(context, work())

    async def DeleteDocument(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        async def work() -> Any:
            await self.c.delete(request.collection, request.id)
            return pb.Done()

        return await answer(context, work())

    async def Query(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        async def work() -> Any:
            where: dict[str, Any] | Filter | None = None
            if request.HasField("filters_json"):
                where = parse_filter(json.loads(request.filters_json))
            elif request.HasField("filter_json"):
                where = json.loads(request.filter_json)
            text = request.text if request.HasField("text") else None
            image = request.image if request.HasField("image") else None
            options = query_options(request)
            hits = await self.c.query(request.collection, text, request.top_k, where, image, options)
            return pb.QueryResponse(hits=[_hit(h) for h in hits])

        return await answer(context, work())


class RemoteCollections:
    """CollectionsAPI answered by the retrieval worker."""

    def __init__(self, channels: Channels) -> None:
        self.channels = channels

    async def _call(self, method: str, request: Any) -> Any:
        return await self.channels.call(timed(retrieval_pb2_grpc.RetrievalStub), method, request)

    async def create(
        self, name: str, model: str | None, index_kind: str, chunking: ChunkingConfig
    ) -> CollectionSummary:
        request = pb.CreateCollectionRequest(
            name=name, model=model, index=index_kind, chunk_tokens=chunking.chunk_tokens,
            overlap_tokens=chunking.overlap_tokens,
        )  # fmt: skip
        return _summary(await self._call("CreateCollection", request))

    async def list_all(self) -> list[CollectionSummary]:
        reply = await self._call("ListCollections", pb.ListCollectionsRequest())
        return [_summary(c) for c in reply.collections]

    async def show(self, name: str) -> CollectionSummary:
        return _summary(await self._call("GetCollection", pb.CollectionRef(name=name)))

    async def drop(self, name: str) -> None:
        await self._call("DropCollection", pb.CollectionRef(name=name))

    async def add(self, name: str, docs: Sequence[DocumentInput]) -> tuple[list[str], int]:
        request = pb.AddDocumentsRequest(
            collection=name,
            documents=[
                pb.DocumentIn(id=d.id, text=d.text, metadata_json=json.dumps(d.metadata), image=d.image)
                for d in docs
            ],
        )
        reply = await self._call("AddDocuments", request)
        return list(reply.ids), int(reply.chunks)

    async def get(self, name: str, doc_id: str) -> DocumentRecord:
        d = await self._call("GetDocument", pb.DocumentRef(collection=name, id=doc_id))
        return DocumentRecord(d.id, d.text, json.loads(d.metadata_json or "{}"), d.chunks)

    async def delete(self, name: str, doc_id: str) -> None:
        await self._call("DeleteDocument", pb.DocumentRef(collection=name, id=doc_id))

    async def query(
        self,
        name: str,
        text: str | None,
        top_k: int,
        where: dict[str, Any] | Filter | None = None,
        image: bytes | None = None,
        options: QueryOptions | None = None,
    ) -> list[SearchResult]:
        o = options or QueryOptions()
        request = pb.QueryRequest(
            collection=name, text=text, image=image, top_k=top_k, mode=o.mode, group_by=o.group_by,
            passages=o.passages, dense_weight=o.weights.dense, lexical_weight=o.weights.lexical,
        )  # fmt: skip
        if isinstance(where, dict):
            request.filter_json = json.dumps(where)
        elif where is not None:
            request.filters_json = json.dumps(to_json(where))
        reply = await self._call("Query", request)
        return [_search_result(h) for h in reply.hits]

    def close(self) -> None:
        """Channels close with the event loop that owns them."""
