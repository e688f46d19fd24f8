"""Real photographs (scikit-image's sample data) and hand-made image bytes for the vision tests."""

from __future__ import annotations

import io
import struct
import zlib
from typing import Any

import numpy as np
import skimage.data
from PIL import Image

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def photo(name: str) -> Image.Image:
    """``skimage.data.<name>()`` as an RGB picture (chelsea: a cat, coffee: an espresso, ...)."""
    return Image.fromarray(getattr(skimage.data, name)()).convert("RGB")


def encode(image: Image.Image, fmt: str, **options: Any) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **options)
    return buffer.getvalue()


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_bytes(
    width: int, height: int, bit_depth: int = 8, color_type: int = 0, rows: bytes | None = None
) -> bytes:
    """A PNG written by hand: a header claiming any size, and ``rows`` (filter bytes included) as its
    data; no data at all when ``rows`` is None."""
    header = struct.pack(">IIBBBBB", width, height, bit_depth, color_type, 0, 0, 0)
    data = png_chunk(b"IDAT", zlib.compress(rows, 9)) if rows is not None else b""
    return PNG_SIGNATURE + png_chunk(b"IHDR", header) + data + png_chunk(b"IEND", b"")


def png_bomb(side: int) -> bytes:
    """A valid all-black 1-bit ``side`` x ``side`` PNG: side² pixels in a few kilobytes per 10k side."""
    row = b"\x00" * (1 + (side + 7) // 8)  # filter byte, then the packed bits
    return png_bytes(side, side, bit_depth=1, color_type=0, rows=row * side)


def centre_pixel(image: Image.Image) -> tuple[int, ...]:
    value = image.getpixel((image.width // 2, image.height // 2))
    assert isinstance(value, tuple)
    return value


def as_array(image: Image.Image) -> np.ndarray:
    return np.asarray(image, dtype=np.int16)
