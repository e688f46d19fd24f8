"""Audio files as people send them: several files joined end to end (cat a.mp3 b.mp3, a chained Ogg
stream, WAVs one after another) decode whole, part after part; a file cut short of what its header
states is refused, not transcribed as far as it goes."""

from __future__ import annotations

import io
import re
import struct

import numpy as np
import pytest
import soundfile as sf

from pipelines.asr import AudioTooLong, AudioTooShort, AudioTruncated, decode_audio
from pipelines.asr.audio import SAMPLE_RATE
from pipelines.asr.chained import split_chained

# (container, subtype) libsndfile writes here; each carries a length in its header or pages.
CONTAINERS = {
    "mp3": ("MP3", None),
    "vorbis": ("OGG", "VORBIS"),
    "opus": ("OGG", "OPUS"),
    "wav": ("WAV", "PCM_16"),
}


def _tone(hz: float, seconds: float, rate: int = SAMPLE_RATE) -> np.ndarray:
    t = np.arange(round(seconds * rate)) / rate
    return (0.3 * np.sin(2 * np.pi * hz * t)).astype(np.float32)


def _encode(samples: np.ndarray, kind: str, rate: int = SAMPLE_RATE) -> bytes:
    container, subtype = CONTAINERS[kind]
    buffer = io.BytesIO()
    rate = 48_000 if kind == "opus" else rate  # Opus codes 8/12/16/24/48 kHz; any of them will do
    sf.write(buffer, _resampled(samples, rate), rate, format=container, subtype=subtype)
    return buffer.getvalue()


def _resampled(samples: np.ndarray, rate: int) -> np.ndarray:
    if rate == SAMPLE_RATE:
        return samples
    positions = np.arange(round(len(samples) * rate / SAMPLE_RATE)) * SAMPLE_RATE / rate
    return np.interp(positions, np.arange(len(samples)), samples).astype(np.float32)


def _pitch(samples: np.ndarray) -> float:
    """The strongest frequency of ``samples`` (16 kHz), in Hz."""
    spectrum = np.abs(np.fft.rfft(samples * np.hanning(len(samples))))
    return float(np.argmax(spectrum) * SAMPLE_RATE / len(samples))


def _id3_tag(title: str) -> bytes:
    text = b"\x00" + title.encode()
    frame = b"TIT2" + struct.pack(">I", len(text)) + b"\x00\x00" + text
    return b"ID3\x03\x00\x00" + bytes([0, 0, 0, len(frame)]) + frame


@pytest.mark.parametrize("kind", list(CONTAINERS))
def test_files_joined_end_to_end_decode_whole(kind: str) -> None:
    """Two files, the second at another rate for all but Opus, decode to both, in order: the first
    second at 440 Hz, the last at 880 Hz."""
    first = _encode(_tone(440, 2.0), kind)
    second = _encode(_tone(880, 2.0), kind, rate=22_050)
    assert len(split_chained(first)) == 1
    assert split_chained(first + second) == [first, second]
    decoded = decode_audio(first + second, 60)
    assert len(decoded) / SAMPLE_RATE == pytest.approx(4.0, abs=0.1)
    assert _pitch(decoded[4_000:20_000]) == pytest.approx(440, abs=5)
    assert _pitch(decoded[-20_000:-4_000]) == pytest.approx(880, abs=5)


def test_mp3s_with_id3_tags_joined_decode_whole() -> None:
    """`cat` of two tagged MP3s: each part begins at its tag, its Xing header after it is its own."""
    first = _id3_tag("one") + _encode(_tone(440, 1.5), "mp3")
    second = _id3_tag("two") + _encode(_tone(880, 1.5), "mp3")
    assert split_chained(first + second) == [first, second]
    assert len(decode_audio(first + second, 60)) / SAMPLE_RATE == pytest.approx(3.0, abs=0.1)


def test_joined_files_count_together_against_the_length_limit() -> None:
    tone = _encode(_tone(440, 2.0), "mp3")
    assert len(decode_audio(tone * 3, 7)) / SAMPLE_RATE == pytest.approx(6.0, abs=0.1)
    with pytest.raises(AudioTooLong, match=r"lasts 6\.0 s, more than .* 5 s"):
        decode_audio(tone * 3, 5)


@pytest.mark.parametrize("kind", list(CONTAINERS))
def test_a_file_cut_short_is_refused(kind: str) -> None:
    whole = _encode(_tone(440, 3.0), kind)
    assert len(decode_audio(whole, 60)) / SAMPLE_RATE == pytest.approx(3.0, abs=0.1)
    with pytest.raises(AudioTruncated, match=re.escape("(an upload cut short?)")) as refused:
        decode_audio(whole[: len(whole) * 2 // 3], 60)
    assert refused.value.param == "file" and refused.value.code == "audio_truncated"


def test_a_wav_states_how_much_it_holds_and_a_header_alone_is_cut_short() -> None:
    wav = _encode(_tone(440, 1.0), "wav")
    with pytest.raises(AudioTruncated, match=r"holds 0\.50 s of the 1\.00 s its header states"):
        decode_audio(wav[: 44 + 16_000], 60)
    with pytest.raises(AudioTruncated, match=r"holds 0\.00 s of the 1\.00 s"):
        decode_audio(wav[:44], 60)
    # A WAV written as a stream states no length (0xFFFFFFFF) and is read to its end.
    data = wav.index(b"data")
    streamed = wav[: data + 4] + b"\xff\xff\xff\xff" + wav[data + 8 :]
    assert len(decode_audio(streamed, 60)) == SAMPLE_RATE
    with pytest.raises(AudioTooShort):  # whole, and too short: not "cut short"
        decode_audio(_encode(_tone(440, 0.05), "wav"), 60)
