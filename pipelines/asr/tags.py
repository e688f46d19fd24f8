"""The metadata tags audio files carry around their audio: ID3v2 (in front, or at the end with a footer),
ID3v1 (the last 128 bytes), APEv2 (at the end, with or without its header), and the zero padding
taggers leave. Where a file's audio begins and ends is read past them."""

from __future__ import annotations

import itertools
import re

ID3V2 = re.compile(rb"ID3[\x02-\x04]\x00")
_PADDING = re.compile(rb"\x00*")
_ID3V1_SIZE = 128
_APE = b"APETAGEX"
_APE_SIZE = 32  # an APE tag's header and its footer, each
# Tags looked at in one file at most: far more than any file or upload of files joined end to end holds,
# and a bound on a crafted file's cost.
MAX_TAGS = 4096
# How far after a file's audio the footer of an APE tag without a header is looked for.
_APE_REACH = 16 << 20


def id3_tags(data: bytes) -> list[tuple[int, int]]:
    """(start, end) of each ID3v2 tag (a v2.4 footer included), none inside another, in order."""
    tags: list[tuple[int, int]] = []
    for match in itertools.islice(ID3V2.finditer(data), MAX_TAGS):
        start = match.start()
        if len(data) >= start + 10 and (not tags or start >= tags[-1][1]):
            tags.append((start, tag_end(data, start)))
    return tags


def tag_end(data: bytes, start: int) -> int:
    """Where the ID3v2 tag at ``start`` ends (a v2.4 footer included; possibly past the data's end)."""
    footer = 10 if data[start + 3] == 4 and data[start + 5] & 0x10 else 0
    size = sum((b & 0x7F) << (7 * (3 - i)) for i, b in enumerate(data[start + 6 : start + 10]))  # syncsafe
    return start + 10 + footer + size


def id3_tag_cut_short(data: bytes) -> bool:
    """Whether a file stops inside the ID3v2 tag it starts with (an upload cut short)."""
    return ID3V2.match(data) is not None and len(data) >= 10 and tag_end(data, 0) > len(data)


def past_padding(data: bytes, offset: int) -> int:
    match = _PADDING.match(data, offset)
    return match.end() if match else offset


def audio_start(part: bytes) -> int:
    """Where a file's audio should begin: past its leading ID3v2 tags and their padding."""
    offset = past_padding(part, 0)
    for _ in range(MAX_TAGS):
        if not (ID3V2.match(part, offset) and len(part) >= offset + 10):
            break
        offset = past_padding(part, tag_end(part, offset))
    return offset


def past_trailers(data: bytes, offset: int) -> int:
    """Past the tags and padding that may follow a file's audio at ``offset``: ID3v1, APEv2 (with its
    header, or found by a footer whose size reaches back to ``offset``), ID3v2, zeros."""
    for _ in range(MAX_TAGS):
        if data.startswith(b"TAG", offset) and len(data) >= offset + _ID3V1_SIZE:
            offset += _ID3V1_SIZE
        elif data.startswith(_APE, offset) and len(data) >= offset + _APE_SIZE:
            offset += _APE_SIZE + _ape_size(data, offset)
        elif (footer_end := _ape_footer_end(data, offset)) is not None:
            offset = footer_end
        elif ID3V2.match(data, offset) and len(data) >= offset + 10:
            offset = tag_end(data, offset)
        elif data.startswith(b"\x00", offset):
            offset = past_padding(data, offset)
        else:
            break
    return offset


def closing_tags(data: bytes) -> int:
    """Where the tags a file ends with begin: an ID3v1 tag, an APEv2 tag before it or alone (found by its
    footer, whether or not it has a header)."""
    end = len(data) - _ID3V1_SIZE if data.startswith(b"TAG", max(0, len(data) - _ID3V1_SIZE)) else len(data)
    if end >= _APE_SIZE and data.startswith(_APE, end - _APE_SIZE):
        header = _APE_SIZE if data[end - 9] & 0x80 else 0  # the flags' top bit: the tag has a header too
        end = max(0, end - _ape_size(data, end - _APE_SIZE) - header)
    return end


def _ape_size(data: bytes, at: int) -> int:
    """The size an APE header or footer at ``at`` states: the tag's items and its footer."""
    return int.from_bytes(data[at + 12 : at + 16], "little")


def _ape_footer_end(data: bytes, offset: int) -> int | None:
    """The end of an APE tag without a header that begins at ``offset`` (its footer's size reaching back
    exactly there), or None."""
    footer = data.find(_APE, offset, offset + _APE_REACH)
    if footer < 0 or len(data) < footer + _APE_SIZE:
        return None
    end = footer + _APE_SIZE
    return end if end - _ape_size(data, footer) == offset else None
