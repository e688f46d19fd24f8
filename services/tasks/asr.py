"""The speech recognition service as the gateway sees it (in-process implementation)."""

from __future__ import annotations

from dataclasses import replace

from pipelines.asr import ASRPipeline, ASRPipelineConfig, Transcription, decode_audio
from services.config.models import ModelSpec
from services.config.settings import Settings
from services.observability.timing import timed
from shared_engine.async_engine import StepObserver
from shared_engine.llm_engine import EngineStats
from shared_engine.micro_batcher import BatchObserver


class ASRService:
    task = "asr"

    def __init__(
        self,
        spec: ModelSpec,
        settings: Settings,
        on_step: StepObserver | None = None,
        on_batch: BatchObserver | None = None,
    ) -> None:
        self.spec = spec
        self.name = spec.name
        self.max_audio_seconds = settings.max_audio_seconds
        config = ASRPipelineConfig(
            name=spec.name,
            source=spec.source,
            parts=spec.parts,
            dtype=spec.dtype,
            device=spec.device,
            engine=spec.engine.to_engine_config(),
            quantization=spec.quantization_config,
            encoder_quantization=spec.encoder_quantization,
        )
        if spec.batching is not None:
            config = replace(config, batching=spec.batching.to_config())
        self.pipeline = ASRPipeline(config, settings.model_cache_dir, on_step, on_batch)

    @property
    def max_model_len(self) -> None:
        return None

    @property
    def multilingual(self) -> bool:
        return self.pipeline.multilingual

    @property
    def is_alive(self) -> bool:
        return self.pipeline.is_alive

    async def transcribe(
        self,
        request_id: str,
        audio_file: bytes,
        *,
        task: str,
        language: str | None,
        prompt: str | None,
        temperature: float,
        word_timestamps: bool = False,
    ) -> Transcription:
        # Resampling is torch work: it takes its turn on the compute lane.
        audio = await self.pipeline.lane.run_async(decode_audio, audio_file, self.max_audio_seconds)
        return await timed(
            self.pipeline.transcribe(
                request_id,
                audio,
                task=task,
                language=language,
                prompt=prompt,
                temperature=temperature,
                word_timestamps=word_timestamps,
            )
        )

    def stats(self) -> EngineStats:
        return self.pipeline.stats()

    def shutdown(self) -> None:
        self.pipeline.shutdown()
