"""Collections: documents → chunks → vectors, kept in the durable store and searched in FAISS."""

from __future__ import annotations

import asyncio
import logging
import re
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, cast

import numpy as np

from retrieval.chunking import ChunkingConfig, chunk_text
from retrieval.errors import CollectionExists, CollectionNotFound, DocumentNotFound, InvalidName
from retrieval.filters import Filter, as_filter
from retrieval.fusion import QueryOptions
from retrieval.index import INDEX_KINDS, VectorIndex
from retrieval.search import SearchRequest, SearchResult, search
from retrieval.store import CollectionRecord, DocumentRecord, DocumentStore, NewDocument
from shared_engine.errors import InvalidRequest

logger = logging.getLogger(__name__)

COLLECTION_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")
DOCUMENT_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$")


class Embedder(Protocol):
    """What a collection needs of its embedding model (the embedding service provides it)."""

    @property
    def dimensions(self) -> int: ...

    @property
    def max_model_len(self) -> int: ...

    @property
    def tokenizer(self) -> Any: ...

    def tokenize(self, texts: Sequence[str], truncate: bool) -> list[list[int]]: ...

    async def embed(self, token_lists: Sequence[list[int]]) -> list[np.ndarray]: ...


class ImageEmbedder(Protocol):
    """What a collection of images needs of its vision model: each image is one document and one vector."""

    modality: str  # "image"

    @property
    def dimensions(self) -> int: ...

    async def embed_images(self, images: Sequence[bytes]) -> list[np.ndarray]: ...


def _is_image(embedder: Embedder | ImageEmbedder) -> bool:
    return getattr(embedder, "modality", "text") == "image"


@dataclass(frozen=True)
class DocumentInput:
    """A text document, or (in a collection of images) an image with an optional caption as ``text``."""

    text: str = ""
    id: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict)
    image: bytes | None = None


def check_name(name: str, pattern: re.Pattern[str], what: str) -> str:
    # fullmatch: with match, `$` also matches before a final newline, so "notes\n" would be a name.
    if not pattern.fullmatch(name):
        raise InvalidName(f"invalid {what} {name!r}: it must match {pattern.pattern}", param=what)
    return name


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
            known = ", ".join(sorted(self.embedders)) or "none"
            raise InvalidRequest(
                f"model {model!r} is not an embedding model served here; known: {known}", param="model"
            )
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

    def check_chunking(self, model: str, chunking: ChunkingConfig) -> None:
        """Chunks must fit what the embedding model reads."""
        embedder = self.embedders[model]
        window = 0 if _is_image(embedder) else cast(Embedder, embedder).max_model_len - 2
        if window and chunking.chunk_tokens > window:
            raise InvalidRequest(
                f"chunk_tokens {chunking.chunk_tokens} exceeds what {model} reads "
                f"({window} tokens besides its special tokens)",
                param="chunk_tokens",
            )

    def drop(self, name: str) -> None:
        self._index(name)
        self.store.drop_collection(name)
        del self.indexes[name]
        (self.dir / f"{name}.faiss").unlink(missing_ok=True)

    # -- documents -------------------------------------------------------------------------------------

    async def _embed_documents(
        self, record: CollectionRecord, docs: Sequence[DocumentInput], chunking: ChunkingConfig | None
    ) -> tuple[list[list[str]], list[np.ndarray]]:
        """Each document's chunks (an image is one chunk: its caption) and one vector per chunk."""
        embedder = self.embedders[record.model]
        if _is_image(embedder):
            images = [d.image for d in docs]
            missing = [i for i, image in enumerate(images) if image is None]
            if missing:
                raise InvalidRequest(
                    f"documents[{missing[0]}] has no image; collection {record.name!r} holds images",
                    param="documents",
                )
            vectors = await embedder.embed_images(images)  # type: ignore[union-attr,arg-type]
            return [[d.text] for d in docs], vectors
        if any(d.image is not None for d in docs):
            raise InvalidRequest(f"collection {record.name!r} holds text, not images", param="documents")
        chunking = chunking or ChunkingConfig(record.chunk_tokens, record.overlap_tokens)
        pieces = [chunk_text(d.text, embedder.tokenizer, chunking) for d in docs]  # type: ignore[union-attr]
        for i, p in enumerate(pieces):
            if not p:
                raise InvalidRequest(f"documents[{i}] has no text", param="documents")
        flat = [c for p in pieces for c in p]
        return pieces, await embedder.embed(embedder.tokenize(flat, truncate=True))  # type: ignore[union-attr]

    async def add(
        self, name: str, docs: Sequence[DocumentInput], chunking: ChunkingConfig | None = None
    ) -> tuple[list[str], int]:
        """Chunk (by the collection's chunking unless ``chunking`` says otherwise), embed and store
        documents; returns their ids and the number of chunks. Durable on return."""
        record = self.record(name)
        if chunking is not None:
            self.check_chunking(record.model, chunking)
        ids = [check_name(d.id, DOCUMENT_ID, "id") if d.id else uuid.uuid4().hex for d in docs]
        if len(set(ids)) != len(ids):
            raise InvalidRequest("document ids in one request must be distinct", param="documents")
        pieces, vectors = await self._embed_documents(record, docs, chunking)
        flat = [c for p in pieces for c in p]
        new, at = [], 0
        for doc, doc_id, p in zip(docs, ids, pieces, strict=True):
            new.append(
                NewDocument(doc_id, doc.text, dict(doc.metadata), p, np.stack(vectors[at : at + len(p)]))
            )
            at += len(p)
        async with self.lock:
            replaced = self.store.existing_ids(name, ids)
            old_chunks = [c for doc_id in replaced for c in self.store.chunk_ids_of(name, doc_id)]
            chunk_ids = self.store.add_documents(name, new)
            index = self._index(name)
            if old_chunks and index.removal_rebuilds:
                index.rebuild(self.store.iter_vectors(name))  # the store already holds the new chunks
            else:
                index.remove(old_chunks, lambda: self.store.iter_vectors(name))
                new_ids = np.array([c for ids_ in chunk_ids for c in ids_])
                index.add(new_ids, np.concatenate([d.vectors for d in new]))
            if index.needs_training:
                index.rebuild(self.store.iter_vectors(name))
        return ids, len(flat)

    def get(self, name: str, doc_id: str) -> DocumentRecord:
        self._index(name)
        doc = self.store.document(name, doc_id)
        if doc is None:
            raise DocumentNotFound(name, doc_id)
        return doc

    async def delete(self, name: str, doc_id: str) -> None:
        index = self._index(name)
        async with self.lock:
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
        embedder = self.embedders[record.model]
        vector: np.ndarray | None = None
        if _is_image(embedder):
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
        request = SearchRequest(name, vector, text, top_k, options, where)
        return search(self.store, self._index(name), request)

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
