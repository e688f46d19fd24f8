"""Encoding synthesized speech: WAV and FLAC read back by libsndfile exactly, MP3 and Opus read back close
to the speech, raw little-endian 16-bit PCM."""

from __future__ import annotations

import io

import numpy as np
import pytest
import soundfile

from pipelines.tts import FORMATS, TTSPipeline, encode_audio
from pipelines.tts.audio_format import output_rate, to_pcm16
from shared_engine.errors import InvalidRequest
from tests.pipelines.tts.conftest import SAMPLE_RATE


@pytest.fixture(scope="module")
async def speech(exact: TTSPipeline) -> np.ndarray:
    return await exact.synthesize("Hello there, how are you?")


@pytest.mark.parametrize(
    ("fmt", "magic", "content_type"), [("wav", b"RIFF", "audio/wav"), ("flac", b"fLaC", "audio/flac")]
)
def test_container_round_trip(speech: np.ndarray, fmt: str, magic: bytes, content_type: str) -> None:
    data, kind = encode_audio(speech, SAMPLE_RATE, fmt)
    assert kind == content_type
    assert data.startswith(magic)
    info = soundfile.info(io.BytesIO(data))
    assert (info.samplerate, info.channels, info.subtype) == (SAMPLE_RATE, 1, "PCM_16")
    decoded, rate = soundfile.read(io.BytesIO(data), dtype="float32")
    assert rate == SAMPLE_RATE
    assert decoded.shape == speech.shape
    np.testing.assert_allclose(decoded, speech, atol=1e-4)


def _envelope(samples: np.ndarray, rate: int) -> np.ndarray:
    """RMS per 20 ms frame."""
    frame = rate // 50
    n = len(samples) // frame
    return np.sqrt((samples[: n * frame].reshape(n, frame) ** 2).mean(axis=1))


@pytest.mark.parametrize(
    ("fmt", "container", "subtype", "content_type", "rate"),
    [
        ("mp3", "MP3", "MPEG_LAYER_III", "audio/mpeg", SAMPLE_RATE),
        ("opus", "OGG", "OPUS", "audio/ogg", 24_000),  # Opus takes 8, 12, 16, 24 or 48 kHz
    ],
)
def test_lossy_formats_keep_the_speech(
    speech: np.ndarray, fmt: str, container: str, subtype: str, content_type: str, rate: int
) -> None:
    data, kind = encode_audio(speech, SAMPLE_RATE, fmt)
    assert kind == content_type and output_rate(fmt, SAMPLE_RATE) == rate
    info = soundfile.info(io.BytesIO(data))
    assert (info.format, info.subtype, info.channels, info.samplerate) == (container, subtype, 1, rate)
    assert info.duration == pytest.approx(len(speech) / SAMPLE_RATE, abs=0.03)
    wav, _ = encode_audio(speech, SAMPLE_RATE, "wav")
    assert len(data) < len(wav) / 4
    decoded, _ = soundfile.read(io.BytesIO(data), dtype="float32")
    ours, theirs = _envelope(decoded, rate), _envelope(speech, SAMPLE_RATE)
    n = min(len(ours), len(theirs))
    assert np.corrcoef(ours[:n], theirs[:n])[0, 1] > 0.95  # the same syllables at the same times


def test_pcm_is_headerless_little_endian_16_bit(speech: np.ndarray) -> None:
    data, kind = encode_audio(speech, SAMPLE_RATE, "pcm")
    assert kind == "audio/pcm"
    assert len(data) == 2 * len(speech)
    samples = np.frombuffer(data, dtype="<i2")
    np.testing.assert_array_equal(samples, to_pcm16(speech))
    np.testing.assert_allclose(samples / 32767.0, speech, atol=1e-4)


def test_flac_is_smaller_than_wav(speech: np.ndarray) -> None:
    wav, _ = encode_audio(speech, SAMPLE_RATE, "wav")
    flac, _ = encode_audio(speech, SAMPLE_RATE, "flac")
    assert len(wav) == 44 + 2 * len(speech)
    assert len(flac) < len(wav)


def test_out_of_range_samples_are_clipped() -> None:
    samples = np.array([0.0, 0.5, -0.5, 1.5, -2.0, np.nan], dtype=np.float32)
    assert to_pcm16(samples).tolist() == [0, 16384, -16384, 32767, -32767, 0]
    with pytest.raises(ValueError, match="mono"):
        to_pcm16(np.zeros((2, 10), dtype=np.float32))


def test_unknown_format_lists_the_known_ones() -> None:
    with pytest.raises(InvalidRequest) as raised:
        encode_audio(np.zeros(10, dtype=np.float32), SAMPLE_RATE, "aac")
    assert raised.value.param == "response_format"
    assert "aac" in str(raised.value)
    for known in FORMATS:
        assert known in str(raised.value)
