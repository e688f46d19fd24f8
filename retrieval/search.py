"""One query against one collection: the dense ranking (FAISS), the lexical ranking (FTS5 BM25), their
fusion, and the results — distinct documents with their best passages, or single chunks."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from retrieval.filters import Filter
from retrieval.fusion import QueryOptions, group_by_document, reciprocal_rank_fusion
from retrieval.index import VectorIndex
from retrieval.store import ChunkHit, DocumentStore


@dataclass(frozen=True)
class Passage:
    chunk_id: int
    text: str
    score: float


@dataclass(frozen=True)
class SearchResult:
    """A result: with ``group_by="document"``, a document ranked by its best passage (``chunk_id``,
    ``text`` and ``score`` are that passage's) with its best ``passages``; with ``group_by="chunk"``, one
    chunk (and no passages). Scores are cosine similarities (dense, and image queries), BM25 scores
    (lexical) or reciprocal rank fusion scores (hybrid): comparable within one answer, not across modes."""

    document_id: str
    chunk_id: int
    text: str
    score: float
    metadata: dict[str, Any]
    passages: tuple[Passage, ...] = ()


@dataclass(frozen=True)
class SearchRequest:
    """What the query is: its vector (None for lexical mode), its text (None for an image query)."""

    collection: str
    vector: np.ndarray | None
    text: str | None
    top_k: int
    options: QueryOptions
    where: Filter | None = None


def rank_chunks(store: DocumentStore, index: VectorIndex, request: SearchRequest) -> list[tuple[int, float]]:
    """(chunk id, score) best first: the dense ranking, the lexical one, or their fusion."""
    options, name = request.options, request.collection
    depth = options.candidates(request.top_k)
    dense: list[tuple[int, float]] = []
    lexical: list[tuple[int, float]] = []
    if request.vector is not None and options.mode != "lexical":
        allowed = store.chunk_ids_matching(name, request.where) if request.where else None
        dense = index.search(request.vector, depth, allowed)
    if request.text and options.mode != "dense":
        lexical = store.lexical_search(name, request.text, depth, request.where)
    # An image query has no words: its hybrid ranking is the dense one, with cosine scores.
    if options.mode == "hybrid" and request.vector is not None and request.text:
        w = options.weights
        return reciprocal_rank_fusion([(dense, w.dense), (lexical, w.lexical)], w.k)
    return dense or lexical


def search(store: DocumentStore, index: VectorIndex, request: SearchRequest) -> list[SearchResult]:
    ranked = rank_chunks(store, index, request)
    chunks = store.chunks([chunk_id for chunk_id, _ in ranked])
    hits = [(c, score) for chunk_id, score in ranked if (c := chunks.get(chunk_id)) is not None]
    if request.options.group_by == "chunk":
        return [_result(c, score) for c, score in hits[: request.top_k]]
    groups = group_by_document(hits, lambda h: h[0].document_id, request.top_k, request.options.passages)
    # An image collection's document is one image: its single "passage" is the result itself.
    with_passages = request.text is not None
    return [
        _result(*group[0], tuple(Passage(c.chunk_id, c.text, s) for c, s in group) if with_passages else ())
        for group in groups
    ]


def _result(chunk: ChunkHit, score: float, passages: tuple[Passage, ...] = ()) -> SearchResult:
    return SearchResult(chunk.document_id, chunk.chunk_id, chunk.text, score, chunk.metadata, passages)
