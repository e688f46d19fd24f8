"""Bodies of OpenAI's Files and Vector Stores endpoints (msgspec Structs, described in OpenAPI). Request
bodies refuse fields they do not know, as OpenAI's API does: a misspelt option is a 400, not ignored."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from litestar.datastructures import UploadFile
from litestar.params import KwargDefinition, Parameter
from msgspec import UNSET, Meta, Struct, UnsetType, field

from retrieval.files import MAX_EXPIRY_S, MIN_EXPIRY_S, PURPOSES
from retrieval.vector_store_types import MAX_RESULTS, RANKERS
from services.gateway.retrieval_schemas import SQLiteInt

AttributeValue = str | SQLiteInt | float | bool
Attributes = dict[str, AttributeValue]
Metadata = dict[str, str]
# A query parameter: Litestar checks its bounds when they are given as a Parameter (not as msgspec's Meta).
Limit = Annotated[int, Parameter(ge=1, le=100)]
Order = Literal["asc", "desc"]


# -- files ---------------------------------------------------------------------------------------------


_EXPIRY_SECONDS = f"the file is deleted this long after its creation ({MIN_EXPIRY_S} to {MAX_EXPIRY_S} s)"


class FileUploadForm(Struct, kw_only=True, forbid_unknown_fields=True):
    """OpenAI's multipart form for uploads (``expires_after`` as the SDK sends it: two bracketed fields)."""

    file: UploadFile
    purpose: Annotated[str, KwargDefinition(schema_extra={"enum": list(PURPOSES)})]
    expires_after_anchor: Annotated[str | None, Meta(description="`created_at`, the only anchor")] = field(
        default=None, name="expires_after[anchor]"
    )
    expires_after_seconds: Annotated[int | None, Meta(description=_EXPIRY_SECONDS)] = field(
        default=None, name="expires_after[seconds]"
    )


class FileObject(Struct, kw_only=True):
    id: str
    bytes: int
    created_at: int
    filename: str
    purpose: str
    object: str = "file"
    status: str = "processed"
    expires_at: int | None = None
    status_details: str | None = None


class FileList(Struct, kw_only=True):
    data: list[FileObject]
    has_more: bool
    first_id: str | None
    last_id: str | None
    object: str = "list"


class FileDeleted(Struct):
    id: str
    object: str = "file"
    deleted: bool = True


# -- vector stores -------------------------------------------------------------------------------------


class StaticChunking(Struct, forbid_unknown_fields=True):
    max_chunk_size_tokens: Annotated[int, Meta(ge=8)]
    chunk_overlap_tokens: Annotated[int, Meta(ge=0)]


class ChunkingStrategy(Struct, kw_only=True, forbid_unknown_fields=True):
    type: Literal["auto", "static"]
    static: StaticChunking | None = None


class ChunkingStrategyOut(Struct, kw_only=True):
    static: StaticChunking
    type: str = "static"


class ExpiresAfter(Struct, forbid_unknown_fields=True):
    anchor: Literal["last_active_at"]
    days: Annotated[int, Meta(ge=1, le=365)]


class FileCountsOut(Struct):
    in_progress: int
    completed: int
    failed: int
    cancelled: int
    total: int


class CreateVectorStoreRequest(Struct, kw_only=True, forbid_unknown_fields=True):
    name: Annotated[str, Meta(max_length=256)] = ""
    description: str | None = None
    file_ids: Annotated[list[str], Meta(max_length=500)] = []
    metadata: Metadata | None = None
    expires_after: ExpiresAfter | None = None
    chunking_strategy: ChunkingStrategy | None = None


class ModifyVectorStoreRequest(Struct, kw_only=True, forbid_unknown_fields=True):
    name: Annotated[str, Meta(max_length=256)] | None = None
    metadata: Metadata | None = None
    expires_after: ExpiresAfter | UnsetType | None = UNSET


class VectorStoreObject(Struct, kw_only=True):
    id: str
    created_at: int
    name: str
    usage_bytes: int
    file_counts: FileCountsOut
    status: str
    last_active_at: int
    metadata: Metadata
    expires_after: ExpiresAfter | None = None
    expires_at: int | None = None
    object: str = "vector_store"


class VectorStoreList(Struct, kw_only=True):
    data: list[VectorStoreObject]
    has_more: bool
    first_id: str | None
    last_id: str | None
    object: str = "list"


class Deleted(Struct):
    id: str
    object: str
    deleted: bool = True


# -- files in a vector store ---------------------------------------------------------------------------


class AttachFileRequest(Struct, kw_only=True, forbid_unknown_fields=True):
    file_id: str
    attributes: Attributes | None = None
    chunking_strategy: ChunkingStrategy | None = None


class UpdateAttributesRequest(Struct, kw_only=True, forbid_unknown_fields=True):
    attributes: Attributes | None


class LastError(Struct):
    code: str
    message: str


class VectorStoreFileObject(Struct, kw_only=True):
    id: str
    created_at: int
    vector_store_id: str
    status: str
    usage_bytes: int
    last_error: LastError | None
    chunking_strategy: ChunkingStrategyOut
    attributes: dict[str, Any]
    object: str = "vector_store.file"


class VectorStoreFileList(Struct, kw_only=True):
    data: list[VectorStoreFileObject]
    has_more: bool
    first_id: str | None
    last_id: str | None
    object: str = "list"


class BatchFile(Struct, kw_only=True, forbid_unknown_fields=True):
    file_id: str
    attributes: Attributes | None = None
    chunking_strategy: ChunkingStrategy | None = None


class CreateFileBatchRequest(Struct, kw_only=True, forbid_unknown_fields=True):
    file_ids: Annotated[list[str], Meta(max_length=2000)] | None = None
    files: Annotated[list[BatchFile], Meta(max_length=2000)] | None = None
    attributes: Attributes | None = None
    chunking_strategy: ChunkingStrategy | None = None


class FileBatchObject(Struct, kw_only=True):
    id: str
    created_at: int
    vector_store_id: str
    status: str
    file_counts: FileCountsOut
    object: str = "vector_store.files_batch"


# -- search --------------------------------------------------------------------------------------------


class RankingOptions(Struct, kw_only=True, forbid_unknown_fields=True):
    ranker: Literal[RANKERS] = "auto"  # type: ignore[valid-type]
    score_threshold: Annotated[float, Meta(ge=0.0, le=1.0)] = 0.0


class SearchRequest(Struct, kw_only=True, forbid_unknown_fields=True):
    query: Annotated[str, Meta(min_length=1)] | Annotated[list[str], Meta(min_length=1, max_length=16)]
    # OpenAI's comparison ({type, key, value}) and compound ({type: and|or, filters}) filters.
    filters: dict[str, Any] | None = None
    max_num_results: Annotated[int, Meta(ge=1, le=MAX_RESULTS)] = 10
    ranking_options: RankingOptions | None = None
    rewrite_query: bool = False


class SearchContent(Struct):
    text: str
    type: str = "text"


class SearchResultOut(Struct):
    file_id: str
    filename: str
    score: float
    attributes: dict[str, Any]
    content: list[SearchContent]


class SearchResultsPage(Struct, kw_only=True):
    search_query: list[str]
    data: list[SearchResultOut]
    has_more: bool = False
    next_page: str | None = None
    object: str = "vector_store.search_results.page"
