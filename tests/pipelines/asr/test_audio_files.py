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
from pipelines.asr.containers import split_chained
from pipelines.asr.mp3_frames import FrameHeader, header_at, xing_frame
from shared_engine.errors import InvalidRequest

# (container, subtype) libsndfile writes here; each carries a length in its header or pages.
CONTAINERS = {
    "mp3": ("MP3", None),
    "vorbis": ("OGG", "VORBIS"),
    "opus": ("OGG", "OPUS"),
    "wav": ("WAV", "PCM_16"),
    "flac": ("FLAC", "PCM_16"),
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


def _id3_tag(title: str, version: int = 3, footer: bool = False) -> bytes:
    """An ID3v2 tag holding a title (v2.4 with ``footer``: the footer a tag at a file's end carries)."""
    text = b"\x00" + title.encode()
    frame = b"TIT2" + struct.pack(">I", len(text)) + b"\x00\x00" + text
    size = bytes((len(frame) >> shift) & 0x7F for shift in (21, 14, 7, 0))  # "syncsafe": 7 bits a byte
    flags = b"\x10" if footer else b"\x00"
    tag = b"ID3" + bytes([version, 0]) + flags + size + frame
    return tag + b"3DI" + bytes([version, 0]) + flags + size if footer else tag


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
    first, second = _encode(_tone(440, 1.5), "mp3"), _encode(_tone(880, 1.5), "mp3")
    joined = _id3_tag("one") + first + _id3_tag("two") + second
    assert split_chained(joined) == [first, second]  # each without its tag: metadata only
    assert len(decode_audio(joined, 60)) / SAMPLE_RATE == pytest.approx(3.0, abs=0.1)


# Layer III bitrates (kbit/s) of MPEG-2, by index: what libsndfile writes at 16 kHz.
_MPEG2_KBPS = (0, 8, 16, 24, 32, 40, 48, 56, 64, 80, 96, 112, 128, 144, 160)


def _without_info_frame(mp3: bytes) -> bytes:
    """An MP3 (MPEG-2: 16, 22.05 or 24 kHz, mono) without its Xing/Info frame, as older encoders and
    stream captures are: its length is then libsndfile's estimate, not a length the file states."""
    kbps, padding = _MPEG2_KBPS[mp3[2] >> 4], (mp3[2] >> 1) & 1
    rate = (22_050, 24_000, 16_000)[(mp3[2] >> 2) & 0x03]
    assert mp3[13:17] in (b"Xing", b"Info")
    return mp3[72_000 * kbps // rate + padding :]


def _vbr_mp3(samples: np.ndarray, rate: int = SAMPLE_RATE) -> bytes:
    buffer = io.BytesIO()
    sf.write(buffer, _resampled(samples, rate), rate, format="MP3", bitrate_mode="VARIABLE")
    return buffer.getvalue()


def _loud_then_quiet() -> np.ndarray:
    """2 s of noise, then 8 s of a soft 440 Hz tone: a VBR encoder's first frames take a high bitrate,
    the rest a low one, so an estimate of the length from the first frame's bitrate falls far short."""
    noise = 0.5 * np.random.default_rng(0).standard_normal(2 * SAMPLE_RATE).astype(np.float32)
    return np.concatenate([noise, 0.3 * _tone(440, 8.0)])


def test_a_vbr_mp3_stating_no_length_is_heard_to_its_end() -> None:
    """Without a Xing/Info header (or with one counting 0 frames) libsndfile reads an MP3 only as far as
    the first frame's bitrate predicts: here 2.1 s of 10. Its frames are counted instead."""
    vbr = _vbr_mp3(_loud_then_quiet())
    bare = _without_info_frame(vbr)
    uncounted = vbr[:21] + bytes(4) + vbr[25:]  # the Xing tag at 13: flags, then the frame count
    assert vbr[13:17] == b"Xing" and sf.info(io.BytesIO(bare)).duration < 5.0
    for name, data in {
        "no header": bare,
        "a header counting 0 frames": uncounted,
        "tagged": _id3_tag("t") + bare,
        "an ID3v1 tag at the end": bare + b"TAG" + bytes(125),
    }.items():
        decoded = decode_audio(data, 60)
        assert len(decoded) / SAMPLE_RATE == pytest.approx(10.0, abs=0.1), name
        assert _pitch(decoded[-2 * SAMPLE_RATE :]) == pytest.approx(440, abs=5), name


def test_mp3s_joined_without_tags_or_headers_decode_whole() -> None:
    """A file of another rate after one stating no length, and a file stating no length after one whose
    Xing header counts its own frames: a decoder stops at either, so each is a file of its own."""
    first, second = _encode(_tone(440, 2.0), "mp3"), _encode(_tone(880, 2.0), "mp3", rate=22_050)
    other_rate = _without_info_frame(first) + _without_info_frame(second)
    after_a_header = first + _without_info_frame(_encode(_tone(880, 2.0), "mp3"))
    for name, data in {"another rate": other_rate, "after a Xing header": after_a_header}.items():
        assert len(split_chained(data)) == 2, name
        decoded = decode_audio(data, 60)
        assert len(decoded) / SAMPLE_RATE == pytest.approx(4.0, abs=0.1), name
        assert _pitch(decoded[4_000:20_000]) == pytest.approx(440, abs=5), name
        assert _pitch(decoded[-20_000:-4_000]) == pytest.approx(880, abs=5), name


def test_mp3_tag_layouts_decode_whole() -> None:
    """Layouts tools leave: two tags in a row, a v2.4 tag with a footer, a tag at the end, a padded tag;
    and a short tagged file followed by an untagged one (whose header lies close to the first file's
    tag)."""
    tone = _encode(_tone(440, 2.0), "mp3")
    footer_tag = _id3_tag("end", version=4, footer=True)
    picture = _id3_tag("cover " + "x" * 100) + bytes(2048)  # with padding
    cases = {
        "two tags": (_id3_tag("a") + _id3_tag("b") + tone, 2.0),
        "v2.4 footer first": (footer_tag + tone, 2.0),
        "tag at the end": (tone + footer_tag, 2.0),
        "padded tag": (picture + tone, 2.0),
        "tagged short, untagged long": (_id3_tag("d") + tone + _encode(_tone(880, 10.0), "mp3"), 12.0),
    }
    for name, (data, seconds) in cases.items():
        assert len(decode_audio(data, 60)) / SAMPLE_RATE == pytest.approx(seconds, abs=0.1), name


def test_an_mp3_stating_no_length_is_never_cut_short() -> None:
    """Without a Xing/Info header, or with one whose frame count is 0 (what ffmpeg leaves writing to a
    pipe), libsndfile's length is an estimate from the first frame's bitrate, no length the file states:
    such a file is never refused as cut short (libsndfile reads it as far as its estimate)."""
    tone = _encode(_tone(440, 2.0), "mp3")
    bare = _without_info_frame(tone)
    uncounted = tone[:21] + bytes(4) + tone[25:]  # the Xing tag at 13: flags, then the frame count
    assert tone[13:17] == b"Xing" and tone[17:21] == b"\x00\x00\x00\x0f"
    for data in (_id3_tag("c" * 120) + bare, bare + b"TAG" + bytes(125), uncounted):
        assert len(decode_audio(data, 60)) > 0


def test_streamed_wavs_are_read_to_their_end() -> None:
    """A WAV written to a pipe states a placeholder for its size (0 from Python's wave module, which
    cannot seek back): read as far as it goes."""
    wav = _encode(_tone(440, 2.0), "wav")
    data = wav.index(b"data")
    for placeholder in (0x7FFFF000, 0xFFFFFFFF - 36, 0):  # sox's; one counted down from 2^32; wave's
        streamed = wav[: data + 4] + struct.pack("<I", placeholder) + wav[data + 8 :]
        if placeholder == 0:
            streamed = streamed[:4] + bytes(4) + streamed[8:]  # its RIFF size too
        assert len(decode_audio(streamed, 60)) == 2 * SAMPLE_RATE, hex(placeholder)


def _flac_stating_no_length(samples: np.ndarray, rate: int, subtype: str = "PCM_16") -> bytes:
    """A FLAC file as an encoder writing to a pipe leaves it: STREAMINFO's total of samples 0."""
    buffer = io.BytesIO()
    sf.write(buffer, samples, rate, format="FLAC", subtype=subtype)
    flac = bytearray(buffer.getvalue())
    total = 8 + 13  # "fLaC", the block header, 13 bytes of STREAMINFO; then the 36-bit total of samples
    assert flac[total] & 0x0F or any(flac[total + 1 : total + 5])
    flac[total] &= 0xF0
    flac[total + 1 : total + 5] = bytes(4)
    return bytes(flac)


@pytest.mark.parametrize(
    ("rate", "channels", "subtype"), [(16_000, 1, "PCM_16"), (44_100, 2, "PCM_24"), (8_000, 1, "PCM_S8")]
)
def test_a_flac_stating_no_length_is_read_to_its_end(rate: int, channels: int, subtype: str) -> None:
    """Its length is read from its last frame (libsndfile would fail at the end of the data, losing its
    last block); a file cut short has no last frame to read and is refused, saying why."""
    tone = _resampled(np.concatenate([_tone(440, 2.0), _tone(880, 1.3)]), rate)
    flac = _flac_stating_no_length(np.stack([tone] * channels, axis=1), rate, subtype)
    decoded = decode_audio(flac, 60)
    assert len(decoded) / SAMPLE_RATE == pytest.approx(3.3, abs=0.01)
    assert _pitch(decoded[-12_000:]) == pytest.approx(880, abs=5)
    with pytest.raises(InvalidRequest, match="states no length"):
        decode_audio(flac[: len(flac) - 100], 60)


def test_wavs_joined_when_the_first_lacks_its_pad_byte() -> None:
    odd = _encode(_tone(440, 1.0), "wav")[:-1]  # 8-bit mono would be odd; here: a byte short, as writers err
    data = odd.index(b"data")
    size = len(odd) - data - 8
    odd = (
        odd[:4]
        + struct.pack("<I", len(odd) - 8)
        + odd[8 : data + 4]
        + struct.pack("<I", size)
        + odd[data + 8 :]
    )
    joined = odd + _encode(_tone(880, 1.0), "wav")
    assert len(split_chained(joined)) == 2
    assert len(decode_audio(joined, 60)) / SAMPLE_RATE == pytest.approx(2.0, abs=0.01)


def test_an_mp3_cut_inside_its_tag_is_cut_short() -> None:
    data = _id3_tag("cover " + "x" * 100) + _encode(_tone(440, 2.0), "mp3")
    with pytest.raises(AudioTruncated, match="inside its ID3 tag"):
        decode_audio(data[:60], 60)


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


def _ape_tag(value: bytes, header: bool = True) -> bytes:
    """An APEv2 tag holding one binary item (cover art, say), with or without its header."""
    items = struct.pack("<II", len(value), 2) + b"Cover Art (Front)\x00" + value  # flags 2: binary
    size = len(items) + 32  # the items and the footer
    fields = struct.pack("<IIII", 2000, size, 1, 0x80000000 if header else 0) + bytes(8)
    head = b"APETAGEX" + fields[:12] + struct.pack("<I", 0xA0000000) + bytes(8) if header else b""
    return head + items + b"APETAGEX" + fields


# Bytes a cover image may hold that look like MP3 frame headers.
_FRAME_LIKE = bytes([0xFF, 0xF3, 0x88, 0xC4]) * 64 + bytes(range(256)) * 40


def test_what_follows_the_last_frame_neither_breaks_nor_cuts_an_mp3() -> None:
    """Part of a frame after a file (of the same or another format), tags with binary content at its
    end, ID3v1 tags or padding between files joined end to end, and a stream captured from the middle
    of a frame: each is read whole."""
    quiet = _loud_then_quiet()
    vbr, bare = _vbr_mp3(quiet), _without_info_frame(_vbr_mp3(quiet))
    other = _without_info_frame(_encode(_tone(880, 2.0), "mp3", rate=22_050))
    id3v1 = b"TAG" + b"title".ljust(125, b"\x00")
    cases = {
        "4 bytes of a frame after a stated length": (vbr + vbr[1000:1004], 10.0),
        "half a frame after a stated length": (vbr + bare[:100], 10.0),
        "part of a frame of another rate": (bare + other[:60], 10.0),
        "an APE tag with binary content": (bare + _ape_tag(_FRAME_LIKE), 10.0),
        "an APE tag without its header": (bare + _ape_tag(_FRAME_LIKE, header=False) + id3v1, 10.0),
        "ID3v1 tags between headed and bare files": (vbr + id3v1 + bare + id3v1, 20.0),
        "ID3v1 tags between bare files": (bare + id3v1 + bare + id3v1, 20.0),
        "a zero byte between bare files": (bare + b"\x00" + bare, 20.0),
        "captured from the middle of a frame": (bare[100:], 10.0),
    }
    for name, (data, seconds) in cases.items():
        decoded = decode_audio(data, 60)
        assert len(decoded) / SAMPLE_RATE == pytest.approx(seconds, abs=0.15), name
        assert _pitch(decoded[-2 * SAMPLE_RATE :]) == pytest.approx(440, abs=5), name


def test_fragments_junk_and_tags_without_a_header_after_mp3s() -> None:
    """The first 300 bytes of another headed file (its Xing frame and little else), an APE tag that has
    only its footer between files, 0xFF bytes and random junk after a file that states no length."""
    quiet = _loud_then_quiet()
    vbr, bare = _vbr_mp3(quiet), _without_info_frame(_vbr_mp3(quiet))
    cases = {
        "the start of another headed file": vbr + vbr[:300],
        "a footer-only APE tag between files": bare + _ape_tag(b"x" * 40, header=False) + bare,
        "0xFF bytes": bare + b"\xff" * 5000,
        "random junk": bare + np.random.default_rng(1).bytes(20_000),
    }
    for name, data in cases.items():
        seconds = 20.0 if "between" in name else 10.0
        decoded = decode_audio(data, 60)
        assert len(decoded) / SAMPLE_RATE == pytest.approx(seconds, abs=0.15), name
        assert _pitch(decoded[-2 * SAMPLE_RATE :]) == pytest.approx(440, abs=5), name


def _flac(samples: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    sf.write(buffer, samples, SAMPLE_RATE, format="FLAC")
    return buffer.getvalue()


def test_flacs_with_metadata_and_tags_as_taggers_leave_them() -> None:
    """A whole FLAC file inside a metadata block (an application's, a picture's) is no second file; a
    second file's header without frames is no file; a FLAC stating no length is read through an ID3v2
    tag in front, an ID3v1 tag behind, and a STREAMINFO whose block sizes are wrong."""
    tone = _flac(_tone(440, 3.0))
    inner = _flac(_tone(880, 0.5))
    # An APPLICATION block (type 2) after STREAMINFO, taking over its "last block" flag if it had it.
    application = bytes([0x02 | tone[4] & 0x80]) + (4 + len(inner)).to_bytes(3, "big") + b"riff" + inner
    with_block = tone[:4] + bytes([tone[4] & 0x7F]) + tone[5:42] + application + tone[42:]
    no_length = _flac_stating_no_length(_tone(440, 3.0), SAMPLE_RATE)
    wrong_sizes = no_length[:8] + bytes(4) + no_length[12:]  # smallest and largest block size 0
    cases = {
        "a FLAC inside a metadata block": with_block,
        "the header of another file": tone + _flac(_tone(880, 1.0))[:42],
        "no length, ID3v2 in front": _id3_tag("t") + no_length,
        "no length, ID3v1 behind": no_length + b"TAG" + bytes(125),
        "no length, block sizes 0": wrong_sizes,
    }
    for name, data in cases.items():
        decoded = decode_audio(data, 60)
        assert len(decoded) / SAMPLE_RATE == pytest.approx(3.0, abs=0.01), name
        assert _pitch(decoded[-12_000:]) == pytest.approx(440, abs=5), name


def test_a_xing_frame_holds_its_tag_where_the_first_frame_is_too_small() -> None:
    """At 8 kbit/s and 24 kHz a frame is 24 bytes, short of the 25 that a Xing tag needs after a mono
    MPEG-2 frame's side information: the header frame takes the lowest bitrate that holds it."""
    first = bytes([0xFF, 0xF3, 0x14, 0xC4])  # MPEG-2 layer III, no CRC, 8 kbit/s, 24 kHz, mono
    assert header_at(first, 0) == FrameHeader(version=2, sample_rate=24_000, mono=True, length=24)
    frame = xing_frame(first, 7)
    header = header_at(frame, 0)
    assert header is not None and header.length == len(frame) == 48  # 16 kbit/s
    assert header.same_format(FrameHeader(version=2, sample_rate=24_000, mono=True, length=24))
    assert frame[header.tag_offset : header.tag_offset + 12] == b"Xing" + struct.pack(">II", 1, 7)
