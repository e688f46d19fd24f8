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
    else (another file, a stated length, no last frame found whole) ``part`` itself."""
    if not part.startswith(b"fLaC") or len(part) < _STREAMINFO_END or part[4] & 0x7F != 0:
        return part
    if part[_TOTAL_AT] & 0x0F or any(part[_TOTAL_AT + 1 : _TOTAL_AT + 5]):
        return part
    block_size = int.from_bytes(part[10:12], "big")  # a fixed-blocksize stream's (its last block aside)
    largest_frame = int.from_bytes(part[15:18], "big")  # 0: unknown, as a streaming encoder leaves it
    lookback = min(largest_frame + 32, _LOOKBACK) if largest_frame else _LOOKBACK
    syncs = (sync.start() for sync in _SYNC.finditer(part, max(_STREAMINFO_END, len(part) - lookback)))
    last_syncs = collections.deque(syncs, maxlen=_MAX_SYNCS)
    headers = (
        (offset, header)
        for offset in reversed(last_syncs)
        if (header := _frame_header(part, offset)) is not None
    )
    closing_crc = int.from_bytes(part[-2:], "big")
    for offset, (number, samples) in itertools.islice(headers, _MAX_HEADERS):
        if _crc16(part[offset:-2]) == closing_crc:  # the file's last frame, whole
            total = (number if part[offset + 1] & 0x01 else number * block_size) + samples
            patched = bytearray(part)
            patched[_TOTAL_AT] = (patched[_TOTAL_AT] & 0xF0) | (total >> 32 & 0x0F)
            patched[_TOTAL_AT + 1 : _TOTAL_AT + 5] = (total & 0xFFFFFFFF).to_bytes(4, "big")
            return bytes(patched)
    return part


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
