"""Reranking in the gateway: POST /v1/rerank, and the second stage of retrieval queries and RAG asked
with ``"rerank": true`` (retrieval fetches more candidates than asked, the rerank model orders them).

It happens here, not in retrieval/, so that it is the same in embedded and distributed modes: the
retrieval worker stays model-free for this, and the rerank model answers wherever it runs."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

from retrieval.search import SearchResult
from services.errors import ModelNotFound
from services.gateway.generation import new_id
from services.gateway.rerank_schemas import (
    MAX_DOCUMENTS,
    RerankDocument,
    RerankRequest,
    RerankResponse,
    RerankResult,
    RerankUsage,
)
from services.registry import ModelRegistry, Reranker
from shared_engine.errors import InvalidRequest

# Candidates fetched for a reranked query of top_k results: enough for the reranker to bring up what
# the first stage ranked low, few enough to score in seconds on a CPU (~0.1 s a pair for the default).
CANDIDATE_FACTOR, MIN_CANDIDATES, MAX_CANDIDATES = 4, 20, 100


def candidates(top_k: int) -> int:
    return max(top_k, min(max(top_k * CANDIDATE_FACTOR, MIN_CANDIDATES), MAX_CANDIDATES))


def reranker(registry: ModelRegistry, model: str | None, param: str, model_param: str = "model") -> Reranker:
    """The rerank model named by the request's ``model_param``, or the first configured; a 400 naming
    ``param`` when there is none."""
    if model is not None:
        try:
            return registry.rerank(model)
        except ModelNotFound as exc:
            raise ModelNotFound(model, "rerank", model_param) from exc
    try:
        return registry.rerank(registry.default_model("rerank"))
    except ModelNotFound:
        raise InvalidRequest("reranking needs a rerank model, and none is configured", param=param) from None


def requested(
    registry: ModelRegistry, rerank: bool, model: str | None, image: str | None = None
) -> Reranker | None:
    """The reranker a query or RAG request asks for with ``rerank`` (and ``rerank_model``), or None."""
    if not rerank:
        if model is not None:
            raise InvalidRequest("rerank_model applies with rerank: true", param="rerank_model")
        return None
    if image is not None:
        raise InvalidRequest("rerank applies to text queries, not to image queries", param="rerank")
    return reranker(registry, model, "rerank", "rerank_model")


async def rerank_results(
    service: Reranker, query: str, hits: Sequence[SearchResult], top_k: int
) -> list[SearchResult]:
    """The ``top_k`` best of ``hits`` by the reranker's score of each one's text (a document's best
    passage), best first, each with that score in place of its retrieval score."""
    if not hits:
        return []
    scored = await service.rerank(query, [h.text for h in hits])
    order = sorted(range(len(hits)), key=lambda i: -scored.scores[i])  # stable: ties keep retrieval order
    return [replace(hits[i], score=scored.scores[i]) for i in order[:top_k]]


async def rescore(
    service: Reranker, query: str, passages: list[SearchResult], known: Sequence[SearchResult]
) -> list[SearchResult]:
    """``passages`` with the reranker's scores: those of ``known`` results where they are the same chunk,
    the others scored now (a RAG context's further passages of the same documents)."""
    scores = {(h.document_id, h.chunk_id): h.score for h in known}
    missing = [p for p in passages if (p.document_id, p.chunk_id) not in scores]
    if missing:
        scored = await service.rerank(query, [p.text for p in missing])
        scores.update({(p.document_id, p.chunk_id): s for p, s in zip(missing, scored.scores, strict=True)})
    return [replace(p, score=scores[(p.document_id, p.chunk_id)]) for p in passages]


def _check(body: RerankRequest) -> list[str]:
    if not body.query.strip():
        raise InvalidRequest("query must not be empty", param="query")
    if not body.documents:
        raise InvalidRequest("documents must hold at least one document", param="documents")
    if len(body.documents) > MAX_DOCUMENTS:
        raise InvalidRequest(
            f"documents has {len(body.documents)} items; at most {MAX_DOCUMENTS} per request",
            param="documents",
        )
    if body.top_n is not None and body.top_n < 1:
        raise InvalidRequest(f"top_n must be at least 1, got {body.top_n}", param="top_n")
    return [d if isinstance(d, str) else d.text for d in body.documents]


async def create(registry: ModelRegistry, body: RerankRequest) -> RerankResponse:
    texts = _check(body)
    service = reranker(registry, body.model, "model")
    scored = await service.rerank(body.query, texts)
    order = sorted(range(len(texts)), key=lambda i: -scored.scores[i])[: body.top_n]
    results = [
        RerankResult(i, scored.scores[i], RerankDocument(texts[i]) if body.return_documents else None)
        for i in order
    ]
    return RerankResponse(new_id("rerank"), service.name, results, RerankUsage(scored.tokens))
