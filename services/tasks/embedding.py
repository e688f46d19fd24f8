"""The embedding model service as the gateway sees it (in-process implementation)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from pipelines.embedding import EmbeddingPipeline, EmbeddingPipelineConfig
from pipelines.embedding.tokenizer import EmbeddingTokenizer
from services.config.models import ModelSpec
from services.observability.timing import timed
from shared_engine.micro_batcher import BatchObserver, BatchStats, MicroBatchConfig


class EmbeddingService:
    task = "embedding"

    def __init__(self, spec: ModelSpec, on_batch: BatchObserver | None = None) -> None:
        self.spec = spec
        self.name = spec.name
        config = EmbeddingPipelineConfig(
            name=spec.name,
            source=spec.source,
            dtype=spec.dtype,
            device=spec.device,
            batching=spec.batching.to_config() if spec.batching else MicroBatchConfig(),
        )
        self.pipeline = EmbeddingPipeline(config, on_batch)

    @property
    def max_model_len(self) -> int:
        return self.pipeline.max_input_tokens

    @property
    def dimensions(self) -> int:
        return self.pipeline.dimensions

    @property
    def tokenizer(self) -> Any:
        return self.pipeline.tokenizer

    @property
    def text(self) -> EmbeddingTokenizer:
        return self.pipeline.text

    @property
    def vocab_size(self) -> int:
        return self.pipeline.vocab_size

    @property
    def is_alive(self) -> bool:
        return self.pipeline.is_alive

    def tokenize(self, texts: Sequence[str], truncate: bool) -> list[list[int]]:
        return self.pipeline.tokenize(texts, truncate)

    def check_length(self, index: int, ids: list[int], truncate: bool) -> list[int]:
        return self.pipeline.check_length(index, ids, truncate)

    async def embed(self, token_lists: Sequence[list[int]]) -> list[np.ndarray]:
        return await timed(self.pipeline.embed(token_lists))

    def stats(self) -> BatchStats:
        return self.pipeline.stats()

    def shutdown(self) -> None:
        self.pipeline.shutdown()
