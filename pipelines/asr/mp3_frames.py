"""MPEG audio layer III frame headers, and walking an MP3's frames one after another as a decoder does.

A frame's header states its length, so the frames of a file can be counted without decoding them: what an
MP3 without a Xing/Info header needs to state its length, and where joined files change format."""

from __future__ import annotations

import functools
import itertools
import re
import struct
from collections.abc import Iterator
from dataclasses import dataclass

# Bitrates (kbit/s) by header index, for MPEG-1 and for MPEG-2 / 2.5; index 0 ("free format") and 15 are
# not read here.
_KBPS = {
    True: (0, 32, 40, 48, 56, 64, 80, 96, 112, 128, 160, 192, 224, 256, 320),
    False: (0, 8, 16, 24, 32, 40, 48, 56, 64, 80, 96, 112, 128, 144, 160),
}
# Sample rates by the header's version bits (3: MPEG-1, 2: MPEG-2, 0: MPEG-2.5) and rate index.
_RATES = {3: (44100, 48000, 32000), 2: (22050, 24000, 16000), 0: (11025, 12000, 8000)}
# Side information after the header, by (MPEG-1, mono): where mpg123 reads a Xing/Info tag (after it,
# whether the frame has a CRC or not).
_SIDE_INFO = {(True, True): 17, (True, False): 32, (False, True): 9, (False, False): 17}
TAG_OFFSETS = frozenset(4 + side_info for side_info in _SIDE_INFO.values())
_SYNC = re.compile(rb"(?=\xff[\xe0-\xff])")  # where a frame header may begin (overlapping: \xff\xff\xfb)
# Places that look like a frame header checked in one search at most, and how far into a file its first
# frame is looked for: bounds on a crafted file's cost.
_MAX_SYNCS = 4096
_RESYNC_BYTES = 1 << 16


@dataclass(frozen=True)
class FrameHeader:
    version: int  # the header's version bits: 3 MPEG-1, 2 MPEG-2, 0 MPEG-2.5
    sample_rate: int
    mono: bool
    length: int  # bytes, header and padding included

    @property
    def samples(self) -> int:
        """Samples per channel the frame decodes to."""
        return 1152 if self.version == 3 else 576

    @property
    def tag_offset(self) -> int:
        """Where in the frame mpg123 reads a Xing/Info tag."""
        return 4 + _SIDE_INFO[(self.version == 3, self.mono)]

    def same_format(self, other: FrameHeader) -> bool:
        """Whether a decoder reads ``other`` as more of this stream rather than a new format."""
        return (self.version, self.sample_rate, self.mono) == (other.version, other.sample_rate, other.mono)


def header_at(data: bytes, offset: int) -> FrameHeader | None:
    """The layer III frame header at ``offset``: sync, a valid version, layer III, a bitrate that states
    the frame's length, a valid rate; else None."""
    if offset < 0 or offset + 4 > len(data):
        return None
    return _parse(data[offset : offset + 4])


@functools.lru_cache(maxsize=4096)  # a file's frames repeat a few headers: an hour's walk takes 0.1 s
def _parse(word: bytes) -> FrameHeader | None:
    (header,) = struct.unpack(">I", word)
    version, layer = (header >> 19) & 0x03, (header >> 17) & 0x03
    bitrate, rate = (header >> 12) & 0x0F, (header >> 10) & 0x03
    if header >> 21 != 0x7FF or version == 1 or layer != 1 or bitrate in (0, 15) or rate == 3:
        return None
    mpeg1 = version == 3
    sample_rate = _RATES[version][rate]
    length = (144 if mpeg1 else 72) * _KBPS[mpeg1][bitrate] * 1000 // sample_rate + ((header >> 9) & 1)
    return FrameHeader(version, sample_rate, (header >> 6) & 0x03 == 0x03, length)


def frames(data: bytes, offset: int) -> Iterator[tuple[int, FrameHeader]]:
    """Each whole frame's offset and header from ``offset`` on, while frames follow one another (a frame
    cut short by the data's end is not one)."""
    while (header := header_at(data, offset)) is not None and offset + header.length <= len(data):
        yield offset, header
        offset += header.length


def frames_may_follow(data: bytes, start: int, end: int) -> bool:
    """Whether frames follow one another anywhere in ``data[start:end]`` (two of one format, whole), where
    a decoder resynchronising would find more audio. Past the places worth checking, none is assumed."""
    for sync in itertools.islice(_SYNC.finditer(data, start, end), _MAX_SYNCS):
        chain = [header for _, header in itertools.islice(frames(data, sync.start()), 2)]
        if len(chain) == 2 and chain[0].same_format(chain[1]):
            return True
    return False


def first_frame(data: bytes) -> int | None:
    """Where, within the data's first bytes, three frames of one format first follow one another (a
    stream captured from the middle of a frame begins there), or None."""
    for sync in itertools.islice(_SYNC.finditer(data, 0, _RESYNC_BYTES), _MAX_SYNCS):
        chain = [header for _, header in itertools.islice(frames(data, sync.start()), 3)]
        if len(chain) == 3 and all(chain[0].same_format(header) for header in chain):
            return sync.start()
    return None


def xing_frame(first: bytes, count: int) -> bytes:
    """A frame holding only a Xing tag that states ``count`` audio frames, of the format of the frame
    header ``first`` (its first 4 bytes), without a CRC, at its bitrate or the lowest that holds the tag."""
    fields = bytearray(first[:4])
    fields[1] |= 0x01  # protection bit set: no CRC follows the header
    for bitrate in range(fields[2] >> 4, 15):
        fields[2] = (bitrate << 4) | (fields[2] & 0x0F)
        header = header_at(bytes(fields), 0)
        if header is None:
            raise ValueError("not an MP3 frame header")
        body = bytes(fields) + bytes(header.tag_offset - 4) + b"Xing" + struct.pack(">II", 1, count)
        if header.length >= len(body):
            return body + bytes(header.length - len(body))
    raise AssertionError("a frame at the highest bitrate holds a Xing tag")
