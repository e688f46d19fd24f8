"""Split text into overlapping windows counted in the embedding model's own tokens."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class ChunkingConfig:
    chunk_tokens: int = 200
    overlap_tokens: int = 40

    def __post_init__(self) -> None:
        if self.chunk_tokens < 8:
            raise ValueError(f"chunk_tokens must be >= 8, got {self.chunk_tokens}")
        if not 0 <= self.overlap_tokens < self.chunk_tokens:
            raise ValueError(
                f"overlap_tokens must be in [0, chunk_tokens), got {self.overlap_tokens} "
                f"for chunk_tokens {self.chunk_tokens}"
            )


def chunk_text(text: str, tokenizer: Any, config: ChunkingConfig) -> list[str]:
    """Windows of ``chunk_tokens`` tokens, each starting ``chunk_tokens - overlap_tokens`` after the
    last, cut from the original text by the tokenizer's character offsets (so no text is rewritten)."""
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    offsets: list[tuple[int, int]] = enc["offset_mapping"]
    if not offsets:
        return [text] if text.strip() else []
    step = config.chunk_tokens - config.overlap_tokens
    chunks = []
    for start in range(0, len(offsets), step):
        window = offsets[start : start + config.chunk_tokens]
        piece = text[window[0][0] : window[-1][1]].strip()
        if piece:
            chunks.append(piece)
        if start + config.chunk_tokens >= len(offsets):
            break
    return chunks
