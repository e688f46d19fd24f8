"""Bodies of POST /v1/rerank, in the shape Cohere's, Jina's and vLLM's rerank endpoints share."""

from __future__ import annotations

from typing import Annotated

from msgspec import Meta, Struct

from services.gateway.schemas import documented

MAX_DOCUMENTS = 1000  # per request, as Cohere's API allows
TopN = Annotated[int, documented(minimum=1), Meta(description="return the best n (all by default)")]


class RerankDocument(Struct):
    text: str


class RerankRequest(Struct, kw_only=True):
    # The limits are checked by the handler, with messages that say which (documented here).
    query: Annotated[str, documented(min_length=1)]
    documents: Annotated[
        list[str | RerankDocument],
        documented(min_items=1, max_items=MAX_DOCUMENTS),
        Meta(description="passages to score: strings, or objects with a `text`"),
    ]
    model: str | None = None  # the first rerank model configured when left out
    top_n: TopN | None = None
    return_documents: Annotated[bool, Meta(description="echo each document's text in its result")] = True


class RerankResult(Struct, omit_defaults=True):
    index: int  # the document's position in the request
    relevance_score: float  # in [0, 1], higher is more relevant (see README, Reranking)
    document: RerankDocument | None = None


class RerankUsage(Struct):
    total_tokens: int  # every token the model read: each (query, document) pair with its prompt


class RerankResponse(Struct):
    id: str
    model: str
    results: list[RerankResult]  # best first, at most top_n
    usage: RerankUsage
    object: str = "rerank"
