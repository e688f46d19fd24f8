"""Audio files in, 16 kHz mono float32 out (libsndfile decodes; torchaudio resamples)."""

from __future__ import annotations

import io
import math
import re

import numpy as np
import soundfile as sf
import torch
import torchaudio.functional as AF
from scipy.signal import resample_poly

from pipelines.asr.containers import (
    ends_inside_an_ogg_page,
    mp3_states_its_length,
    split_chained,
    with_mp3_length,
    with_wav_size,
)
from pipelines.asr.flac_frames import ends_with_a_whole_frame, with_flac_length
from pipelines.asr.tags import id3_tag_cut_short
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


class AudioTruncated(InvalidRequest):
    code = "audio_truncated"

    def __init__(self, detail: str) -> None:
        super().__init__(f"the audio file ends early: {detail} (an upload cut short?)", param="file")


def decode_audio(data: bytes, max_seconds: float) -> np.ndarray:
    """Any WAV/FLAC/MP3/OGG file, any sample rate and channel count → mono float32 samples at 16 kHz.

    Files joined one after another (concatenated MP3s, a chained Ogg stream) are decoded part by part and
    the parts joined. Each is read a block at a time, each block mixed down and resampled before the next
    is read, so memory follows the 16 kHz result, not the file's rate times its channels (a few kilobytes
    of FLAC can hold an hour of 8 channels at 192 kHz)."""
    if not data:
        raise InvalidRequest("the audio file is empty", param="file")
    if data.startswith(b"OggS") and ends_inside_an_ogg_page(data):
        raise AudioTruncated("it stops partway through an Ogg page")
    if data.startswith(b"ID3") and id3_tag_cut_short(data):
        raise AudioTruncated("it stops inside its ID3 tag, before any audio")
    parts = split_chained(data)
    if len(parts) > MAX_PARTS:
        raise InvalidRequest(
            f"the audio file is {len(parts)} files joined; at most {MAX_PARTS} are read", "file"
        )
    decoded: list[np.ndarray] = []
    seconds = 0.0
    try:
        for part in parts:
            samples, part_seconds = _decode_part(part, max_seconds - seconds, seconds)
            decoded.append(samples)
            seconds += part_seconds
    except (sf.LibsndfileError, RuntimeError, TypeError) as exc:
        # libsndfile's own words, without soundfile's "Error opening <_io.BytesIO object at 0x...>".
        reason = exc.error_string if isinstance(exc, sf.LibsndfileError) else str(exc)
        raise InvalidRequest(
            f"could not read the audio file ({reason}); supported formats: {', '.join(FORMATS)}", param="file"
        ) from None
    if seconds < MIN_SECONDS:
        raise AudioTooShort(seconds)
    return decoded[0] if len(decoded) == 1 else np.concatenate(decoded)


# Files joined end to end that one upload may hold (each is opened on its own).
MAX_PARTS = 1000
# libsndfile's length for a file that states none (a FLAC's total of 0 samples).
_NO_LENGTH = 1 << 60


def _decode_part(data: bytes, seconds_left: float, seconds_before: float) -> tuple[np.ndarray, float]:
    """One file's samples at 16 kHz and its length in seconds."""
    readable = with_flac_length(with_mp3_length(with_wav_size(data)))
    with sf.SoundFile(io.BytesIO(readable)) as f:
        rate = f.samplerate
        if rate <= 0:
            raise InvalidRequest("the audio file states no sample rate", param="file")
        if f.frames >= _NO_LENGTH:  # a FLAC stating 0 samples whose last frame is not whole
            raise InvalidRequest(
                "the audio file states no length and does not end with a whole frame to tell it "
                "(an upload cut short?)",
                "file",
            )
        if f.frames / rate > seconds_left:
            raise AudioTooLong(seconds_before + f.frames / rate, seconds_before + seconds_left)
        resampler = BlockResampler(rate)
        frames = resampler.unit_in * max(1, BLOCK_SAMPLES // (f.channels * resampler.unit_in))
        while len(block := _read(f, frames, readable)):
            mono = block.mean(axis=1)
            if not np.isfinite(mono).all():
                raise InvalidRequest("the audio holds non-finite samples", param="file")
            resampler.push(mono)
            if resampler.num_in / rate > seconds_left:  # a length stated wrong
                raise AudioTooLong(seconds_before + resampler.num_in / rate, seconds_before + seconds_left)
        if f.format != "MP3" or mp3_states_its_length(data):
            _check_complete(f, resampler.num_in, seconds_left)
    return resampler.finish(), resampler.num_in / rate


def _read(f: sf.SoundFile, frames: int, readable: bytes) -> np.ndarray:
    """The next ``frames`` frames; a decoding error where the header states more audio than the file
    decodes to (a FLAC cut partway through a frame: "lost sync") is the file ending early."""
    try:
        return f.read(frames, dtype="float32", always_2d=True)
    except sf.LibsndfileError:
        if _could_be_cut_short(f, readable):
            held = _frames_decodable(readable)
            if f.frames - held > TRUNCATION_SLACK_SECONDS * f.samplerate:
                present, stated = held / f.samplerate, f.frames / f.samplerate
                raise AudioTruncated(
                    f"it decodes to {present:.2f} s of the {stated:.2f} s its header states"
                ) from None
        raise


def _could_be_cut_short(f: sf.SoundFile, readable: bytes) -> bool:
    """Whether a decoding error can be the file ending early: its header states a length (an MP3's Xing
    header, a FLAC's STREAMINFO) and, for a FLAC, its last frame is not whole."""
    if f.frames >= _NO_LENGTH:
        return False
    if f.format == "MP3":
        return mp3_states_its_length(readable)
    return f.format == "FLAC" and not ends_with_a_whole_frame(readable)


def _frames_decodable(readable: bytes) -> int:
    """How many frames a file decodes to before libsndfile fails, read a small block at a time."""
    held = 0
    with sf.SoundFile(io.BytesIO(readable)) as f:
        try:
            while block := len(f.read(4096, dtype="float32")):
                held += block
        except sf.LibsndfileError:
            pass
    return held


# A file may fall this short of the length its header states (encoders round it) before it is refused
# as cut short.
TRUNCATION_SLACK_SECONDS = 0.1
# A WAV's data size as libsndfile reports a shorter file: "data : 64000 (should be 31978)".
_WAV_DATA_SIZE = re.compile(r"^data : (\d+) \(should be (\d+)\)$", re.MULTILINE)
_WAV_BLOCK_ALIGN = re.compile(r"^\s*Block Align\s*: (\d+)$", re.MULTILINE)


def _check_complete(f: sf.SoundFile, frames_read: int, seconds_left: float) -> None:
    """Refuse a file whose header states more audio than it holds (MP3 Xing, FLAC: frames; WAV: bytes
    of data, as libsndfile reports them). A WAV written as a stream states a placeholder (0, 2^31 - 1,
    2^32 - 1, sox's 0x7ffff000...): one past the length limit, or of 0, is read as far as it goes."""
    rate, declared_frames = f.samplerate, f.frames
    wav = _WAV_DATA_SIZE.search(f.extra_info) if f.format in ("WAV", "WAVEX") else None
    if wav:
        stated_bytes, held_bytes = int(wav.group(1)), int(wav.group(2))
        align = _WAV_BLOCK_ALIGN.search(f.extra_info)
        bytes_per_frame = int(align.group(1)) if align else held_bytes // max(1, f.frames)
        stated_frames = stated_bytes // max(1, bytes_per_frame)
        if 0 < stated_frames / rate <= seconds_left:
            declared_frames = max(declared_frames, stated_frames)
    if declared_frames - frames_read > TRUNCATION_SLACK_SECONDS * rate:
        present, declared = frames_read / rate, declared_frames / rate
        raise AudioTruncated(f"it holds {present:.2f} s of the {declared:.2f} s its header states")


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
