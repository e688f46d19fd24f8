"""Files and vector stores over gRPC, the retrieval worker's side: the servicer over retrieval.VectorStores,
the object embedded mode uses (the gateway's client is vector_stores_client.py)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import grpc

from retrieval.vector_stores import VectorStores
from services.errors import ServiceUnavailable
from services.rpc import vector_stores_codec as codec
from services.rpc import vector_stores_pb2 as pb
from services.rpc import vector_stores_pb2_grpc
from services.rpc.servicers import answer, answer_stream
from shared_engine.errors import InvalidRequest


class VectorStoresServicer(vector_stores_pb2_grpc.VectorStoresServicer):
    def __init__(self, stores: VectorStores | None = None) -> None:
        self._stores = stores

    @property
    def s(self) -> VectorStores:
        if self._stores is None:  # the worker answers from the start, before its store is open
            raise ServiceUnavailable("the retrieval worker is still loading")
        return self._stores

    def close(self) -> None:
        if self._stores is not None:
            self._stores.close()

    def open(self, stores: VectorStores) -> None:
        self._stores = stores

    async def UploadFile(
        self, request_iterator: AsyncIterator[Any], context: grpc.aio.ServicerContext
    ) -> Any:
        async def data() -> AsyncIterator[bytes]:
            async for message in request_iterator:
                yield message.data

        async def work() -> Any:
            first = await anext(request_iterator, None)
            if first is None or first.WhichOneof("part") != "start":
                raise InvalidRequest("an upload starts with the file's name and purpose", param="file")
            start = first.start
            expires_after_s = codec.optional(start, "expires_after_seconds")
            content_type = codec.optional(start, "content_type")
            record = await self.s.upload_file(
                start.filename, start.purpose, data(), expires_after_s, content_type
            )
            return codec.file_message(record)

        return await answer(context, work())

    async def ListFiles(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        async def work() -> Any:
            purpose = codec.optional(request, "purpose")
            return codec.file_list(await self.s.list_files(purpose, codec.page_query(request)))

        return await answer(context, work())

    async def GetFile(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        async def work() -> Any:
            return codec.file_message(await self.s.get_file(request.file_id))

        return await answer(context, work())

    async def FileContent(self, request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
        async for message in answer_stream(context, self._content(request.file_id)):
            yield message

    async def _content(self, file_id: str) -> AsyncIterator[Any]:
        record, chunks = await self.s.file_content(file_id)
        yield pb.FileContentChunk(file=codec.file_message(record))
        async for chunk in chunks:
            for piece in codec.pieces(chunk):
                yield pb.FileContentChunk(data=piece)

    async def DeleteFile(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        async def work() -> Any:
            await self.s.delete_file(request.file_id)
            return pb.Done()

        return await answer(context, work())

    async def CreateVectorStore(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        async def work() -> Any:
            r = request
            days = codec.optional(r, "expires_after_days")
            metadata = json.loads(r.metadata_json or "{}")
            files = codec.attachments(r.files)
            record = await self.s.create(r.name, metadata, days, codec.chunking_config(r), files)
            return codec.store_message(record)

        return await answer(context, work())

    async def ListVectorStores(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        async def work() -> Any:
            return codec.store_list(await self.s.list_stores(codec.page_query(request)))

        return await answer(context, work())

    async def GetVectorStore(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        async def work() -> Any:
            return codec.store_message(await self.s.get(request.vector_store_id))

        return await answer(context, work())

    async def ModifyVectorStore(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        async def work() -> Any:
            r = request
            metadata = json.loads(r.metadata_json) if r.HasField("metadata_json") else None
            expires = codec.modify_expires(r)
            record = await self.s.modify(r.vector_store_id, codec.optional(r, "name"), metadata, expires)
            return codec.store_message(record)

        return await answer(context, work())

    async def DeleteVectorStore(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        async def work() -> Any:
            await self.s.delete(request.vector_store_id)
            return pb.Done()

        return await answer(context, work())

    async def AttachFile(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        async def work() -> Any:
            record = await self.s.attach(request.vector_store_id, codec.attachment(request.file))
            return codec.attached_message(record)

        return await answer(context, work())

    async def ListAttachedFiles(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        async def work() -> Any:
            status = codec.optional(request, "status")
            page = await self.s.list_attached(request.vector_store_id, status, codec.page_query(request))
            return codec.attached_list(page)

        return await answer(context, work())

    async def GetAttachedFile(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        async def work() -> Any:
            record = await self.s.get_attached(request.vector_store_id, request.file_id)
            return codec.attached_message(record)

        return await answer(context, work())

    async def UpdateAttributes(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        async def work() -> Any:
            attributes = json.loads(request.attributes_json or "{}")
            record = await self.s.update_attributes(request.vector_store_id, request.file_id, attributes)
            return codec.attached_message(record)

        return await answer(context, work())

    async def DetachFile(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        async def work() -> Any:
            await self.s.detach(request.vector_store_id, request.file_id)
            return pb.Done()

        return await answer(context, work())

    async def CreateFileBatch(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        async def work() -> Any:
            files = codec.attachments(request.files)
            return codec.batch_message(await self.s.create_batch(request.vector_store_id, files))

        return await answer(context, work())

    async def GetFileBatch(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        async def work() -> Any:
            return codec.batch_message(await self.s.get_batch(request.vector_store_id, request.batch_id))

        return await answer(context, work())

    async def CancelFileBatch(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        async def work() -> Any:
            return codec.batch_message(await self.s.cancel_batch(request.vector_store_id, request.batch_id))

        return await answer(context, work())

    async def ListFileBatchFiles(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        async def work() -> Any:
            r = request
            status, query = codec.optional(r, "status"), codec.page_query(r)
            return codec.attached_list(await self.s.batch_files(r.vector_store_id, r.batch_id, status, query))

        return await answer(context, work())

    async def Search(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        async def work() -> Any:
            options = codec.search_options(request)
            hits = await self.s.search(request.vector_store_id, list(request.queries), options)
            return codec.search_response(hits)

        return await answer(context, work())
