"""Synthesized audio → the bytes of a response format: WAV and FLAC (16-bit), MP3, Opus (in Ogg), or raw
16-bit PCM."""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np
import soundfile
import torch
import torchaudio.functional as AF

from shared_engine.errors import InvalidRequest


@dataclass(frozen=True)
class AudioFormat:
    container: str | None  # libsndfile's; None: headerless little-endian samples, as OpenAI's pcm
    subtype: str | None
    content_type: str
    sample_rates: tuple[int, ...] = ()  # the rates the codec takes; () any


FORMATS: dict[str, AudioFormat] = {
    "wav": AudioFormat("WAV", "PCM_16", "audio/wav"),
    "flac": AudioFormat("FLAC", "PCM_16", "audio/flac"),
    "mp3": AudioFormat("MP3", "MPEG_LAYER_III", "audio/mpeg"),
    "opus": AudioFormat("OGG", "OPUS", "audio/ogg", (8_000, 12_000, 16_000, 24_000, 48_000)),
    "pcm": AudioFormat(None, None, "audio/pcm"),
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


def output_rate(fmt: str, sample_rate: int) -> int:
    """The sample rate of ``fmt``'s audio for speech synthesized at ``sample_rate``: the same, or for a
    codec with fixed rates (Opus) the lowest of them at or above it."""
    rates = FORMATS[check_format(fmt)].sample_rates
    if not rates or sample_rate in rates:
        return sample_rate
    return next((r for r in rates if r >= sample_rate), rates[-1])


def encode_audio(samples: np.ndarray, sample_rate: int, fmt: str) -> tuple[bytes, str]:
    """``samples`` (float mono) encoded as ``fmt``: the bytes and their content type."""
    audio = FORMATS[check_format(fmt)]
    if sample_rate <= 0:
        raise ValueError(f"sample_rate must be positive, got {sample_rate}")
    rate = output_rate(fmt, sample_rate)
    if rate != sample_rate:
        mono = torch.from_numpy(np.ascontiguousarray(samples, dtype=np.float32))
        samples = AF.resample(mono, sample_rate, rate).numpy()
    pcm = to_pcm16(samples)
    if audio.container is None:
        return pcm.astype("<i2").tobytes(), audio.content_type
    buffer = io.BytesIO()
    soundfile.write(buffer, pcm, rate, format=audio.container, subtype=audio.subtype)
    return buffer.getvalue(), audio.content_type
