"""What audio containers say of their structure, read before libsndfile decodes them: the files an
upload joins end to end, whether an MP3 states its length, an Ogg page or ID3 tag cut short.

`cat a.mp3 b.mp3` and a recorded Ogg radio stream (one logical stream per track, "chained") are audio
that players and FFmpeg play through; libsndfile stops at the end of the first part — of an MP3 at the
frame count its Xing/Info header states, of an Ogg at its first logical stream. Each part is decoded
alone and the parts joined."""

from __future__ import annotations

import bisect
import itertools
import re
import struct
from collections.abc import Iterator

# Where mpg123 reads an MP3 frame's Xing/Info tag: right after its 4-byte header and side information
# (a CRC or not), which is 17 or 32 bytes in MPEG-1 (mono / other), 9 or 17 in MPEG-2 and 2.5.
_SIDE_INFO = {(True, True): 17, (True, False): 32, (False, True): 9, (False, False): 17}
_MP3_TAG = re.compile(rb"Xing|Info")
_ID3V2 = re.compile(rb"ID3[\x02-\x04]\x00")
_PADDING = re.compile(rb"\x00*")
# Tags, and Xing/Info headers, looked at in one file at most: far more than any upload of files joined end
# to end holds (past them, the rest stays in the last part), and a bound on a crafted file's cost.
_MAX_MARKS = 4096


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
    while data.startswith(b"OggS\x00", offset):  # capture pattern and version 0: anything else is no page
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


def with_wav_size(part: bytes) -> bytes:
    """A WAV whose data chunk states a size of 0 with audio after it (what a writer that cannot seek
    back leaves, Python's wave module on a pipe among them), given the size it holds: libsndfile reads
    such a chunk as empty."""
    if not (part.startswith(b"RIFF") and part[8:12] == b"WAVE"):
        return part
    offset = 12
    while offset + 8 <= len(part):
        chunk, (size,) = part[offset : offset + 4], struct.unpack_from("<I", part, offset + 4)
        if chunk == b"data":
            if size or offset + 8 == len(part):
                return part
            held = struct.pack("<I", len(part) - offset - 8)
            return (
                b"RIFF" + struct.pack("<I", len(part) - 8) + part[8 : offset + 4] + held + part[offset + 8 :]
            )
        offset += 8 + size + (size & 1)
    return part


def _riff_parts(data: bytes) -> list[bytes]:
    """A WAV file is its RIFF chunk; another may follow it (a size of 0 or 2^32 - 1: unknown, to the end)."""
    starts, offset = [0], 0
    while data.startswith(b"RIFF", offset) and len(data) >= offset + 8:
        (size,) = struct.unpack_from("<I", data, offset + 4)
        if size in (0, 0xFFFFFFFF):
            break
        end = offset + 8 + size
        pad = size & 1 and not data.startswith(b"RIFF", end)  # its pad byte, where the writer wrote one
        offset = end + 1 if pad else end
        if not data.startswith(b"RIFF", offset):
            break
        starts.append(offset)
    return _cut(data, starts)


def _mp3_parts(data: bytes) -> list[bytes]:
    """A new file begins at an ID3v2 tag, or at a frame holding a Xing/Info header that is not the first
    frame after a tag (a file's own header follows its tag). A part with no audio (a tag after another, a
    tag at the very end) belongs to its neighbour."""
    tags = _id3_tags(data)
    tag_starts = [start for start, _ in tags]
    own_headers = {_past_padding(data, end) for _, end in tags}
    starts = [0, *(start for start in tag_starts if start)]
    for match in itertools.islice(_MP3_TAG.finditer(data), _MAX_MARKS):
        frame = _frame_holding_tag(data, match.start())
        if not frame or frame in own_headers:
            continue
        inside = bisect.bisect_right(tag_starts, frame) - 1  # the last tag that starts before it
        if inside < 0 or frame >= tags[inside][1]:
            starts.append(frame)
    parts = _cut(data, sorted(set(starts)))
    merged: list[list[bytes]] = []
    pending: list[bytes] = []  # parts with no audio, held for the next part that has some
    for part in parts:
        if _has_mp3_audio(part):
            merged.append([*pending, part])
            pending = []
        elif merged:
            merged[-1].append(part)
        else:
            pending.append(part)
    if not merged:
        return [data]
    # Each file without its leading tags: metadata only, which libsndfile reads no further than one
    # tag (two in a row, or a v2.4 footer, are "Format not recognised" to it).
    joined = [b"".join(pieces) for pieces in merged]
    return [part[_audio_start(part) :] for part in joined]


def _id3_tags(data: bytes) -> list[tuple[int, int]]:
    """(start, end) of each ID3v2 tag (a v2.4 footer included), none inside another, in order."""
    tags: list[tuple[int, int]] = []
    for match in itertools.islice(_ID3V2.finditer(data), _MAX_MARKS):
        start = match.start()
        if len(data) >= start + 10 and (not tags or start >= tags[-1][1]):
            tags.append((start, _tag_end(data, start)))
    return tags


def _tag_end(data: bytes, start: int) -> int:
    """Where the ID3v2 tag at ``start`` ends (a v2.4 footer included; possibly past the data's end)."""
    footer = 10 if data[start + 3] == 4 and data[start + 5] & 0x10 else 0
    return start + 10 + footer + _syncsafe(data[start + 6 : start + 10])


def id3_tag_cut_short(data: bytes) -> bool:
    """Whether an MP3 stops inside the ID3v2 tag it starts with (an upload cut short)."""
    return _ID3V2.match(data) is not None and len(data) >= 10 and _tag_end(data, 0) > len(data)


def _past_padding(data: bytes, offset: int) -> int:
    match = _PADDING.match(data, offset)
    return match.end() if match else offset


def _audio_start(part: bytes) -> int:
    """Where a file's first frame should be: past its leading ID3v2 tags and their padding."""
    offset = _past_padding(part, 0)
    for _ in range(_MAX_MARKS):
        if not (_ID3V2.match(part, offset) and len(part) >= offset + 10):
            break
        offset = _past_padding(part, _tag_end(part, offset))
    return offset


def _has_mp3_audio(part: bytes) -> bool:
    return _mp3_frame_at(part, _audio_start(part))


def mp3_states_its_length(part: bytes) -> bool:
    """Whether an MP3 file's first frame is a Xing/Info header stating its frame count; without one,
    libsndfile's length is an estimate from the file's size and first bitrate, not a stated length."""
    frame = _audio_start(part)
    if not _mp3_frame_at(part, frame):
        return False
    tag = frame + _tag_offset(part, frame)
    if part[tag : tag + 4] not in (b"Xing", b"Info") or len(part) < tag + 12 or not part[tag + 7] & 0x01:
        return False
    (frames,) = struct.unpack_from(">I", part, tag + 8)
    return frames > 0  # ffmpeg writing to a pipe leaves 0, which mpg123 reads as unknown


def _frame_holding_tag(data: bytes, tag: int) -> int | None:
    for before_tag in {4 + side_info for side_info in _SIDE_INFO.values()}:
        frame = tag - before_tag
        if frame >= 0 and _mp3_frame_at(data, frame) and _tag_offset(data, frame) == before_tag:
            return frame
    return None


def _tag_offset(data: bytes, frame: int) -> int:
    """Where mpg123 reads a Xing/Info tag: right after the side information (a CRC or not)."""
    mpeg1 = (data[frame + 1] >> 3) & 0x03 == 0x03
    mono = (data[frame + 3] >> 6) == 0x03
    return 4 + _SIDE_INFO[(mpeg1, mono)]


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
