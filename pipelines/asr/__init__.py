"""Speech recognition: Whisper (from Hugging Face or CTranslate2 files), encoder micro-batched,
decoder on the shared engine."""

from pipelines.asr.audio import AudioTooLong, decode_audio
from pipelines.asr.config import ASRPipelineConfig
from pipelines.asr.pipeline import ASRPipeline, Transcription
from pipelines.asr.segments import Segment, compression_ratio

__all__ = [
    "ASRPipeline",
    "ASRPipelineConfig",
    "AudioTooLong",
    "Segment",
    "Transcription",
    "compression_ratio",
    "decode_audio",
]
