"""Text to speech: Piper (VITS) voices on onnxruntime, phonemes from espeak-ng, on the engine's
micro-batcher."""

from pipelines.tts.audio_format import FORMATS, check_format, encode_audio, output_rate
from pipelines.tts.phonemize import phonemize
from pipelines.tts.pipeline import MAX_INPUT_CHARS, TTSPipeline, TTSPipelineConfig
from pipelines.tts.voice import PiperVoice, VoiceConfig

__all__ = [
    "FORMATS",
    "MAX_INPUT_CHARS",
    "PiperVoice",
    "TTSPipeline",
    "TTSPipelineConfig",
    "VoiceConfig",
    "check_format",
    "encode_audio",
    "output_rate",
    "phonemize",
]
