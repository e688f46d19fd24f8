"""Synthesized audio → the bytes of a response format: WAV and FLAC (16-bit), or raw 16-bit PCM."""

from __future__ import annotations

import io

import numpy as np
import soundfile

from shared_engine.errors import InvalidRequest

# format → (libsndfile container, content type); None: headerless little-endian samples, as OpenAI's pcm.
FORMATS: dict[str, tuple[str | None, str]] = {
    "wav": ("WAV", "audio/wav"),
    "flac": ("FLAC", "audio/flac"),
    "pcm": (None, "audio/pcm"),
}


def to_pcm16(samples: np.ndarray) -> np.ndarray:
    """Mono float samples in [-1, 1] (clipped; NaN → 0) as int16."""
    if samples.ndim != 1:
        raise ValueError(f"expected mono samples (1-D), got shape {samples.shape}")
    clean = np.clip(np.nan_to_num(samples.astype(np.float32), nan=0.0), -1.0, 1.0)
    return np.round(clean * 32767.0).astype(np.int16)


def check_format(fmt: str) -> str:
    if fmt not in FORMATS:
        raise InvalidRequest(
            f"unknown audio format {fmt!r}; known: {', '.join(FORMATS)}", param="response_format"
        )
    return fmt


def encode_audio(samples: np.ndarray, sample_rate: int, fmt: str) -> tuple[bytes, str]:
    """``samples`` (float mono) encoded as ``fmt``: the bytes and their content type."""
    check_format(fmt)
    if sample_rate <= 0:
        raise ValueError(f"sample_rate must be positive, got {sample_rate}")
    container, content_type = FORMATS[fmt]
    pcm = to_pcm16(samples)
    if container is None:
        return pcm.astype("<i2").tobytes(), content_type
    buffer = io.BytesIO()
    soundfile.write(buffer, pcm, sample_rate, format=container, subtype="PCM_16")
    return buffer.getvalue(), content_type
