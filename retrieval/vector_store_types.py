"""What vector stores take and give: a file to attach, search options, a search hit."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from retrieval.chunking import ChunkingConfig
from retrieval.filters import Filter
from shared_engine.errors import InvalidRequest

RANKERS = ("auto", "default-2024-11-15", "none")
MAX_RESULTS = 50
PASSAGES = 3


@dataclass(frozen=True)
class FileAttachment:
    """A file to attach, with its attributes and chunking (None: the vector store's)."""

    file_id: str
    attributes: dict[str, Any] = field(default_factory=dict)
    chunking: ChunkingConfig | None = None


@dataclass(frozen=True)
class SearchHit:
    file_id: str
    filename: str
    score: float
    attributes: dict[str, Any]
    content: tuple[str, ...]


@dataclass(frozen=True)
class SearchOptions:
    max_num_results: int = 10
    filters: Filter | None = None
    ranker: str = "auto"
    score_threshold: float = 0.0

    def __post_init__(self) -> None:
        if not 1 <= self.max_num_results <= MAX_RESULTS:
            raise InvalidRequest(
                f"max_num_results must be in [1, {MAX_RESULTS}], got {self.max_num_results}",
                param="max_num_results",
            )
        if self.ranker not in RANKERS:
            raise InvalidRequest(
                f"ranker must be one of {', '.join(RANKERS)}, got {self.ranker!r}", param="ranker"
            )
        if not 0.0 <= self.score_threshold <= 1.0:
            raise InvalidRequest(
                f"score_threshold must be in [0, 1], got {self.score_threshold}", param="score_threshold"
            )
