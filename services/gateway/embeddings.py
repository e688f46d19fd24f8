"""POST /v1/embeddings: texts or token ids → vectors (float lists or base64 float32)."""

from __future__ import annotations

import base64
from typing import Any

import numpy as np

from services.gateway.schemas import Embedding, EmbeddingList, EmbeddingRequest, EmbeddingUsage
from services.registry import Embeddings
from shared_engine.errors import InvalidRequest
from shared_engine.offload import off_the_loop_if_large, text_size

MAX_INPUTS = 2048  # OpenAI's limit on inputs per request


def token_lists(service: Embeddings, body: EmbeddingRequest) -> list[list[int]]:
    raw: Any = body.input
    if isinstance(raw, str) or (raw and all(isinstance(x, int) for x in raw)):
        raw = [raw]
    if not raw:
        raise InvalidRequest("input must not be empty", param="input")
    if len(raw) > MAX_INPUTS:
        raise InvalidRequest(f"input has {len(raw)} items; at most {MAX_INPUTS} per request", param="input")
    if all(isinstance(x, str) for x in raw):
        if (empty := next((i for i, x in enumerate(raw) if not x), None)) is not None:
            raise InvalidRequest(f"input {empty} is an empty string", param="input")
        return service.tokenize(raw, body.truncate)
    if not all(isinstance(x, list) for x in raw):
        raise InvalidRequest(
            "input must be a string, a list of strings, a list of token ids, or a list of token-id lists",
            param="input",
        )
    vocab = service.vocab_size
    out = []
    for i, ids in enumerate(raw):
        if not ids:
            raise InvalidRequest(f"input {i} is empty", param="input")
        if any(t < 0 or t >= vocab for t in ids):
            raise InvalidRequest(
                f"input {i} has token ids outside the vocabulary [0, {vocab})", param="input"
            )
        out.append(service.check_length(i, ids, body.truncate))
    return out


def shorten(vector: np.ndarray, dimensions: int | None) -> np.ndarray:
    """Keep the first ``dimensions`` components and renormalise (Matryoshka-style truncation)."""
    if dimensions is None:
        return vector
    cut = vector[:dimensions]
    norm = float(np.linalg.norm(cut))
    return cut / norm if norm > 0 else cut


def encode(vector: np.ndarray, encoding_format: str) -> list[float] | str:
    if encoding_format == "base64":
        return base64.b64encode(vector.astype("<f4").tobytes()).decode("ascii")
    return [float(x) for x in vector]


def check_dimensions(dimensions: int | None, available: int) -> None:
    if dimensions is not None and dimensions > available:
        raise InvalidRequest(
            f"dimensions must be at most {available} for this model, got {dimensions}", param="dimensions"
        )


async def create(service: Embeddings, body: EmbeddingRequest) -> EmbeddingList:
    check_dimensions(body.dimensions, service.dimensions)
    inputs = await off_the_loop_if_large(text_size(body.input), lambda: token_lists(service, body))
    vectors = await service.embed(inputs)
    data = [
        Embedding(index=i, embedding=encode(shorten(v, body.dimensions), body.encoding_format))
        for i, v in enumerate(vectors)
    ]
    tokens = sum(len(ids) for ids in inputs)
    return EmbeddingList(
        data=data, model=body.model, usage=EmbeddingUsage(prompt_tokens=tokens, total_tokens=tokens)
    )
