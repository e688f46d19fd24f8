"""The length of a FLAC file that states none, read from its last frame.

A FLAC encoder writing to a pipe (ffmpeg's ``-f flac -``, ``flac -`` of a stream) cannot go back to its
STREAMINFO block and leaves the total sample count 0, "unknown". libsndfile then reads such a file from
memory until the data runs out and fails there, losing its last block. Every frame header numbers its
frame (or its first sample), so the last frame, found back from the end and confirmed by the CRC that
closes it, tells the length, which is written into STREAMINFO."""

from __future__ import annotations

import collections
import itertools
import re

from pipelines.asr.tags import audio_start, closing_tags

# STREAMINFO is the first metadata block, right after "fLaC" and its 4-byte block header; its total
# sample count takes the low 4 bits of its 14th byte and the 4 bytes after.
_TOTAL_AT = 4 + 4 + 13
_STREAMINFO_END = 4 + 4 + 34
# A frame begins with a 14-bit sync code, a reserved 0 bit, and its blocking strategy (fixed or variable).
_SYNC = re.compile(rb"\xff[\xf8\xf9]")
# How far back from the end the last frame is looked for (a frame at FLAC's largest block size, 8
# channels of 24 bits, is under 1.6 MB), how many sync codes found there are read as frame headers, and
# how many of those are checked against the CRC that closes the file: bounds on a crafted file's cost.
_LOOKBACK = 1 << 21
_MAX_SYNCS = 4096
_MAX_HEADERS = 4


def with_flac_length(part: bytes) -> bytes:
    """``part`` with the total sample count its last frame implies, where it is a FLAC file stating 0;
    else (another file, a stated length, no last frame found whole, fixed blocks without a first frame
    numbered 0 to size them by) ``part`` itself."""
    start = audio_start(part)  # past an ID3v2 tag in front, which some taggers add
    total_at = start + _TOTAL_AT
    if not _is_flac(part, start) or part[total_at] & 0x0F or any(part[total_at + 1 : total_at + 5]):
        return part
    last = _last_frame(part, start)
    if last is None:
        return part
    offset, number, samples = last
    if part[offset + 1] & 0x01:  # variable block sizes: a frame numbers its first sample
        total = number + samples
    else:  # fixed: a frame numbers itself, and every block but the last has the first one's size
        first = _frame_header(part, flac_frames_start(part, start))
        if first is None or first[0] != 0:
            return part
        total = number * first[1] + samples
    patched = bytearray(part)
    patched[total_at] = (patched[total_at] & 0xF0) | (total >> 32 & 0x0F)
    patched[total_at + 1 : total_at + 5] = (total & 0xFFFFFFFF).to_bytes(4, "big")
    return bytes(patched)


def ends_with_a_whole_frame(part: bytes) -> bool:
    """Whether a FLAC file's audio ends with a whole frame (its closing CRC holds): a file that does is
    no upload cut short, whatever the decoder makes of it."""
    start = audio_start(part)
    return _is_flac(part, start) and _last_frame(part, start) is not None


def flac_frames_start(data: bytes, start: int) -> int:
    """Where the frames of the FLAC file at ``start`` begin: past its metadata blocks (each a flag for
    the last, a type, and a 24-bit length)."""
    offset = start + 4
    while offset + 4 <= len(data):
        last, length = data[offset] & 0x80, int.from_bytes(data[offset + 1 : offset + 4], "big")
        offset += 4 + length
        if last:
            break
    return offset


def _is_flac(part: bytes, start: int) -> bool:
    return (
        part.startswith(b"fLaC", start)
        and len(part) >= start + _STREAMINFO_END
        and part[start + 4] & 0x7F == 0
    )


def _last_frame(part: bytes, start: int) -> tuple[int, int, int] | None:
    """The offset, frame or sample number, and samples of the frame that ends the audio (before any
    closing tags), found back from there and confirmed by its CRC-16; None where none is found whole."""
    end = closing_tags(part)
    first = max(start + _STREAMINFO_END, end - _LOOKBACK)  # STREAMINFO's largest frame: 0 or wrong
    last_syncs = collections.deque(
        (sync.start() for sync in _SYNC.finditer(part, first, end)), maxlen=_MAX_SYNCS
    )
    headers = (
        (offset, header)
        for offset in reversed(last_syncs)
        if (header := _frame_header(part, offset)) is not None
    )
    closing_crc = int.from_bytes(part[end - 2 : end], "big")
    for offset, (number, samples) in itertools.islice(headers, _MAX_HEADERS):
        if end - offset > 2 and _crc16(part[offset : end - 2]) == closing_crc:
            return offset, number, samples
    return None


def _frame_header(data: bytes, offset: int) -> tuple[int, int] | None:
    """(frame or sample number, samples in the frame) of the frame header at ``offset``, where its
    fields are valid and its CRC-8 holds; else None."""
    if offset + 6 > len(data):
        return None
    size_code, rate_code = data[offset + 2] >> 4, data[offset + 2] & 0x0F
    channels, sample_bits = data[offset + 3] >> 4, (data[offset + 3] >> 1) & 0x07
    if size_code == 0 or rate_code == 15 or channels > 10 or sample_bits == 3 or data[offset + 3] & 0x01:
        return None
    position = offset + 4
    number, width = _utf8_number(data, position)
    if width == 0:
        return None
    position += width
    extra_size = {6: 1, 7: 2}.get(size_code, 0)
    extra_rate = {12: 1, 13: 2, 14: 2}.get(rate_code, 0)
    end = position + extra_size + extra_rate
    if end >= len(data) or _crc8(data[offset:end]) != data[end]:
        return None
    if extra_size:
        samples = int.from_bytes(data[position : position + extra_size], "big") + 1
    elif size_code == 1:
        samples = 192
    elif size_code <= 5:
        samples = 576 << (size_code - 2)
    else:
        samples = 256 << (size_code - 8)
    return number, samples


def _utf8_number(data: bytes, offset: int) -> tuple[int, int]:
    """The number coded as UTF-8 is (extended to 36 bits, 7 bytes) at ``offset``, and its width in
    bytes; width 0 where it is not such a number."""
    if offset >= len(data):
        return 0, 0
    lead = data[offset]
    if lead < 0x80:
        return lead, 1
    width = 8 - (lead ^ 0xFF).bit_length()  # the leading 1s count the bytes
    if not 2 <= width <= 7 or offset + width > len(data):
        return 0, 0
    number = lead & (0x7F >> width)
    for byte in data[offset + 1 : offset + width]:
        if byte & 0xC0 != 0x80:
            return 0, 0
        number = number << 6 | byte & 0x3F
    return number, width


def _crc8(data: bytes) -> int:
    crc = 0
    for byte in data:
        crc = _CRC8_TABLE[crc ^ byte]
    return crc


def _crc16(data: bytes) -> int:
    crc = 0
    for byte in data:
        crc = ((crc << 8) & 0xFFFF) ^ _CRC16_TABLE[(crc >> 8) ^ byte]
    return crc


def _table(polynomial: int, bits: int) -> tuple[int, ...]:
    top, mask = 1 << (bits - 1), (1 << bits) - 1
    table = []
    for index in range(256):
        crc = index << (bits - 8)
        for _ in range(8):
            crc = ((crc << 1) ^ polynomial if crc & top else crc << 1) & mask
        table.append(crc)
    return tuple(table)


_CRC8_TABLE = _table(0x07, 8)  # FLAC's frame header CRC: x^8 + x^2 + x + 1
_CRC16_TABLE = _table(0x8005, 16)  # its frame CRC: x^16 + x^15 + x^2 + 1
