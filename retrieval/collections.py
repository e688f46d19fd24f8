"""Collections: documents → chunks → vectors, kept in the durable store and searched in FAISS."""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from retrieval.chunking import ChunkingConfig
from retrieval.documents import (
    COLLECTION_NAME,
    DOCUMENT_ID,
    DocumentInput,
    Embedder,
    ImageEmbedder,
    check_name,
    embed_documents,
    is_image,
    text_window,
)
from retrieval.errors import CollectionExists, CollectionNotFound, CollectionOwned, DocumentNotFound
from retrieval.filters import Filter, as_filter
from retrieval.fusion import QueryOptions
from retrieval.index import INDEX_KINDS, VectorIndex
from retrieval.search import SearchRequest, SearchResult, search
from retrieval.store import CollectionRecord, DocumentRecord, DocumentStore, NewDocument
from shared_engine.errors import InvalidRequest, ModelNotFound

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Owner:
    """An API that keeps some collections as parts of its own objects (vector stores): the collections
    ``owns`` admits are changed and dropped only by writes that name ``name``, and every query of one,
    whatever its route, goes through ``admit_query`` first (which may refuse it by raising) and, once it
    has answered, through ``queried``."""

    name: str
    api: str
    owns: Callable[[str], bool]
    admit_query: Callable[[str], None] | None = None
    queried: Callable[[str], None] | None = None


class Collections:
    """All collections of one data directory. Writes go to the store first (durable), then to the
    in-memory index; on start every index is loaded from its saved file if that file agrees with the
    store, and rebuilt from the stored vectors otherwise."""

    def __init__(
        self, data_dir: Path, embedders: Mapping[str, Embedder | ImageEmbedder], default_model: str | None
    ) -> None:
        self.dir = data_dir / "retrieval"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.store = DocumentStore(self.dir / "store.sqlite3")
        self.embedders = embedders
        self.default_model = default_model
        self.indexes: dict[str, VectorIndex] = {}
        self.lock = asyncio.Lock()  # one writer at a time keeps store and index in the same order
        self.owner: Owner | None = None
        for record in self.store.collections():
            self.indexes[record.name] = self._restore(record)

    # -- collections ----------------------------------------------------------------------------------

    def records(self) -> list[CollectionRecord]:
        return self.store.collections()

    def record(self, name: str) -> CollectionRecord:
        for r in self.store.collections():
            if r.name == name:
                return r
        raise CollectionNotFound(name)

    def create(
        self, name: str, model: str | None, index_kind: str = "flat", chunking: ChunkingConfig | None = None
    ) -> CollectionRecord:
        check_name(name, COLLECTION_NAME, "name")
        model = model or self.default_model
        if model is None or model not in self.embedders:
            raise ModelNotFound(model or "", "embedding")
        if index_kind not in INDEX_KINDS:
            raise InvalidRequest(
                f"index must be one of {', '.join(INDEX_KINDS)}, got {index_kind!r}", param="index"
            )
        chunking = chunking or ChunkingConfig()
        self.check_chunking(model, chunking)
        embedder = self.embedders[model]
        if name in self.indexes:
            raise CollectionExists(name)
        record = CollectionRecord(
            name,
            model,
            index_kind,
            embedder.dimensions,
            chunking.chunk_tokens,
            chunking.overlap_tokens,
            time.time(),
        )
        self.store.create_collection(record)
        self.indexes[name] = VectorIndex(index_kind, embedder.dimensions)
        return record

    def check_chunking(self, model: str, chunking: ChunkingConfig, field: str = "chunk_tokens") -> None:
        """Chunks must fit what the embedding model reads (``field``: where the request set their size)."""
        window = text_window(self.embedders[model])
        if window and chunking.chunk_tokens > window:
            raise InvalidRequest(
                f"{field} {chunking.chunk_tokens} exceeds what {model} reads "
                f"({window} tokens besides its special tokens)",
                param=field.split(".")[0],
            )

    def claim(self, owner: Owner) -> None:
        """Leave the collections ``owner.owns`` admits to ``owner``: a write or drop that does not name it
        is refused (CollectionOwned)."""
        self.owner = owner

    def check_writer(self, name: str, writer: str | None = None) -> None:
        """Raise CollectionOwned unless ``writer`` may change collection ``name``."""
        owner = self.owner
        if owner is not None and writer != owner.name and owner.owns(name):
            raise CollectionOwned(name, owner.name, owner.api)

    # Writes of documents happen under ``self.lock`` in sections without an await; ``drop`` and
    # ``set_metadata`` are synchronous, so on the event loop's thread each runs between two such sections,
    # never inside one: holding the loop, they hold the lock. A writer that awaited (embedding, or the lock
    # itself) checks again inside the lock that its collection still exists.

    def drop(self, name: str, writer: str | None = None) -> None:
        """Drop a collection with its documents and index (``writer``: the owner that drops it)."""
        self._index(name)
        self.check_writer(name, writer)
        self.store.drop_collection(name)
        del self.indexes[name]
        (self.dir / f"{name}.faiss").unlink(missing_ok=True)

    # -- documents -------------------------------------------------------------------------------------

    async def add(
        self,
        name: str,
        docs: Sequence[DocumentInput],
        chunking: ChunkingConfig | None = None,
        writer: str | None = None,
    ) -> tuple[list[str], int]:
        """Chunk (by the collection's chunking unless ``chunking`` says otherwise), embed and store
        documents; returns their ids and the number of chunks. Durable on return."""
        record = self.record(name)
        self.check_writer(name, writer)
        if chunking is not None:
            self.check_chunking(record.model, chunking)
        ids = [check_name(d.id, DOCUMENT_ID, "id") if d.id else uuid.uuid4().hex for d in docs]
        if len(set(ids)) != len(ids):
            raise InvalidRequest("document ids in one request must be distinct", param="documents")
        pieces, vectors = await embed_documents(self.embedders[record.model], record, docs, chunking)
        new, at = [], 0
        for doc, doc_id, p in zip(docs, ids, pieces, strict=True):
            new.append(
                NewDocument(doc_id, doc.text, dict(doc.metadata), p, np.stack(vectors[at : at + len(p)]))
            )
            at += len(p)
        async with self.lock:
            index = self._index(name)  # dropped while the documents were embedded: nothing is written
            self._write(name, index, ids, new)
        return ids, at

    def _write(self, name: str, index: VectorIndex, ids: list[str], new: list[NewDocument]) -> None:
        replaced = self.store.existing_ids(name, ids)
        old_chunks = [c for doc_id in replaced for c in self.store.chunk_ids_of(name, doc_id)]
        chunk_ids = self.store.add_documents(name, new)
        if old_chunks and index.removal_rebuilds:
            index.rebuild(self.store.iter_vectors(name))  # the store already holds the new chunks
        else:
            index.remove(old_chunks, lambda: self.store.iter_vectors(name))
            new_ids = np.array([c for ids_ in chunk_ids for c in ids_])
            index.add(new_ids, np.concatenate([d.vectors for d in new]))
        if index.needs_training:
            index.rebuild(self.store.iter_vectors(name))

    def set_metadata(
        self, name: str, doc_id: str, metadata: Mapping[str, Any], writer: str | None = None
    ) -> None:
        """Replace a document's metadata (what filters see); its chunks and vectors stay."""
        self._index(name)
        self.check_writer(name, writer)
        if not self.store.set_metadata(name, doc_id, metadata):
            raise DocumentNotFound(name, doc_id)

    def get(self, name: str, doc_id: str) -> DocumentRecord:
        self._index(name)
        doc = self.store.document(name, doc_id)
        if doc is None:
            raise DocumentNotFound(name, doc_id)
        return doc

    async def delete(self, name: str, doc_id: str, writer: str | None = None) -> None:
        self._index(name)
        self.check_writer(name, writer)
        async with self.lock:
            index = self._index(name)
            removed = self.store.delete_document(name, doc_id)
            if not removed and self.store.document(name, doc_id) is None:
                raise DocumentNotFound(name, doc_id)
            index.remove(removed, lambda: self.store.iter_vectors(name))

    # -- search ------------------------------------------------------------------------------------------

    async def query(
        self,
        name: str,
        text: str | None,
        top_k: int = 5,
        where: Mapping[str, Any] | Filter | None = None,
        image: bytes | None = None,
        options: QueryOptions | None = None,
    ) -> list[SearchResult]:
        """The ``top_k`` best documents (or chunks, by ``options.group_by``) for a text query, ranked by
        ``options.mode``, among the documents ``where`` admits (a filter, or fields that must equal);
        a collection of images is queried with an image, by its vectors alone."""
        options, where = options or QueryOptions(), as_filter(where) if where is not None else None
        record = self.record(name)
        owner = self.owner if self.owner is not None and self.owner.owns(name) else None
        if owner is not None and owner.admit_query is not None:
            owner.admit_query(name)
        embedder = self.embedders[record.model]
        vector: np.ndarray | None = None
        if is_image(embedder):
            if image is None:
                raise InvalidRequest(
                    f"collection {name!r} holds images: query it with an image", param="image"
                )
            if options.mode == "lexical":
                raise InvalidRequest(f"collection {name!r} holds images: it has no words", param="mode")
            (vector,) = await embedder.embed_images([image])  # type: ignore[union-attr]
            text = None
        else:
            if image is not None:
                raise InvalidRequest(f"collection {name!r} holds text: query it with text", param="image")
            if not text or not text.strip():
                raise InvalidRequest("query must not be empty", param="query")
            if options.mode != "lexical":
                (vector,) = await embedder.embed(embedder.tokenize([text], truncate=True))  # type: ignore[union-attr]
        results = search(
            self.store, self._index(name), SearchRequest(name, vector, text, top_k, options, where)
        )
        if owner is not None and owner.queried is not None:
            owner.queried(name)
        return results

    # -- persistence --------------------------------------------------------------------------------------

    def _index(self, name: str) -> VectorIndex:
        index = self.indexes.get(name)
        if index is None:
            raise CollectionNotFound(name)
        return index

    def _restore(self, record: CollectionRecord) -> VectorIndex:
        index = VectorIndex(record.index_kind, record.dimensions)
        path = self.dir / f"{record.name}.faiss"
        if path.is_file():
            try:
                index.load(path)
            except (RuntimeError, OSError) as exc:  # a truncated or foreign file: the store decides
                logger.warning("saved index of %s is unreadable (%s): rebuilding", record.name, exc)
                index = VectorIndex(record.index_kind, record.dimensions)
            else:
                if index.id_checksum() == self.store.chunk_stats(record.name):
                    return index
                logger.warning("saved index of %s disagrees with the store: rebuilding", record.name)
        index.rebuild(self.store.iter_vectors(record.name))
        return index

    def close(self) -> None:
        """Save every index (a later start then skips the rebuild) and close the store."""
        for name, index in self.indexes.items():
            index.save(self.dir / f"{name}.faiss")
        self.store.close()
