"""Search over a vector store's collection, and the rule every query of that collection obeys whatever
its route (the store's search, /v1/retrieval/query, /v1/rag): refused once the store has expired, and
otherwise, once answered, a use, which its expiry counts from (the collections call ``records.touch``)."""

from __future__ import annotations

import time
from collections.abc import Sequence

from retrieval.collections import Collections
from retrieval.errors import FileNotFound, VectorStoreExpired
from retrieval.files import FileStore
from retrieval.fusion import QueryOptions
from retrieval.vector_store_records import VectorStoreRecords
from retrieval.vector_store_types import PASSAGES, SearchHit, SearchOptions
from shared_engine.errors import InvalidRequest


class StoreSearch:
    def __init__(self, collections: Collections, files: FileStore, records: VectorStoreRecords) -> None:
        self.collections = collections
        self.files = files
        self.records = records

    def check_live(self, store_id: str) -> None:
        """VectorStoreNotFound for an unknown store, VectorStoreExpired for an expired one."""
        store = self.records.store(store_id)
        if store.expired(time.time()):
            raise VectorStoreExpired(store_id, store.expires_at or 0)

    async def search(self, store_id: str, queries: Sequence[str], options: SearchOptions) -> list[SearchHit]:
        """The best files for the queries (joined into one), each with its best passages. Scores are in
        [0, 1]: cosine similarity (ranker "none": dense only), or the hybrid fusion score over its
        maximum (1.0: ranked first both by meaning and by words)."""
        self.check_live(store_id)
        text = " ".join(q.strip() for q in queries if q.strip())
        if not text:
            raise InvalidRequest("query must not be empty", param="query")
        mode = "dense" if options.ranker == "none" else "hybrid"
        query = QueryOptions(mode, "document", PASSAGES)
        results = await self.collections.query(
            store_id, text, options.max_num_results, options.filters, None, query
        )
        w = query.weights
        top = (w.dense + w.lexical) / (w.k + 1) if mode == "hybrid" else 1.0
        hits = []
        for r in results:
            score = max(0.0, min(1.0, r.score / top))
            if score < options.score_threshold:
                continue
            try:
                filename = self.files.get(r.document_id).filename
            except FileNotFound:
                filename = ""
            content = tuple(p.text for p in r.passages) or (r.text,)
            hits.append(SearchHit(r.document_id, filename, score, dict(r.metadata), content))
        return hits
