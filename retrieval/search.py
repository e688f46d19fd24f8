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

DEEPER = 4  # how much deeper to rank each time grouping finds too few documents


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


def rank_chunks(
    store: DocumentStore, index: VectorIndex, request: SearchRequest, depth: int
) -> tuple[list[tuple[int, float]], bool]:
    """(chunk id, score) best first: the dense ranking, the lexical one, or their fusion, each cut at
    ``depth``; and whether a ranking was cut (held ``depth`` chunks, so more may rank below them)."""
    options, name = request.options, request.collection
    dense: list[tuple[int, float]] = []
    lexical: list[tuple[int, float]] = []
    if request.vector is not None and options.mode != "lexical":
        allowed = store.chunk_ids_matching(name, request.where) if request.where else None
        dense = index.search(request.vector, depth, allowed)
    if request.text and options.mode != "dense":
        lexical = store.lexical_search(name, request.text, depth, request.where)
    cut = len(dense) >= depth or len(lexical) >= depth
    # An image query has no words: its hybrid ranking is the dense one, with cosine scores.
    if options.mode == "hybrid" and request.vector is not None and request.text:
        w = options.weights
        return reciprocal_rank_fusion([(dense, w.dense), (lexical, w.lexical)], w.k), cut
    return dense or lexical, cut


def search(store: DocumentStore, index: VectorIndex, request: SearchRequest) -> list[SearchResult]:
    options, top_k = request.options, request.top_k
    depth = options.candidates(top_k)
    documents: int | None = None  # in the collection: counted once a ranking falls short
    chunks: dict[int, ChunkHit] = {}  # read once each, whichever pass ranked them first
    while True:
        ranked, cut = rank_chunks(store, index, request, depth)
        chunks.update(store.chunks([chunk_id for chunk_id, _ in ranked if chunk_id not in chunks]))
        hits = [(c, score) for chunk_id, score in ranked if (c := chunks.get(chunk_id)) is not None]
        if options.group_by == "chunk":
            return [_result(c, score) for c, score in hits[:top_k]]
        groups = group_by_document(hits, lambda h: h[0].document_id, top_k, options.passages)
        # A long document's chunks can fill the whole window: rank deeper until top_k documents, every
        # document of the collection, or the end of the rankings (no more chunks than index.size).
        if len(groups) >= top_k or not cut or depth >= max(index.size, len(hits)):
            break
        if documents is None:
            documents = store.count_documents(request.collection)
        if len(groups) >= documents:
            break
        depth *= DEEPER
    # An image collection's document is one image: its single "passage" is the result itself.
    with_passages = request.text is not None
    return [
        _result(*group[0], tuple(Passage(c.chunk_id, c.text, s) for c, s in group) if with_passages else ())
        for group in groups
    ]


def _result(chunk: ChunkHit, score: float, passages: tuple[Passage, ...] = ()) -> SearchResult:
    return SearchResult(chunk.document_id, chunk.chunk_id, chunk.text, score, chunk.metadata, passages)
