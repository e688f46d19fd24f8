"""OpenAI's Files API: upload (multipart), list, retrieve, content, delete (thin handlers over the store)."""

from __future__ import annotations

import mimetypes
from collections.abc import AsyncIterator
from typing import Annotated

from litestar import Controller, delete, get, post
from litestar.datastructures import UploadFile
from litestar.di import NamedDependency
from litestar.enums import RequestEncodingType
from litestar.params import Body, FromPath, FromQuery, Parameter
from litestar.response import Stream

from retrieval.files import check_expiry
from retrieval.pages import PageQuery
from services.gateway.api_docs import SERVICE_ERRORS, errors
from services.gateway.vector_store_schemas import FileDeleted, FileList, FileObject, FileUploadForm, Order
from services.gateway.vector_store_views import cursor_page, file_object
from services.registry import ModelRegistry

Registry = NamedDependency[ModelRegistry]
Multipart = Body(media_type=RequestEncodingType.MULTI_PART)
UPLOAD_CHUNK = 1 << 20
_NO_FILE = "Unknown file (code `file_not_found`)"


def _declared_type(upload: UploadFile) -> str | None:
    """The file part's own Content-Type (``upload.content_type`` says text/plain when it has none)."""
    return next((v for k, v in upload.headers.items() if k.lower() == "content-type"), None)


async def _chunks(upload: UploadFile) -> AsyncIterator[bytes]:
    while chunk := await upload.read(UPLOAD_CHUNK):
        yield chunk


class FilesController(Controller):
    path = "/v1/files"
    tags = ["files"]

    @post(
        "/",
        status_code=200,
        summary="Upload a file (durable before the answer)",
        responses=errors(400, 413, *SERVICE_ERRORS, e413="The file is past the upload limit"),
    )
    async def upload(self, data: Annotated[FileUploadForm, Multipart], registry: Registry) -> FileObject:
        name = data.file.filename or ""
        expires_after_s = check_expiry(data.expires_after_anchor, data.expires_after_seconds)
        record = await registry.vector_stores.upload_file(
            name, data.purpose, _chunks(data.file), expires_after_s, _declared_type(data.file)
        )
        return file_object(record)

    @get("/", summary="List files, newest first", responses=errors(400, *SERVICE_ERRORS))
    async def list_all(
        self,
        registry: Registry,
        purpose: FromQuery[str | None] = None,
        limit: Annotated[int, Parameter(ge=1, le=10_000)] = 10_000,
        order: FromQuery[Order] = "desc",
        after: FromQuery[str | None] = None,
    ) -> FileList:
        page = await registry.vector_stores.list_files(purpose, PageQuery(limit, order, after))
        return FileList(**cursor_page(page, lambda r: r.id, file_object)._asdict())

    @get("/{file_id:str}", summary="One file", responses=errors(400, 404, *SERVICE_ERRORS, e404=_NO_FILE))
    async def show(self, file_id: FromPath[str], registry: Registry) -> FileObject:
        return file_object(await registry.vector_stores.get_file(file_id))

    @get(
        "/{file_id:str}/content",
        summary="A file's bytes",
        media_type="application/octet-stream",
        responses=errors(400, 404, *SERVICE_ERRORS, e404=_NO_FILE),
    )
    async def content(self, file_id: FromPath[str], registry: Registry) -> Stream:
        record, chunks = await registry.vector_stores.file_content(file_id)
        media_type = mimetypes.guess_type(record.filename)[0] or "application/octet-stream"
        return Stream(chunks, media_type=media_type, headers={"Content-Length": str(record.bytes)})

    @delete(
        "/{file_id:str}",
        status_code=200,
        summary="Delete a file (and take it out of every vector store)",
        responses=errors(400, 404, *SERVICE_ERRORS, e404=_NO_FILE),
    )
    async def remove(self, file_id: FromPath[str], registry: Registry) -> FileDeleted:
        await registry.vector_stores.delete_file(file_id)
        return FileDeleted(id=file_id)
