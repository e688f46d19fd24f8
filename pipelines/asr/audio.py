"""Audio files in, 16 kHz mono float32 out (libsndfile decodes; torchaudio resamples)."""

from __future__ import annotations

import io

import numpy as np
import soundfile as sf
import torch
import torchaudio.functional as AF

from shared_engine.errors import InvalidRequest, PayloadTooLarge

SAMPLE_RATE = 16_000
FORMATS = ("wav", "flac", "mp3", "ogg")  # containers libsndfile reads here (OGG: Vorbis and Opus)
MIN_SECONDS = 0.1  # shorter audio holds no word to hear


class AudioTooLong(PayloadTooLarge):
    def __init__(self, seconds: float, limit: float) -> None:
        super().__init__(
            f"the audio lasts {seconds:.1f} s, more than this service's limit of {limit:.0f} s", param="file"
        )


class AudioTooShort(InvalidRequest):
    code = "audio_too_short"

    def __init__(self, seconds: float) -> None:
        super().__init__(
            f"the audio lasts {seconds:.3f} s, less than the minimum of {MIN_SECONDS} s", param="file"
        )


def decode_audio(data: bytes, max_seconds: float) -> np.ndarray:
    """Any WAV/FLAC/MP3/OGG file, any sample rate and channel count → mono float32 samples at 16 kHz."""
    if not data:
        raise InvalidRequest("the audio file is empty", param="file")
    try:
        with sf.SoundFile(io.BytesIO(data)) as f:
            seconds = f.frames / f.samplerate if f.samplerate else 0.0
            if seconds > max_seconds:
                raise AudioTooLong(seconds, max_seconds)
            samples = f.read(dtype="float32", always_2d=True)
            rate = f.samplerate
    except (sf.LibsndfileError, RuntimeError, TypeError) as exc:
        raise InvalidRequest(
            f"could not read the audio file ({exc}); supported formats: {', '.join(FORMATS)}", param="file"
        ) from None
    seconds = samples.shape[0] / rate if rate > 0 else 0.0
    if seconds < MIN_SECONDS:
        raise AudioTooShort(seconds)
    mono = samples.mean(axis=1)
    if not np.isfinite(mono).all():
        raise InvalidRequest("the audio holds non-finite samples", param="file")
    return resample(mono, rate)


def resample(samples: np.ndarray, rate: int) -> np.ndarray:
    if rate == SAMPLE_RATE:
        return np.ascontiguousarray(samples, dtype=np.float32)
    out = AF.resample(torch.from_numpy(np.ascontiguousarray(samples, dtype=np.float32)), rate, SAMPLE_RATE)
    return out.numpy()
