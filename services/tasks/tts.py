"""The speech synthesis service as the gateway sees it (in-process implementation)."""

from __future__ import annotations

import asyncio

from pipelines.tts import TTSPipeline, TTSPipelineConfig, check_format, encode_audio
from services.config.models import ModelSpec
from services.observability.timing import timed
from shared_engine.micro_batcher import BatchObserver, BatchStats


class TTSService:
    task = "tts"

    def __init__(self, spec: ModelSpec, on_batch: BatchObserver | None = None) -> None:
        self.spec = spec
        self.name = spec.name
        config = TTSPipelineConfig(
            name=spec.name,
            source=spec.source,
            device=spec.device,
            batching=spec.batching.to_config() if spec.batching else None,
        )
        self.pipeline = TTSPipeline(config, on_batch)

    @property
    def voices(self) -> list[str]:
        return self.pipeline.voices

    @property
    def sample_rate(self) -> int:
        return self.pipeline.sample_rate

    @property
    def max_model_len(self) -> None:
        return None

    @property
    def is_alive(self) -> bool:
        return self.pipeline.is_alive

    async def speech(self, text: str, voice: str | None, speed: float, fmt: str) -> tuple[bytes, str]:
        """Encoded audio and its content type."""
        check_format(fmt)  # before the synthesis it would waste
        samples = await timed(self.pipeline.synthesize(text, voice, speed))
        return await asyncio.to_thread(encode_audio, samples, self.sample_rate, fmt)

    def stats(self) -> BatchStats:
        return self.pipeline.stats()

    def shutdown(self) -> None:
        self.pipeline.shutdown()
