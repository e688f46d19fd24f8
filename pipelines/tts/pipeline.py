"""The text-to-speech pipeline: validate, phonemize into sentences, synthesize them in micro-batches,
join them with a short silence."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np

from pipelines.sources import resolve_source
from pipelines.tts.phonemize import split_long
from pipelines.tts.voice import PiperVoice
from shared_engine.compute import compute_lane
from shared_engine.device import resolve_device
from shared_engine.errors import InvalidRequest
from shared_engine.micro_batcher import BatchObserver, BatchStats, MicroBatchConfig, MicroBatcher

logger = logging.getLogger(__name__)

MAX_INPUT_CHARS = 4096
MIN_SPEED, MAX_SPEED = 0.25, 4.0
# A sentence longer than this (phonemes, ≈ 20 s of speech) is cut at clause breaks: VITS attention grows
# with the square of the length, and one huge item would hold up the batches around it.
MAX_SEGMENT_PHONEMES = 400


def default_batching(on_gpu: bool) -> MicroBatchConfig:
    """Batches of up to 4096 phoneme ids (≈ 45 per second of speech: ~90 s of audio per forward) on a GPU;
    one sentence per forward on CPU, where onnxruntime gains nothing from a batch and padding the shorter
    sentences to the longest made the same sentences 1.0-1.5x slower than one by one."""
    if on_gpu:
        return MicroBatchConfig(max_batch_tokens=4096, max_batch_size=16, max_wait_ms=5.0)
    return MicroBatchConfig(max_batch_tokens=4096, max_batch_size=1, max_wait_ms=0.0)


@dataclass(frozen=True)
class TTSPipelineConfig:
    name: str
    source: str
    device: str = "auto"
    batching: MicroBatchConfig | None = None  # None: ``default_batching`` for where the voice runs
    intra_op_threads: int = 0  # 0: onnxruntime's default (one per core)
    noise_scale: float | None = None  # None: the voice's own (its JSON's ``inference`` section)
    noise_w: float | None = None
    sentence_silence: float = 0.2  # seconds between sentences, as Piper
    normalize_audio: bool = True  # each sentence scaled to peak 1.0, as Piper

    def __post_init__(self) -> None:
        if not self.name or not self.source:
            raise ValueError("a TTS model needs a name and a source")
        if self.intra_op_threads < 0:
            raise ValueError(f"intra_op_threads must be >= 0, got {self.intra_op_threads}")
        for label, value in (("noise_scale", self.noise_scale), ("noise_w", self.noise_w)):
            if value is not None and value < 0:
                raise ValueError(f"{label} must be >= 0, got {value}")
        if self.sentence_silence < 0:
            raise ValueError(f"sentence_silence must be >= 0, got {self.sentence_silence}")


@dataclass(frozen=True)
class Segment:
    """One sentence (or piece of a long one) to synthesize: the micro-batcher's item."""

    ids: tuple[int, ...]
    speaker: int
    length_scale: float


class TTSPipeline:
    task = "tts"

    def __init__(self, config: TTSPipelineConfig, on_batch: BatchObserver | None = None) -> None:
        self.config = config
        self.name = config.name
        path = resolve_source(config.source)
        self.device = resolve_device(config.device)
        self.voice = PiperVoice(path, str(self.device), config.intra_op_threads)
        voice_config = self.voice.config
        self.noise_scale = voice_config.noise_scale if config.noise_scale is None else config.noise_scale
        self.noise_w = voice_config.noise_w if config.noise_w is None else config.noise_w
        batching = config.batching or default_batching(self.voice.on_gpu)
        if not self.voice.supports_batching:
            batching = replace(batching, max_batch_size=1)
        self.batcher: MicroBatcher[Segment, np.ndarray] = MicroBatcher(
            self.run_batch,
            lambda segment: len(segment.ids),
            batching,
            name=f"tts-{config.name}",
            lane=compute_lane(self.device),
            on_batch=on_batch,
        )
        logger.info("TTS model %s: voices %s from %s (%s)", self.name, self.voices, path, self.device)

    @property
    def sample_rate(self) -> int:
        return self.voice.sample_rate

    @property
    def voices(self) -> list[str]:
        return list(self.voice.speakers)

    async def synthesize(self, text: str, voice: str | None = None, speed: float = 1.0) -> np.ndarray:
        """Speech for ``text``: float32 mono samples in [-1, 1] at ``sample_rate``."""
        speaker = self.check(text, voice, speed)
        sentences = await asyncio.to_thread(self.sentence_ids, text)
        length_scale = self.voice.config.length_scale / speed
        segments = [Segment(ids, speaker, length_scale) for ids in sentences]
        # A batch's worth at a time, so that a long text does not hold the queue: other requests'
        # sentences (and other work on the same compute lane) take turns with its own.
        step = self.batcher.config.max_batch_size
        pieces: list[np.ndarray] = []
        for start in range(0, len(segments), step):
            pieces += await self.batcher.submit(segments[start : start + step])
        return self.join(pieces, speed)

    def check(self, text: str, voice: str | None, speed: float) -> int:
        """The speaker id for a valid request; ``InvalidRequest`` naming what is wrong otherwise."""
        if not text or not text.strip():
            raise InvalidRequest("input is empty: give the text to speak", param="input")
        if len(text) > MAX_INPUT_CHARS:
            raise InvalidRequest(
                f"input has {len(text)} characters, more than the limit of {MAX_INPUT_CHARS}", param="input"
            )
        if not MIN_SPEED <= speed <= MAX_SPEED:
            raise InvalidRequest(f"speed must be between {MIN_SPEED} and {MAX_SPEED}, got {speed}", "speed")
        speakers = self.voice.speakers
        if voice is None:
            return next(iter(speakers.values()))
        if voice not in speakers:
            raise InvalidRequest(
                f"unknown voice {voice!r} for model {self.name}; available: {', '.join(speakers)}", "voice"
            )
        return speakers[voice]

    def sentence_ids(self, text: str) -> list[tuple[int, ...]]:
        """Phoneme ids of each sentence of ``text`` (long ones cut), skipping those with nothing to say."""
        spoken = [s for s in self.voice.phonemize(text) if any(ch.isalpha() for ch in s)]
        if not spoken:
            raise InvalidRequest("input has nothing that can be spoken", param="input")
        pieces = [piece for sentence in spoken for piece in split_long(sentence, MAX_SEGMENT_PHONEMES)]
        return [tuple(self.voice.phoneme_ids(piece)) for piece in pieces]

    def run_batch(self, batch: list[Segment]) -> list[np.ndarray]:
        """Synthesize ``batch`` right now, bypassing the micro-batcher (which calls this)."""
        # One set of scales per forward: segments at different speeds share a batch but not a forward.
        groups: dict[float, list[int]] = {}
        for row, segment in enumerate(batch):
            groups.setdefault(segment.length_scale, []).append(row)
        results: list[np.ndarray] = [np.empty(0, dtype=np.float32)] * len(batch)
        for length_scale, rows in groups.items():
            audio = self.voice.synthesize_ids(
                [batch[row].ids for row in rows],
                length_scale,
                self.noise_scale,
                self.noise_w,
                [batch[row].speaker for row in rows],
            )
            for row, samples in zip(rows, audio, strict=True):
                results[row] = self.postprocess(samples)
        return results

    def postprocess(self, samples: np.ndarray) -> np.ndarray:
        peak = float(np.max(np.abs(samples))) if samples.size else 0.0
        if self.config.normalize_audio and peak > 1e-8:
            samples = samples / peak
        return np.clip(samples, -1.0, 1.0).astype(np.float32)

    def join(self, pieces: Sequence[np.ndarray], speed: float = 1.0) -> np.ndarray:
        pause = self.config.sentence_silence / speed
        silence = np.zeros(round(pause * self.sample_rate), dtype=np.float32)
        parts: list[np.ndarray] = []
        for index, piece in enumerate(pieces):
            if index:
                parts.append(silence)
            parts.append(piece)
        return np.concatenate(parts).astype(np.float32, copy=False)

    def stats(self) -> BatchStats:
        return self.batcher.stats()

    @property
    def is_alive(self) -> bool:
        return self.batcher.is_alive

    def shutdown(self) -> None:
        self.batcher.shutdown()
