"""Audio files that are several files one after another, cut into those files; Ogg files cut short.

`cat a.mp3 b.mp3` and a recorded Ogg radio stream (one logical stream per track, "chained") are audio
that players and FFmpeg play through; libsndfile stops at the end of the first part — of an MP3 at the
frame count its Xing/Info header states, of an Ogg at its first logical stream. Each part is decoded
alone and the parts joined."""

from __future__ import annotations

import re
import struct
from collections.abc import Iterator

# Where an MP3 frame's Xing/Info tag sits after its 4-byte header (and 2-byte CRC, where it has one):
# after the side information, which is 17 or 32 bytes in MPEG-1 (mono / other), 9 or 17 in MPEG-2 and 2.5.
_SIDE_INFO = {(True, True): 17, (True, False): 32, (False, True): 9, (False, False): 17}
_MP3_TAG = re.compile(rb"Xing|Info")
_ID3V2 = re.compile(rb"ID3[\x02-\x04]\x00")
# Bytes of padding an encoder may leave between a file's tag and its first frame.
_TAG_PADDING = 4096


def split_chained(data: bytes) -> list[bytes]:
    """The parts of ``data``, each a file of its own, in order; ``[data]`` for a file of one part."""
    if data.startswith(b"OggS"):
        return _ogg_parts(data)
    if data.startswith(b"RIFF"):
        return _riff_parts(data)
    if data.startswith(b"ID3") or _mp3_frame_at(data, 0):
        return _mp3_parts(data)
    return [data]


def ends_inside_an_ogg_page(data: bytes) -> bool:
    """Whether an Ogg file stops partway through a page: what an upload cut short leaves (a recorder
    stopped abruptly still writes whole pages)."""
    return any(end > len(data) for _, _, end in _ogg_pages(data))


def _ogg_pages(data: bytes) -> Iterator[tuple[int, int, int]]:
    """Each page's start, header flags and end, while the pages follow one another."""
    offset = 0
    while data.startswith(b"OggS", offset):
        segments = data[offset + 26] if offset + 27 <= len(data) else 0
        table = data[offset + 27 : offset + 27 + segments]
        end = offset + 27 + segments + sum(table)
        yield offset, data[offset + 5] if offset + 5 < len(data) else 0, end
        if len(table) < segments or offset + 27 > len(data):
            return
        offset = end


def _ogg_parts(data: bytes) -> list[bytes]:
    """A new logical stream begins (beginning-of-stream flag) after a page of an earlier one."""
    starts, previous_was_bos = [0], True
    for offset, flags, _ in _ogg_pages(data):
        is_bos = bool(flags & 0x02)
        if is_bos and not previous_was_bos:
            starts.append(offset)
        previous_was_bos = is_bos
    return _cut(data, starts)


def _riff_parts(data: bytes) -> list[bytes]:
    """A WAV file is its RIFF chunk; another may follow it (a size of 0 or 2^32 - 1: unknown, to the end)."""
    starts, offset = [0], 0
    while data.startswith(b"RIFF", offset) and len(data) >= offset + 8:
        (size,) = struct.unpack_from("<I", data, offset + 4)
        if size in (0, 0xFFFFFFFF):
            break
        offset += 8 + size + (size & 1)
        if not data.startswith(b"RIFF", offset):
            break
        starts.append(offset)
    return _cut(data, starts)


def _mp3_parts(data: bytes) -> list[bytes]:
    """A new file begins at an ID3v2 tag, or at a frame holding a Xing/Info header that is not the
    header of the file whose tag comes just before it."""
    tags: list[tuple[int, int]] = []  # (start, end) of each ID3v2 tag, none inside another
    for match in _ID3V2.finditer(data):
        start = match.start()
        if len(data) >= start + 10 and (not tags or start >= tags[-1][1]):
            tags.append((start, start + 10 + _syncsafe(data[start + 6 : start + 10])))
    starts = [0, *(start for start, _ in tags if start)]
    for match in _MP3_TAG.finditer(data):
        frame = _frame_holding_tag(data, match.start())
        if frame and not any(start <= frame < end + _TAG_PADDING for start, end in tags):
            starts.append(frame)
    return _cut(data, sorted(set(starts)))


def _frame_holding_tag(data: bytes, tag: int) -> int | None:
    for before_tag in {4 + crc + side_info for crc in (0, 2) for side_info in _SIDE_INFO.values()}:
        frame = tag - before_tag
        if frame >= 0 and _mp3_frame_at(data, frame) and _tag_offset(data, frame) == before_tag:
            return frame
    return None


def _tag_offset(data: bytes, frame: int) -> int:
    crc = 0 if data[frame + 1] & 0x01 else 2
    mpeg1 = (data[frame + 1] >> 3) & 0x03 == 0x03
    mono = (data[frame + 3] >> 6) == 0x03
    return 4 + crc + _SIDE_INFO[(mpeg1, mono)]


def _mp3_frame_at(data: bytes, offset: int) -> bool:
    """An MPEG audio layer III frame header: sync, a valid version, layer III, a valid bitrate and rate."""
    if offset + 4 > len(data):
        return False
    (header,) = struct.unpack_from(">I", data, offset)
    version, layer = (header >> 19) & 0x03, (header >> 17) & 0x03
    bitrate, rate = (header >> 12) & 0x0F, (header >> 10) & 0x03
    return header >> 21 == 0x7FF and version != 1 and layer == 1 and bitrate not in (0, 15) and rate != 3


def _syncsafe(raw: bytes) -> int:
    return sum((b & 0x7F) << (7 * (3 - i)) for i, b in enumerate(raw[:4]))


def _cut(data: bytes, starts: list[int]) -> list[bytes]:
    ends = [*starts[1:], len(data)]
    return [data[s:e] for s, e in zip(starts, ends, strict=True) if e > s]
