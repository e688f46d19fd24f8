"""How a query's rankings become its answer: the options a query takes, reciprocal rank fusion of the
dense and lexical rankings, and grouping chunks into distinct documents.

Plain functions over (chunk id, score) lists: no store, no index, no model.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TypeVar

from shared_engine.errors import InvalidRequest

MODES = ("hybrid", "dense", "lexical")
GROUP_BY = ("document", "chunk")
RRF_K = 60  # the constant of Cormack et al. (2009); it damps the weight of the very first ranks
MAX_PASSAGES = 20

T = TypeVar("T")


@dataclass(frozen=True)
class FusionWeights:
    """Weights of the two rankings in reciprocal rank fusion: a chunk at rank r (from 1) in a ranking of
    weight w adds w / (k + r) to its score."""

    dense: float = 1.0
    lexical: float = 1.0
    k: int = RRF_K

    def __post_init__(self) -> None:
        if not (self.dense >= 0 and self.lexical >= 0) or self.dense + self.lexical <= 0:
            raise InvalidRequest(
                f"fusion weights must be >= 0 and not both 0, got dense={self.dense}, lexical={self.lexical}",
                param="weights",
            )
        if self.k < 1:
            raise InvalidRequest(f"the fusion constant k must be >= 1, got {self.k}", param="weights")


@dataclass(frozen=True)
class QueryOptions:
    """How to rank (``mode``), what one result is (a document with its best ``passages``, or one chunk),
    and the fusion weights of hybrid ranking."""

    mode: str = "hybrid"
    group_by: str = "document"
    passages: int = 3
    weights: FusionWeights = field(default_factory=FusionWeights)

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise InvalidRequest(f"mode must be one of {', '.join(MODES)}, got {self.mode!r}", param="mode")
        if self.group_by not in GROUP_BY:
            raise InvalidRequest(
                f"group_by must be one of {', '.join(GROUP_BY)}, got {self.group_by!r}", param="group_by"
            )
        if not 1 <= self.passages <= MAX_PASSAGES:
            raise InvalidRequest(
                f"passages must be in [1, {MAX_PASSAGES}], got {self.passages}", param="passages"
            )

    def candidates(self, top_k: int) -> int:
        """How many chunks to take from each ranking for ``top_k`` results. Grouping by document needs
        more than ``top_k`` chunks (a document's chunks often rank together), and fusion needs depth in
        both lists for a chunk ranked well in one to meet its rank in the other."""
        if self.group_by == "chunk":
            return max(top_k, 50) if self.mode == "hybrid" else top_k
        return max(top_k * self.passages * 4, 100)


def reciprocal_rank_fusion(
    rankings: Sequence[tuple[Sequence[tuple[int, float]], float]], k: int = RRF_K
) -> list[tuple[int, float]]:
    """Fuse (ranking, weight) pairs, each ranking (chunk id, score) best first, into one ranking by
    Σ weight / (k + rank). Only ranks count, so cosine similarities and BM25 scores need no common
    scale. Ties keep the order in which chunks were first seen."""
    fused: dict[int, float] = {}
    for ranking, weight in rankings:
        if weight <= 0:
            continue
        for rank, (chunk_id, _) in enumerate(ranking, start=1):
            fused[chunk_id] = fused.get(chunk_id, 0.0) + weight / (k + rank)
    return sorted(fused.items(), key=lambda item: -item[1])


def group_by_document(
    ranked: Sequence[T], document_of: Callable[[T], str], top_k: int, passages: int
) -> list[list[T]]:
    """The first ``top_k`` distinct documents of a ranking, each with its first ``passages`` items (its
    best passages, best first). A document ranks where its best passage does."""
    groups: dict[str, list[T]] = {}
    for item in ranked:
        doc = document_of(item)
        group = groups.get(doc)
        if group is None:
            if len(groups) == top_k:
                continue
            groups[doc] = group = []
        if len(group) < passages:
            group.append(item)
    return list(groups.values())
