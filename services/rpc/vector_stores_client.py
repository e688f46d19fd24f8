"""Files and vector stores from the gateway's side: VectorStoresAPI answered by the retrieval worker over
gRPC (vector_stores_rpc.py serves it there)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Sequence
from typing import Any

from retrieval.chunking import ChunkingConfig
from retrieval.files import FileRecord
from retrieval.pages import ALL, Page, PageQuery
from retrieval.vector_store_records import FileBatchRecord, VectorStoreFileRecord, VectorStoreRecord
from retrieval.vector_store_types import FileAttachment, SearchHit, SearchOptions
from services.rpc import vector_stores_codec as codec
from services.rpc import vector_stores_pb2 as pb
from services.rpc import vector_stores_pb2_grpc
from services.rpc.channels import Channels
from services.rpc.timing import timed


class RemoteVectorStores:
    """VectorStoresAPI answered by the retrieval worker."""

    def __init__(self, channels: Channels) -> None:
        self.channels = channels
        self.stub = timed(vector_stores_pb2_grpc.VectorStoresStub)

    async def _call(self, method: str, request: Any) -> Any:
        return await self.channels.call(self.stub, method, request)

    async def upload_file(
        self,
        filename: str,
        purpose: str,
        chunks: AsyncIterator[bytes],
        expires_after_s: int | None = None,
        content_type: str | None = None,
    ) -> FileRecord:
        failed: list[BaseException] = []

        async def requests() -> AsyncIterator[Any]:
            start = pb.UploadStart(
                filename=filename,
                purpose=purpose,
                expires_after_seconds=expires_after_s,
                content_type=content_type,
            )
            yield pb.UploadFileRequest(start=start)
            try:
                async for chunk in chunks:
                    for piece in codec.pieces(chunk):
                        yield pb.UploadFileRequest(data=piece)
            except Exception as exc:  # gRPC would only cancel the call: raised below instead
                failed.append(exc)
                raise

        try:
            return codec.file_record(await self.channels.send_stream(self.stub, "UploadFile", requests()))
        except (Exception, asyncio.CancelledError):
            if failed:
                raise failed[0] from None
            raise

    async def list_files(self, purpose: str | None = None, query: PageQuery = ALL) -> Page[FileRecord]:
        request = pb.ListFilesRequest(purpose=purpose, page=codec.page_message(query))
        reply = await self._call("ListFiles", request)
        return Page([codec.file_record(m) for m in reply.files], reply.has_more)

    async def get_file(self, file_id: str) -> FileRecord:
        return codec.file_record(await self._call("GetFile", pb.FileRef(file_id=file_id)))

    async def file_content(self, file_id: str) -> tuple[FileRecord, AsyncIterator[bytes]]:
        """The file, once the worker has found it (or its error), and its bytes as they arrive."""
        stub = vector_stores_pb2_grpc.VectorStoresStub
        stream = self.channels.stream(stub, "FileContent", pb.FileRef(file_id=file_id))
        first = await anext(stream)

        async def data() -> AsyncIterator[bytes]:
            try:
                async for message in stream:
                    yield message.data
            finally:
                await stream.aclose()

        return codec.file_record(first.file), data()

    async def delete_file(self, file_id: str) -> None:
        await self._call("DeleteFile", pb.FileRef(file_id=file_id))

    async def create(
        self,
        name: str,
        metadata: dict[str, str],
        expires_after_days: int | None,
        chunking: ChunkingConfig | None,
        attach: Sequence[FileAttachment] = (),
    ) -> VectorStoreRecord:
        request = pb.CreateVectorStoreRequest(
            name=name, metadata_json=json.dumps(metadata), expires_after_days=expires_after_days,
            chunking=codec.chunking_message(chunking), files=[codec.attachment_message(a) for a in attach],
        )  # fmt: skip
        return codec.store_record(await self._call("CreateVectorStore", request))

    async def list_stores(self, query: PageQuery = ALL) -> Page[VectorStoreRecord]:
        request = pb.ListVectorStoresRequest(page=codec.page_message(query))
        reply = await self._call("ListVectorStores", request)
        return Page([codec.store_record(m) for m in reply.vector_stores], reply.has_more)

    async def get(self, store_id: str) -> VectorStoreRecord:
        reply = await self._call("GetVectorStore", pb.VectorStoreRef(vector_store_id=store_id))
        return codec.store_record(reply)

    async def modify(
        self, store_id: str, name: str | None, metadata: dict[str, str] | None, expires: int | bool | None
    ) -> VectorStoreRecord:
        request = codec.modify_request(store_id, name, metadata, expires)
        return codec.store_record(await self._call("ModifyVectorStore", request))

    async def delete(self, store_id: str) -> None:
        await self._call("DeleteVectorStore", pb.VectorStoreRef(vector_store_id=store_id))

    async def attach(self, store_id: str, attachment: FileAttachment) -> VectorStoreFileRecord:
        request = pb.AttachFileRequest(vector_store_id=store_id, file=codec.attachment_message(attachment))
        return codec.attached_record(await self._call("AttachFile", request))

    async def list_attached(
        self, store_id: str, status: str | None = None, query: PageQuery = ALL
    ) -> Page[VectorStoreFileRecord]:
        page = codec.page_message(query)
        request = pb.ListAttachedFilesRequest(vector_store_id=store_id, status=status, page=page)
        return codec.attached_page(await self._call("ListAttachedFiles", request))

    async def get_attached(self, store_id: str, file_id: str) -> VectorStoreFileRecord:
        request = pb.AttachedFileRef(vector_store_id=store_id, file_id=file_id)
        return codec.attached_record(await self._call("GetAttachedFile", request))

    async def update_attributes(
        self, store_id: str, file_id: str, attributes: dict[str, Any]
    ) -> VectorStoreFileRecord:
        request = pb.UpdateAttributesRequest(
            vector_store_id=store_id, file_id=file_id, attributes_json=json.dumps(attributes)
        )
        return codec.attached_record(await self._call("UpdateAttributes", request))

    async def detach(self, store_id: str, file_id: str) -> None:
        await self._call("DetachFile", pb.AttachedFileRef(vector_store_id=store_id, file_id=file_id))

    async def create_batch(self, store_id: str, attach: Sequence[FileAttachment]) -> FileBatchRecord:
        files = [codec.attachment_message(a) for a in attach]
        request = pb.CreateFileBatchRequest(vector_store_id=store_id, files=files)
        return codec.batch_record(await self._call("CreateFileBatch", request))

    async def get_batch(self, store_id: str, batch_id: str) -> FileBatchRecord:
        request = pb.FileBatchRef(vector_store_id=store_id, batch_id=batch_id)
        return codec.batch_record(await self._call("GetFileBatch", request))

    async def cancel_batch(self, store_id: str, batch_id: str) -> FileBatchRecord:
        request = pb.FileBatchRef(vector_store_id=store_id, batch_id=batch_id)
        return codec.batch_record(await self._call("CancelFileBatch", request))

    async def batch_files(
        self, store_id: str, batch_id: str, status: str | None = None, query: PageQuery = ALL
    ) -> Page[VectorStoreFileRecord]:
        request = pb.ListFileBatchFilesRequest(
            vector_store_id=store_id, batch_id=batch_id, status=status, page=codec.page_message(query)
        )
        return codec.attached_page(await self._call("ListFileBatchFiles", request))

    async def search(self, store_id: str, queries: Sequence[str], options: SearchOptions) -> list[SearchHit]:
        reply = await self._call("Search", codec.search_request(store_id, queries, options))
        return [codec.search_hit(m) for m in reply.hits]
