"""Turning untrusted image bytes into an RGB picture, refusing anything that is not a whole, modest-sized
JPEG, PNG, WebP or GIF."""

from __future__ import annotations

import base64
import binascii
import io
import re
import warnings

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from shared_engine.errors import InvalidRequest, PayloadTooLarge

# Pillow's JPEG reader returns a JPEG that carries extra pictures (as many cameras write) as format MPO.
OPEN_FORMATS = ("JPEG", "PNG", "WEBP", "GIF")
ACCEPTED = "JPEG, PNG, WebP or GIF"
DATA_URL = re.compile(r"data:(?P<type>[^,;]*)(?P<params>(?:;[^,;]*)*),(?P<data>.*)", re.DOTALL)
BOMB_PIXELS = re.compile(r"\((\d+) pixels\)")
SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I")
ALPHA_MODES = ("RGBA", "RGBa", "LA", "La", "PA")
WHITE = (255, 255, 255, 255)


class ImageTooLarge(PayloadTooLarge):
    """The image has more pixels than the server decodes (the HTTP layer answers 413)."""

    def __init__(self, limit: int, size: tuple[int, int] | None = None, pixels: int | None = None) -> None:
        if size is not None:
            pixels = size[0] * size[1]
            what = f"image is {size[0]}x{size[1]} ({pixels} pixels)"
        elif pixels is not None:
            what = f"image has {pixels} pixels"
        else:
            what = "image is too large"
        super().__init__(f"{what}, more than the limit of {limit} pixels", param="image")
        self.limit = limit
        self.size = size
        self.pixels = pixels


def decode_base64_image(text: str, param: str = "image") -> bytes:
    """The bytes of plain base64 or of a ``data:image/<type>;base64,`` URL (standard or URL-safe
    alphabet, whitespace and missing padding tolerated)."""
    payload = text.strip()
    if payload.lower().startswith(("http://", "https://")):
        raise InvalidRequest(
            "image is a URL; images are never fetched: send its bytes as base64 or a data URL, or as a "
            "multipart file",
            param=param,
        )
    if payload.startswith("data:"):
        payload = _data_url_payload(payload, param)
    payload = "".join(payload.split())
    if not payload:
        raise InvalidRequest("image is empty: no base64 data", param=param)
    if len(payload) % 4 == 1:
        raise InvalidRequest(f"image is not valid base64: {len(payload)} characters", param=param)
    payload += "=" * (-len(payload) % 4)
    alphabet = b"-_" if "-" in payload or "_" in payload else None
    try:
        return base64.b64decode(payload, altchars=alphabet, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise InvalidRequest(f"image is not valid base64: {exc}", param=param) from exc


def _data_url_payload(url: str, param: str) -> str:
    match = DATA_URL.fullmatch(url)
    if match is None:
        raise InvalidRequest("image data URL has no ',' before its data", param=param)
    media_type = match["type"].strip().lower()
    params = [p.strip().lower() for p in match["params"].split(";") if p.strip()]
    if not media_type.startswith("image/"):
        raise InvalidRequest(
            f"image data URL has media type {media_type or 'none'!r}; expected image/...", param=param
        )
    if "base64" not in params:
        raise InvalidRequest("image data URL must be base64-encoded (data:image/...;base64,...)", param=param)
    return match["data"]


def load_image(data: bytes, max_pixels: int, draft_size: int | None = None) -> Image.Image:
    """Decode ``data`` fully into an RGB image, checking its size in the header before any pixel is
    decoded. ``draft_size`` lets a JPEG decode at a reduced scale whose short side stays >= it."""
    if not data:
        raise InvalidRequest("image is empty (0 bytes)", param="image")
    image = _open(data, max_pixels)
    width, height = image.size
    if width <= 0 or height <= 0:
        raise InvalidRequest(f"image has zero size ({width}x{height})", param="image")
    if width * height > max_pixels:
        raise ImageTooLarge(max_pixels, size=(width, height))
    if draft_size is not None and image.format in ("JPEG", "MPO"):
        image.draft("RGB", (draft_size, draft_size))
    source = f"{image.format} {width}x{height}"
    try:
        # The whole decode happens here, so truncation and corruption surface now (as long as
        # ImageFile.LOAD_TRUNCATED_IMAGES stays False, which this module never changes).
        image.load()
        ImageOps.exif_transpose(image, in_place=True)
        return to_rgb(image)
    # Pillow's decoders raise many unrelated types on malformed input; all of them mean "bad upload".
    except Exception as exc:
        raise InvalidRequest(f"image ({source}) is truncated or corrupt: {exc}", param="image") from exc


def _open(data: bytes, max_pixels: int) -> Image.Image:
    """Parse only the header. Pillow's own bomb check reads a process-wide limit, so it is a backstop
    here: its warning is silenced (the caller checks ``max_pixels``) and its error becomes ours.
    ``catch_warnings`` is not thread-safe before Python 3.14; a race can at worst leave that one
    warning silenced process-wide."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            return Image.open(io.BytesIO(data), formats=OPEN_FORMATS)
    except Image.DecompressionBombError as exc:
        found = BOMB_PIXELS.search(str(exc))
        raise ImageTooLarge(max_pixels, pixels=int(found[1]) if found else None) from exc
    except UnidentifiedImageError as exc:
        other = _identify(data)
        if other is not None:
            message = f"image format {other} is not supported; send {ACCEPTED}"
        else:
            message = f"image is not a readable {ACCEPTED} file ({len(data)} bytes)"
        raise InvalidRequest(message, param="image") from exc
    except Exception as exc:  # a recognised format whose reader gave up on the header (e.g. WebP)
        raise InvalidRequest(f"image is truncated or corrupt: {exc}", param="image") from exc


def _identify(data: bytes) -> str | None:
    """The format Pillow would recognise ``data`` as with every plugin enabled, to name it in an error."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as image:
                return image.format
    except Exception:
        return None


def to_rgb(image: Image.Image) -> Image.Image:
    """8-bit RGB; transparent pixels are composited onto white and 16-bit samples scaled, not clipped."""
    if image.mode in SIXTEEN_BIT_MODES:
        samples = np.clip(np.asarray(image, dtype=np.int64), 0, 65535) >> 8
        image = Image.fromarray(samples.astype(np.uint8))
    if image.mode == "P":
        image = image.convert("RGBA" if "transparency" in image.info else "RGB")
    if image.mode in ALPHA_MODES or "transparency" in image.info:
        rgba = image.convert("RGBA")
        return Image.alpha_composite(Image.new("RGBA", rgba.size, WHITE), rgba).convert("RGB")
    return image if image.mode == "RGB" else image.convert("RGB")
