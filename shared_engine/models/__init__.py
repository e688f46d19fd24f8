"""Decoder architectures (and encoder-decoders' decoders) the engine runs with its own paged attention."""

from shared_engine.models import llama as _llama  # noqa: F401  (registers Llama and Qwen2)
from shared_engine.models import whisper as _whisper  # noqa: F401  (registers Whisper's decoder)
from shared_engine.models.base import MODEL_REGISTRY, DecoderArch, DecoderModel

__all__ = ["MODEL_REGISTRY", "DecoderArch", "DecoderModel"]
