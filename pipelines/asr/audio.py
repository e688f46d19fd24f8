"""Audio files in, 16 kHz mono float32 out (libsndfile decodes; torchaudio resamples)."""

from __future__ import annotations

import io
import math

import numpy as np
import soundfile as sf
import torch
import torchaudio.functional as AF
from scipy.signal import resample_poly

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
    """Any WAV/FLAC/MP3/OGG file, any sample rate and channel count → mono float32 samples at 16 kHz.

    The file is read a block at a time, each block mixed down and resampled before the next is read, so
    memory follows the 16 kHz result, not the file's rate times its channels (a few kilobytes of FLAC
    can hold an hour of 8 channels at 192 kHz)."""
    if not data:
        raise InvalidRequest("the audio file is empty", param="file")
    try:
        with sf.SoundFile(io.BytesIO(data)) as f:
            rate = f.samplerate
            if rate <= 0:
                raise InvalidRequest("the audio file states no sample rate", param="file")
            seconds = f.frames / rate
            if seconds > max_seconds:
                raise AudioTooLong(seconds, max_seconds)
            resampler = BlockResampler(rate)
            frames = resampler.unit_in * max(1, BLOCK_SAMPLES // (f.channels * resampler.unit_in))
            while len(block := f.read(frames, dtype="float32", always_2d=True)):
                mono = block.mean(axis=1)
                if not np.isfinite(mono).all():
                    raise InvalidRequest("the audio holds non-finite samples", param="file")
                resampler.push(mono)
    except (sf.LibsndfileError, RuntimeError, TypeError) as exc:
        # libsndfile's own words, without soundfile's "Error opening <_io.BytesIO object at 0x...>".
        reason = exc.error_string if isinstance(exc, sf.LibsndfileError) else str(exc)
        raise InvalidRequest(
            f"could not read the audio file ({reason}); supported formats: {', '.join(FORMATS)}", param="file"
        ) from None
    seconds = resampler.num_in / rate
    if seconds < MIN_SECONDS:
        raise AudioTooShort(seconds)
    return resampler.finish()


# Samples (frames x channels) read at a time: 16 MiB of float32. Shorter audio is one block, resampled
# whole; longer audio is resampled a block at a time, each with CONTEXT_SECONDS of its neighbours on either
# side, which the resampling filters reach into (a few milliseconds), so the blocks join seamlessly.
BLOCK_SAMPLES = 1 << 22
CONTEXT_SECONDS = 0.05


class BlockResampler:
    """Resamples a stream of blocks to 16 kHz as resampling it whole would (up to float rounding).

    Blocks are multiples of ``unit_in`` input samples, which map to whole ``unit_out`` output samples;
    each is resampled with its neighbours' edges around it and only its own outputs kept."""

    def __init__(self, rate: int) -> None:
        self.rate = rate
        g = math.gcd(rate, SAMPLE_RATE)
        self.unit_in, self.unit_out = rate // g, SAMPLE_RATE // g
        self.context = self.unit_in * math.ceil(CONTEXT_SECONDS * rate / self.unit_in)
        self.num_in = 0
        self._before = np.zeros(0, np.float32)  # the end of the block already resampled
        self._pending: np.ndarray | None = None  # the block waiting for its right-hand neighbour
        self._out: list[np.ndarray] = []

    def push(self, block: np.ndarray) -> None:
        self.num_in += len(block)
        if self._pending is not None:
            self._emit(self._pending, block[: self.context])
        self._pending = block

    def finish(self) -> np.ndarray:
        if self._pending is not None:
            self._emit(self._pending, np.zeros(0, np.float32))
            self._pending = None
        return np.concatenate(self._out) if self._out else np.zeros(0, np.float32)

    def _emit(self, block: np.ndarray, after: np.ndarray) -> None:
        if self.rate == SAMPLE_RATE:
            self._out.append(np.ascontiguousarray(block, dtype=np.float32))
            return
        window = np.concatenate([self._before, block, after])
        start = len(self._before) // self.unit_in * self.unit_out
        count = math.ceil(len(block) * SAMPLE_RATE / self.rate)
        self._out.append(resample(window, self.rate)[start : start + count])
        self._before = block[-self.context :]


# Rates whose ratio to 16 kHz reduces to at most this (every common one: 44.1 kHz is 441/160) use
# torchaudio's windowed sinc; others its cost grows with (a 4,001 Hz file needs a 16,000-phase filter,
# gigabytes), so they take scipy's polyphase filter, whose cost does not.
MAX_SINC_RATIO = 1000


def resample(samples: np.ndarray, rate: int) -> np.ndarray:
    samples = np.ascontiguousarray(samples, dtype=np.float32)
    if rate == SAMPLE_RATE:
        return samples
    g = math.gcd(rate, SAMPLE_RATE)
    up, down = SAMPLE_RATE // g, rate // g
    if max(up, down) > MAX_SINC_RATIO:
        return resample_poly(samples, up, down).astype(np.float32)
    return AF.resample(torch.from_numpy(samples), rate, SAMPLE_RATE).numpy()
