"""Text embeddings: sentence-transformers / BERT-style encoders on the engine's micro-batcher."""

from pipelines.embedding.pipeline import EmbeddingPipeline, EmbeddingPipelineConfig
from pipelines.embedding.tokenizer import EmbeddingTokenizer, InputTooLong

__all__ = ["EmbeddingPipeline", "EmbeddingPipelineConfig", "EmbeddingTokenizer", "InputTooLong"]
