"""What goes into a collection: the embedding models it needs, documents as callers give them, the names
of collections and documents, and how documents become chunks and vectors."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, cast

import numpy as np

from retrieval.chunking import ChunkingConfig, chunk_text
from retrieval.errors import InvalidName
from retrieval.store import CollectionRecord
from shared_engine.errors import InvalidRequest

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


def is_image(embedder: Embedder | ImageEmbedder) -> bool:
    return getattr(embedder, "modality", "text") == "image"


def text_window(embedder: Embedder | ImageEmbedder) -> int:
    """The tokens a chunk may have (0: no limit, for images), the special tokens aside."""
    return 0 if is_image(embedder) else cast(Embedder, embedder).max_model_len - 2


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


async def embed_documents(
    embedder: Embedder | ImageEmbedder,
    record: CollectionRecord,
    docs: Sequence[DocumentInput],
    chunking: ChunkingConfig | None,
) -> tuple[list[list[str]], list[np.ndarray]]:
    """Each document's chunks (an image is one chunk: its caption) and one vector per chunk."""
    if is_image(embedder):
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
    # A file of megabytes takes seconds to chunk and tokenize: on a worker thread, not the event loop.
    pieces, ids = await asyncio.to_thread(_chunks_and_ids, embedder, docs, chunking)  # type: ignore[arg-type]
    return pieces, await embedder.embed(ids)  # type: ignore[union-attr]


def _chunks_and_ids(
    embedder: Embedder, docs: Sequence[DocumentInput], chunking: ChunkingConfig
) -> tuple[list[list[str]], list[list[int]]]:
    pieces = [chunk_text(d.text, embedder.tokenizer, chunking) for d in docs]
    for i, p in enumerate(pieces):
        if not p:
            raise InvalidRequest(f"documents[{i}] has no text", param="documents")
    return pieces, embedder.tokenize([c for p in pieces for c in p], truncate=True)
