"""OpenAI's Vector Stores API: vector stores, their files, file batches and search (thin handlers)."""

from __future__ import annotations

from litestar import Controller, delete, get, post
from litestar.di import NamedDependency
from litestar.params import FromPath, FromQuery, JSONBody
from msgspec import UNSET

from retrieval.filters import parse_filter
from retrieval.pages import Page, PageQuery
from retrieval.vector_store_records import VectorStoreFileRecord
from retrieval.vector_store_types import SearchOptions
from services.gateway.api_docs import SERVICE_ERRORS, errors
from services.gateway.vector_store_schemas import (
    AttachFileRequest,
    CreateFileBatchRequest,
    CreateVectorStoreRequest,
    Deleted,
    FileBatchObject,
    Limit,
    ModifyVectorStoreRequest,
    Order,
    SearchRequest,
    SearchResultsPage,
    UpdateAttributesRequest,
    VectorStoreFileList,
    VectorStoreFileObject,
    VectorStoreList,
    VectorStoreObject,
)
from services.gateway.vector_store_views import (
    attachment,
    batch_object,
    check_pairs,
    chunking,
    cursor_page,
    search_result,
    vector_store_file_object,
    vector_store_object,
)
from services.registry import ModelRegistry
from shared_engine.errors import InvalidRequest

Registry = NamedDependency[ModelRegistry]
_NO_STORE = "Unknown vector store (code `vector_store_not_found`)"
_NO_FILE = "Unknown vector store or file (code `vector_store_not_found`, `vector_store_file_not_found`)"
_NO_BATCH = "Unknown vector store or batch (code `vector_store_not_found`, `file_batch_not_found`)"
_STATUS = ("in_progress", "completed", "failed", "cancelled")


def _status(value: str | None) -> str | None:
    if value is not None and value not in _STATUS:
        raise InvalidRequest(f"filter must be one of {', '.join(_STATUS)}, got {value!r}", param="filter")
    return value


def _file_page(page: Page[VectorStoreFileRecord]) -> VectorStoreFileList:
    return VectorStoreFileList(**cursor_page(page, lambda r: r.file_id, vector_store_file_object)._asdict())


class VectorStoresController(Controller):
    path = "/v1/vector_stores"
    tags = ["vector stores"]

    @post(
        "/",
        status_code=200,
        summary="Create a vector store",
        responses=errors(400, 404, 413, *SERVICE_ERRORS),
    )
    async def create(self, data: JSONBody[CreateVectorStoreRequest], registry: Registry) -> VectorStoreObject:
        files = [attachment(f, None, data.chunking_strategy) for f in data.file_ids]
        days = None if data.expires_after is None else data.expires_after.days
        metadata = check_pairs(data.metadata, "metadata")
        api = registry.vector_stores
        record = await api.create(data.name, metadata, days, chunking(data.chunking_strategy), files)
        return vector_store_object(record)

    @get("/", summary="List vector stores", responses=errors(400, *SERVICE_ERRORS))
    async def list_all(
        self,
        registry: Registry,
        limit: Limit = 20,
        order: FromQuery[Order] = "desc",
        after: FromQuery[str | None] = None,
        before: FromQuery[str | None] = None,
    ) -> VectorStoreList:
        page = await registry.vector_stores.list_stores(PageQuery(limit, order, after, before))
        return VectorStoreList(**cursor_page(page, lambda r: r.id, vector_store_object)._asdict())

    @get(
        "/{store_id:str}",
        summary="One vector store",
        responses=errors(400, 404, *SERVICE_ERRORS, e404=_NO_STORE),
    )
    async def show(self, store_id: FromPath[str], registry: Registry) -> VectorStoreObject:
        return vector_store_object(await registry.vector_stores.get(store_id))

    @post(
        "/{store_id:str}",
        status_code=200,
        summary="Modify a vector store's name, metadata or expiry",
        responses=errors(400, 404, 413, *SERVICE_ERRORS, e404=_NO_STORE),
    )
    async def modify(
        self, store_id: FromPath[str], data: JSONBody[ModifyVectorStoreRequest], registry: Registry
    ) -> VectorStoreObject:
        metadata = None if data.metadata is None else check_pairs(data.metadata, "metadata")
        expires: int | bool | None = False
        if data.expires_after is not UNSET:
            expires = None if data.expires_after is None else data.expires_after.days
        return vector_store_object(
            await registry.vector_stores.modify(store_id, data.name, metadata, expires)
        )

    @delete(
        "/{store_id:str}",
        status_code=200,
        summary="Delete a vector store (its files stay)",
        responses=errors(400, 404, *SERVICE_ERRORS, e404=_NO_STORE),
    )
    async def remove(self, store_id: FromPath[str], registry: Registry) -> Deleted:
        await registry.vector_stores.delete(store_id)
        return Deleted(store_id, "vector_store.deleted")

    # -- files ------------------------------------------------------------------------------------------

    @post(
        "/{store_id:str}/files",
        status_code=200,
        summary="Attach a file: in_progress, then completed or failed (with last_error)",
        responses=errors(400, 404, 413, *SERVICE_ERRORS, e404="Unknown vector store or file"),
    )
    async def attach(
        self, store_id: FromPath[str], data: JSONBody[AttachFileRequest], registry: Registry
    ) -> VectorStoreFileObject:
        a = attachment(data.file_id, data.attributes, data.chunking_strategy)
        return vector_store_file_object(await registry.vector_stores.attach(store_id, a))

    @get(
        "/{store_id:str}/files",
        summary="List a vector store's files",
        responses=errors(400, 404, *SERVICE_ERRORS, e404=_NO_STORE),
    )
    async def list_files(
        self,
        store_id: FromPath[str],
        registry: Registry,
        limit: Limit = 20,
        order: FromQuery[Order] = "desc",
        after: FromQuery[str | None] = None,
        before: FromQuery[str | None] = None,
        filter: FromQuery[str | None] = None,
    ) -> VectorStoreFileList:
        query = PageQuery(limit, order, after, before)
        return _file_page(await registry.vector_stores.list_attached(store_id, _status(filter), query))

    @get(
        "/{store_id:str}/files/{file_id:str}",
        summary="One file of a vector store",
        responses=errors(400, 404, *SERVICE_ERRORS, e404=_NO_FILE),
    )
    async def show_file(
        self, store_id: FromPath[str], file_id: FromPath[str], registry: Registry
    ) -> VectorStoreFileObject:
        return vector_store_file_object(await registry.vector_stores.get_attached(store_id, file_id))

    @post(
        "/{store_id:str}/files/{file_id:str}",
        status_code=200,
        summary="Replace a file's attributes",
        responses=errors(400, 404, 413, *SERVICE_ERRORS, e404=_NO_FILE),
    )
    async def update_file(
        self,
        store_id: FromPath[str],
        file_id: FromPath[str],
        data: JSONBody[UpdateAttributesRequest],
        registry: Registry,
    ) -> VectorStoreFileObject:
        attributes = check_pairs(data.attributes, "attributes")
        record = await registry.vector_stores.update_attributes(store_id, file_id, attributes)
        return vector_store_file_object(record)

    @delete(
        "/{store_id:str}/files/{file_id:str}",
        status_code=200,
        summary="Take a file out of a vector store (the file stays)",
        responses=errors(400, 404, *SERVICE_ERRORS, e404=_NO_FILE),
    )
    async def detach(self, store_id: FromPath[str], file_id: FromPath[str], registry: Registry) -> Deleted:
        await registry.vector_stores.detach(store_id, file_id)
        return Deleted(file_id, "vector_store.file.deleted")

    # -- batches ----------------------------------------------------------------------------------------

    @post(
        "/{store_id:str}/file_batches",
        status_code=200,
        summary="Attach several files at once",
        responses=errors(400, 404, 413, *SERVICE_ERRORS, e404="Unknown vector store or file"),
    )
    async def create_batch(
        self, store_id: FromPath[str], data: JSONBody[CreateFileBatchRequest], registry: Registry
    ) -> FileBatchObject:
        if (data.file_ids is None) == (data.files is None):
            raise InvalidRequest("give exactly one of file_ids and files", param="file_ids")
        if data.files is not None:
            files = [attachment(f.file_id, f.attributes, f.chunking_strategy) for f in data.files]
        else:
            files = [attachment(f, data.attributes, data.chunking_strategy) for f in data.file_ids or []]
        return batch_object(await registry.vector_stores.create_batch(store_id, files))

    @get(
        "/{store_id:str}/file_batches/{batch_id:str}",
        summary="One file batch",
        responses=errors(400, 404, *SERVICE_ERRORS, e404=_NO_BATCH),
    )
    async def show_batch(
        self, store_id: FromPath[str], batch_id: FromPath[str], registry: Registry
    ) -> FileBatchObject:
        return batch_object(await registry.vector_stores.get_batch(store_id, batch_id))

    @post(
        "/{store_id:str}/file_batches/{batch_id:str}/cancel",
        status_code=200,
        summary="Cancel a batch's files not yet processed",
        responses=errors(400, 404, *SERVICE_ERRORS, e404=_NO_BATCH),
    )
    async def cancel_batch(
        self, store_id: FromPath[str], batch_id: FromPath[str], registry: Registry
    ) -> FileBatchObject:
        return batch_object(await registry.vector_stores.cancel_batch(store_id, batch_id))

    @get(
        "/{store_id:str}/file_batches/{batch_id:str}/files",
        summary="The files of a batch",
        responses=errors(400, 404, *SERVICE_ERRORS, e404=_NO_BATCH),
    )
    async def batch_files(
        self,
        store_id: FromPath[str],
        batch_id: FromPath[str],
        registry: Registry,
        limit: Limit = 20,
        order: FromQuery[Order] = "desc",
        after: FromQuery[str | None] = None,
        before: FromQuery[str | None] = None,
        filter: FromQuery[str | None] = None,
    ) -> VectorStoreFileList:
        query = PageQuery(limit, order, after, before)
        return _file_page(
            await registry.vector_stores.batch_files(store_id, batch_id, _status(filter), query)
        )

    # -- search -----------------------------------------------------------------------------------------

    @post(
        "/{store_id:str}/search",
        status_code=200,
        summary="The files that best answer a query (hybrid ranking), filtered by attributes",
        responses=errors(400, 404, 413, *SERVICE_ERRORS, e404=_NO_STORE),
    )
    async def search(
        self, store_id: FromPath[str], data: JSONBody[SearchRequest], registry: Registry
    ) -> SearchResultsPage:
        queries = [data.query] if isinstance(data.query, str) else list(data.query)
        ranking = data.ranking_options
        options = SearchOptions(
            max_num_results=data.max_num_results,
            filters=None if data.filters is None else parse_filter(data.filters),
            ranker="auto" if ranking is None else ranking.ranker,
            score_threshold=0.0 if ranking is None else ranking.score_threshold,
        )
        hits = await registry.vector_stores.search(store_id, queries, options)
        return SearchResultsPage(search_query=queries, data=[search_result(h) for h in hits])
