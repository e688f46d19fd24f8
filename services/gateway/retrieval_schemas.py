"""Bodies of the collections, retrieval and RAG endpoints (msgspec Structs, described in OpenAPI)."""

from __future__ import annotations

from typing import Annotated, Any, Literal

import msgspec
from msgspec import Meta, Struct

from retrieval.collections import COLLECTION_NAME, DOCUMENT_ID
from retrieval.fusion import MAX_PASSAGES
from services.gateway.schemas import MaxTokens, Temperature, Usage, documented

# -- collections and retrieval -------------------------------------------------------------------------

# Metadata filters are compared in SQLite, whose integers are 64-bit: a larger one cannot be a bound
# parameter (it was a 500).
SQLITE_INT_MIN, SQLITE_INT_MAX = -(2**63), 2**63 - 1
SQLiteInt = Annotated[int, Meta(ge=SQLITE_INT_MIN, le=SQLITE_INT_MAX)]
# Litestar would document the values as oneOf integer/number, which no integer satisfies (it is both).
_FILTER_SCHEMA = documented(
    one_of=[
        {
            "type": "object",
            "description": "metadata fields the results must equal exactly",
            "additionalProperties": {
                "anyOf": [
                    {"type": "string"},
                    {"type": "integer", "minimum": SQLITE_INT_MIN, "maximum": SQLITE_INT_MAX},
                    {"type": "number"},
                    {"type": "boolean"},
                ]
            },
        },
        {"type": "null"},
    ]
)
Filter = Annotated[dict[str, str | SQLiteInt | float | bool] | None, _FILTER_SCHEMA]


class CreateCollectionRequest(Struct, kw_only=True):
    name: Annotated[str, documented(pattern=COLLECTION_NAME.pattern)]  # checked by the store
    model: str | None = None
    index: Literal["flat", "hnsw", "ivf"] = "flat"
    chunk_tokens: Annotated[int, Meta(ge=8)] = 200
    overlap_tokens: Annotated[int, Meta(ge=0)] = 40


class CollectionInfo(Struct):
    name: str
    model: str
    index: str
    dimensions: int
    chunk_tokens: int
    overlap_tokens: int
    documents: int
    created: int
    object: str = "collection"


class CollectionList(Struct):
    data: list[CollectionInfo]
    object: str = "list"


class DocumentIn(Struct, kw_only=True):
    text: str = ""  # the document; in a collection of images, an optional caption
    id: Annotated[str, documented(pattern=DOCUMENT_ID.pattern)] | None = None  # checked by the store
    metadata: dict[str, Any] = msgspec.field(default_factory=dict)
    image: str | None = None  # collections of images: a data URL or base64


class AddDocumentsRequest(Struct):
    documents: Annotated[list[DocumentIn], Meta(min_length=1, max_length=256)]


class AddDocumentsResponse(Struct):
    ids: list[str]
    chunks: int


class DocumentOut(Struct):
    id: str
    collection: str
    text: str
    metadata: dict[str, Any]
    chunks: int
    object: str = "document"


class Deleted(Struct):
    id: str
    deleted: bool = True
    object: str = "deleted"


Mode = Annotated[
    Literal["hybrid", "dense", "lexical"],
    Meta(description="hybrid: vectors and BM25 fused by reciprocal rank; dense: vectors; lexical: BM25"),
]
GroupBy = Annotated[
    Literal["document", "chunk"],
    Meta(description="document: distinct documents, each with its best passages; chunk: single chunks"),
]
Weight = Annotated[float, Meta(ge=0.0), documented(minimum=0.0)]
Rerank = Annotated[
    bool,
    Meta(
        description="fetch more candidates (4 × top_k, 20 to 100), order them by a rerank model's score of "
        "their text, keep top_k: each result's score is then that relevance, in [0, 1]"
    ),
]
RerankModel = Annotated[str | None, Meta(description="the rerank model (default: the first configured)")]


class FusionWeightsIn(Struct, kw_only=True):
    """Weights of the rankings in hybrid mode's reciprocal rank fusion (not both 0)."""

    dense: Weight = 1.0
    lexical: Weight = 1.0


class QueryRequest(Struct, kw_only=True):
    collection: str
    query: Annotated[str, documented(min_length=1)] | None = None  # collections of text
    image: str | None = None  # collections of images are queried with an image (data URL or base64)
    top_k: Annotated[int, Meta(ge=1, le=100)] = 5
    filter: Filter = None
    mode: Mode = "hybrid"
    group_by: GroupBy = "document"
    passages: Annotated[int, Meta(ge=1, le=MAX_PASSAGES, description="best passages per document")] = 3
    weights: FusionWeightsIn | None = None
    rerank: Rerank = False
    rerank_model: RerankModel = None


class PassageOut(Struct):
    chunk_id: int
    text: str
    score: float


class QueryResult(Struct, omit_defaults=True):
    """A document (its best passage's chunk id, text and score, then its best ``passages``), or with
    ``group_by: "chunk"``, and in collections of images, one chunk without ``passages``."""

    document_id: str
    chunk_id: int
    text: str
    score: float
    metadata: dict[str, Any]
    passages: list[PassageOut] | None = None


class QueryResponse(Struct):
    results: list[QueryResult]


class RagRequest(Struct, kw_only=True):
    collection: str
    query: str
    top_k: Annotated[int, Meta(ge=1, le=20)] = 4
    model: str | None = None
    max_tokens: MaxTokens = 256
    temperature: Temperature = 0.0
    filter: Filter = None
    stream: bool = False
    mode: Mode = "hybrid"
    rerank: Rerank = False
    rerank_model: RerankModel = None


class Citation(Struct):
    index: int
    document_id: str
    chunk_id: int
    text: str
    score: float


class RagResponse(Struct):
    answer: str
    citations: list[Citation]
    usage: Usage
    model: str
    object: str = "rag.answer"
