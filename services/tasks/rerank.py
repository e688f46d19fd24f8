"""The rerank model service as the gateway sees it (in-process implementation)."""

from __future__ import annotations

from collections.abc import Sequence

from pipelines.llm.loader import prepare_model_folder
from pipelines.rerank import RerankPipeline, RerankPipelineConfig, RerankScores
from pipelines.rerank.pipeline import DEFAULT_BATCHING
from services.config.models import ModelSpec, RerankOptions
from services.config.settings import Settings
from services.observability.timing import timed
from shared_engine.micro_batcher import BatchObserver, BatchStats


class RerankService:
    task = "rerank"

    def __init__(self, spec: ModelSpec, settings: Settings, on_batch: BatchObserver | None = None) -> None:
        self.spec = spec
        self.name = spec.name
        options = spec.rerank or RerankOptions()
        # A GGUF chat model (the default reranker) is converted once into the model cache, as for chat.
        folder = prepare_model_folder(spec.source, settings.model_cache_dir)
        config = RerankPipelineConfig(
            name=spec.name,
            folder=folder,
            dtype=spec.dtype,
            device=spec.device,
            method=options.method,
            max_input_tokens=options.max_input_tokens,
            batching=spec.batching.to_config() if spec.batching else DEFAULT_BATCHING,
        )
        self.pipeline = RerankPipeline(config, on_batch)

    @property
    def method(self) -> str:
        return self.pipeline.method

    @property
    def max_model_len(self) -> int:
        return self.pipeline.max_input_tokens

    @property
    def is_alive(self) -> bool:
        return self.pipeline.is_alive

    async def rerank(self, query: str, documents: Sequence[str]) -> RerankScores:
        """One relevance score in [0, 1] per document, in the documents' order."""
        return await timed(self.pipeline.score(query, documents))

    def stats(self) -> BatchStats:
        return self.pipeline.stats()

    def shutdown(self) -> None:
        self.pipeline.shutdown()
