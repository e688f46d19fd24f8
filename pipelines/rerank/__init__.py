"""Reranking: a cross-encoder, or a causal LM used as one, scores (query, passage) pairs in micro-batches."""

from pipelines.rerank.pipeline import RerankPipeline, RerankPipelineConfig, RerankScores
from pipelines.rerank.prompts import METHODS, PairInput, RerankTokenizer, resolve_method

__all__ = [
    "METHODS",
    "PairInput",
    "RerankPipeline",
    "RerankPipelineConfig",
    "RerankScores",
    "RerankTokenizer",
    "resolve_method",
]
