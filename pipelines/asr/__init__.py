"""Speech recognition: Whisper (from Hugging Face or CTranslate2 files), encoder micro-batched,
decoder on the shared engine."""

from pipelines.asr.alignment import Word
from pipelines.asr.audio import AudioTooLong, AudioTooShort, AudioTruncated, decode_audio
from pipelines.asr.config import ASRPipelineConfig
from pipelines.asr.pipeline import ASRPipeline, Transcription
from pipelines.asr.segments import Segment, compression_ratio

__all__ = [
    "ASRPipeline",
    "ASRPipelineConfig",
    "AudioTooLong",
    "AudioTooShort",
    "AudioTruncated",
    "Segment",
    "Transcription",
    "Word",
    "compression_ratio",
    "decode_audio",
]
