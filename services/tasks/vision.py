"""The vision model service as the gateway sees it (in-process implementation)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

import numpy as np

from pipelines.vision import Label, VisionPipeline, VisionPipelineConfig
from services.config.models import ModelSpec
from services.config.settings import Settings
from services.observability.timing import timed
from shared_engine.micro_batcher import BatchObserver, BatchStats


class VisionService:
    task = "vision"
    modality = "image"  # what its embeddings are of (collections of images use it)

    def __init__(self, spec: ModelSpec, settings: Settings, on_batch: BatchObserver | None = None) -> None:
        self.spec = spec
        self.name = spec.name
        config = VisionPipelineConfig(
            name=spec.name,
            source=spec.source,
            dtype=spec.dtype,
            device=spec.device,
            max_pixels=settings.max_image_pixels,
        )
        if spec.batching is not None:
            config = replace(config, batching=spec.batching.to_config())
        self.pipeline = VisionPipeline(config, on_batch)

    @property
    def dimensions(self) -> int:
        return self.pipeline.dimensions

    @property
    def max_model_len(self) -> None:
        return None

    @property
    def is_alive(self) -> bool:
        return self.pipeline.is_alive

    async def classify(self, images: Sequence[bytes], top_k: int) -> list[list[Label]]:
        return await timed(self.pipeline.classify(images, top_k))  # top_k checked before any decoding

    async def embed_images(self, images: Sequence[bytes]) -> list[np.ndarray]:
        return await timed(self.pipeline.embed(images))

    def stats(self) -> BatchStats:
        return self.pipeline.stats()

    def shutdown(self) -> None:
        self.pipeline.shutdown()
