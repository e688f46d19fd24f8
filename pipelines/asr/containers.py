"""What audio containers say of their structure, read before libsndfile decodes them: the files an
upload joins end to end, whether an MP3 states its length, an Ogg page or ID3 tag cut short.

`cat a.mp3 b.mp3` and a recorded Ogg radio stream (one logical stream per track, "chained") are audio
that players and FFmpeg play through; libsndfile stops at the end of the first part — of an MP3 at the
frame count its Xing/Info header states or at a change of format, of a FLAC at the samples its
STREAMINFO states, of an Ogg at its first logical stream.
Each part is decoded alone and the parts joined. An MP3 without a Xing header is given one stating the
frames it holds (libsndfile would read it as far as its first frame's bitrate predicts)."""

from __future__ import annotations

import bisect
import itertools
import re
import struct
from collections.abc import Iterator

from pipelines.asr.flac_frames import flac_frames_start
from pipelines.asr.mp3_frames import (
    TAG_OFFSETS,
    first_frame,
    frames,
    frames_may_follow,
    header_at,
    xing_frame,
)
from pipelines.asr.tags import (
    audio_start,
    closing_tags,
    id3_tags,
    past_padding,
    past_trailers,
)

_MP3_TAG = re.compile(rb"Xing|Info")
_FLAC_START = re.compile(rb"fLaC[\x00\x80]\x00\x00\x22")
# Tags, and Xing/Info headers, looked at in one file at most: far more than any upload of files joined end
# to end holds (past them, the rest stays in the last part), and a bound on a crafted file's cost.
_MAX_MARKS = 4096


def split_chained(data: bytes) -> list[bytes]:
    """The parts of ``data``, each a file of its own, in order; ``[data]`` for a file of one part."""
    if data.startswith(b"OggS"):
        return _ogg_parts(data)
    if data.startswith(b"RIFF"):
        return _riff_parts(data)
    if data.startswith(b"fLaC"):
        return _flac_parts(data)
    if data.startswith(b"ID3") or header_at(data, 0) is not None:
        return _mp3_parts(data)
    start = first_frame(data)  # a stream captured from the middle of a frame: libsndfile finds no format
    return [data] if start is None else _mp3_parts(data[start:])


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


def _flac_parts(data: bytes) -> list[bytes]:
    """A FLAC file begins with its magic and the header of its STREAMINFO block (34 bytes long), looked
    for past the metadata of the file before (which may hold a whole FLAC file, as a picture or an
    application's block)."""
    starts: list[int] = [0]
    while len(starts) <= _MAX_MARKS:
        match = _FLAC_START.search(data, flac_frames_start(data, starts[-1]))
        if match is None or flac_frames_start(data, match.start()) >= len(data):  # no frames: no file
            break
        starts.append(match.start())
    return _cut(data, starts)


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
    tags = id3_tags(data)
    tag_starts = [start for start, _ in tags]
    own_headers = {past_padding(data, end) for _, end in tags}
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
    return [piece for part in joined for piece in _split_by_frames(part[audio_start(part) :])]


def _split_by_frames(part: bytes) -> list[bytes]:
    """Where a file's frames change format (files of other rates or channels joined without tags), run
    on past the count its Xing/Info header states (a file without one joined after it), or go on after
    the ID3v1 or APE tag or padding that ended a file, a new file begins: a decoder stops at each."""
    starts, offset = [0], 0
    while len(starts) <= _MAX_MARKS:
        first, stated, walked, end = None, _stated_frames(part, offset), 0, offset
        for at, header in frames(part, offset):
            first = first or header
            another = not first.same_format(header) or (stated and walked == stated + 1)
            if another and _audio_frame_at(part, at):
                starts.append(at)
                first, stated, walked = header, None, 0
            walked, end = walked + 1, at + header.length
        offset = past_trailers(part, end)
        if offset == end or not _audio_frame_at(part, offset):
            break
        starts.append(offset)
    return _cut(part, starts[: _MAX_MARKS + 1])


def with_mp3_length(part: bytes) -> bytes:
    """An MP3 that states no length (no Xing/Info header, or one counting 0 frames), given a Xing header
    that states the whole frames it holds, where they follow one another to its end (its closing tags
    and padding aside). libsndfile reads it otherwise only as far as it estimates from the first frame's
    bitrate: a VBR file that starts louder than it goes on would lose the rest unheard. Junk between
    frames is left to libsndfile's own resynchronisation."""
    start = audio_start(part)
    header, stated = header_at(part, start), _stated_frames(part, start)
    if header is None or stated:
        return part
    first = start if stated is None else start + header.length  # past a header counting 0 frames
    count, end = 0, first
    for offset, frame in frames(part, first):
        count, end = count + 1, offset + frame.length
    if not count or frames_may_follow(part, past_trailers(part, end), closing_tags(part)):
        return part
    return part[:start] + xing_frame(part[first : first + 4], count) + part[first:]


def _has_mp3_audio(part: bytes) -> bool:
    return _audio_frame_at(part, audio_start(part))


def _audio_frame_at(data: bytes, offset: int) -> bool:
    """Whether a whole frame of audio (beside a Xing/Info frame) begins at ``offset``: part of one, or a
    header frame alone, is what is left of a file cut short after another."""
    needed = 1 if _stated_frames(data, offset) is None else 2
    return len(list(itertools.islice(frames(data, offset), needed))) == needed


def mp3_states_its_length(part: bytes) -> bool:
    """Whether an MP3 file's first frame is a Xing/Info header stating its frame count; without one,
    libsndfile's length is an estimate from the file's size and first bitrate, not a stated length."""
    return bool(_stated_frames(part, audio_start(part)))


def _stated_frames(part: bytes, frame: int) -> int | None:
    """The audio frames the Xing/Info header in the frame at ``frame`` states (0: unknown, which ffmpeg
    writing to a pipe leaves and mpg123 reads so); None where that frame holds no such header."""
    header = header_at(part, frame)
    if header is None:
        return None
    tag = frame + header.tag_offset
    if part[tag : tag + 4] not in (b"Xing", b"Info"):
        return None
    if len(part) < tag + 12 or not part[tag + 7] & 0x01:
        return 0
    (count,) = struct.unpack_from(">I", part, tag + 8)
    return int(count)


def _frame_holding_tag(data: bytes, tag: int) -> int | None:
    for before_tag in TAG_OFFSETS:
        header = header_at(data, tag - before_tag)
        if header is not None and header.tag_offset == before_tag:
            return tag - before_tag
    return None


def _cut(data: bytes, starts: list[int]) -> list[bytes]:
    ends = [*starts[1:], len(data)]
    return [data[s:e] for s, e in zip(starts, ends, strict=True) if e > s]
