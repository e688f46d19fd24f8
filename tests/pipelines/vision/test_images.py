"""Decoding untrusted uploads: base64 and data URLs, every accepted format and colour mode to 8-bit RGB,
and a clear 400 (413 for too many pixels) for everything else, decided before the pixels are decoded."""

from __future__ import annotations

import base64
import io

import numpy as np
import pytest
from PIL import Image, ImageFile

from pipelines.vision import ImageTooLarge, decode_base64_image, load_image
from shared_engine.errors import InvalidRequest
from tests.pipelines.vision.photos import as_array, centre_pixel, encode, photo, png_bomb, png_bytes

LIMIT = 40_000_000


@pytest.fixture(scope="module")
def chelsea() -> Image.Image:
    return photo("chelsea")


def refuse(data: bytes, max_pixels: int = LIMIT) -> InvalidRequest:
    with pytest.raises(InvalidRequest) as raised:
        load_image(data, max_pixels)
    assert raised.value.param == "image"
    return raised.value


# -- base64 ---------------------------------------------------------------------------------------------


def test_plain_base64_and_data_url_give_the_same_bytes(chelsea: Image.Image) -> None:
    data = encode(chelsea, "PNG")
    plain = base64.b64encode(data).decode()
    assert decode_base64_image(plain) == data
    assert decode_base64_image(f"data:image/png;base64,{plain}") == data
    assert decode_base64_image(f"DATA:IMAGE/PNG;BASE64,{plain}".replace("DATA", "data")) == data
    assert decode_base64_image(f"data:image/jpeg;charset=binary;base64,{plain}") == data


def test_base64_tolerates_line_breaks_missing_padding_and_the_url_safe_alphabet() -> None:
    data = bytes(range(256)) * 3 + b"\xfb\xff"
    wrapped = base64.encodebytes(data).decode()  # 76-character lines
    assert "\n" in wrapped
    assert decode_base64_image(wrapped) == data
    assert decode_base64_image(base64.b64encode(data).decode().rstrip("=")) == data
    urlsafe = base64.urlsafe_b64encode(data).decode()
    assert "-" in urlsafe or "_" in urlsafe
    assert decode_base64_image(urlsafe) == data


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "empty"),
        ("   \n", "empty"),
        ("data:image/png;base64,", "empty"),
        ("not base64 at all!", "not valid base64"),
        ("abcde", "not valid base64"),
        ("aGVsbG8=aGVsbG8=", "not valid base64"),
        ("data:image/png;base64", "no ','"),
        ("data:text/plain;base64,aGVsbG8=", "media type 'text/plain'"),
        ("data:;base64,aGVsbG8=", "media type 'none'"),
        ("data:image/png,aGVsbG8=", "must be base64-encoded"),
    ],
)
def test_bad_base64_and_data_urls_are_400s(text: str, message: str) -> None:
    with pytest.raises(InvalidRequest, match=message) as raised:
        decode_base64_image(text, param="input")
    assert raised.value.param == "input"


# -- accepted formats and modes -------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP", "GIF"])
def test_every_accepted_format_decodes_to_rgb(chelsea: Image.Image, fmt: str) -> None:
    image = load_image(encode(chelsea, fmt), LIMIT)
    assert image.mode == "RGB"
    assert image.size == chelsea.size
    error = np.abs(as_array(image) - as_array(chelsea)).mean()
    assert error < (0.01 if fmt == "PNG" else 12), f"{fmt}: mean error {error}"


def test_gif_gives_its_first_frame() -> None:
    frames = [Image.new("RGB", (32, 24), colour) for colour in ((255, 0, 0), (0, 0, 255))]
    data = encode(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)
    image = load_image(data, LIMIT)
    assert image.mode == "RGB"
    assert centre_pixel(image) == (255, 0, 0)


def test_transparency_is_composited_onto_white() -> None:
    rgba = Image.new("RGBA", (8, 8), (255, 0, 0, 0))
    rgba.putpixel((4, 4), (0, 0, 255, 255))
    image = load_image(encode(rgba, "PNG"), LIMIT)
    assert image.mode == "RGB"
    assert image.getpixel((0, 0)) == (255, 255, 255)
    assert image.getpixel((4, 4)) == (0, 0, 255)
    half = load_image(encode(Image.new("LA", (4, 4), (0, 128)), "PNG"), LIMIT)
    assert centre_pixel(half) == (127, 127, 127)


def test_palette_images_with_and_without_a_transparent_index(chelsea: Image.Image) -> None:
    palette = chelsea.quantize(64)
    image = load_image(encode(palette, "PNG"), LIMIT)
    assert image.mode == "RGB" and image.size == chelsea.size
    assert np.abs(as_array(image) - as_array(chelsea)).mean() < 12
    keyed = Image.new("P", (4, 4), 1)
    keyed.putpalette([0, 0, 0, 0, 255, 0] + [0] * 762)
    keyed.putpixel((0, 0), 0)
    keyed_image = load_image(encode(keyed, "PNG", transparency=0), LIMIT)
    assert keyed_image.getpixel((0, 0)) == (255, 255, 255)
    assert keyed_image.getpixel((2, 2)) == (0, 255, 0)


def test_greyscale_1_bit_and_cmyk(chelsea: Image.Image) -> None:
    for mode, fmt in (("L", "JPEG"), ("L", "PNG"), ("1", "PNG"), ("CMYK", "JPEG")):
        image = load_image(encode(chelsea.convert(mode), fmt), LIMIT)
        assert image.mode == "RGB", (mode, fmt)
        assert image.size == chelsea.size
    grey = load_image(encode(chelsea.convert("L"), "PNG"), LIMIT)
    red, green, blue = grey.split()
    assert as_array(red).tolist() == as_array(green).tolist() == as_array(blue).tolist()


def test_16_bit_greyscale_is_scaled_not_clipped() -> None:
    samples = np.array([[0, 256, 32768, 65535]], dtype=np.uint16)
    source = Image.fromarray(samples)
    assert source.mode == "I;16"
    image = load_image(encode(source, "PNG"), LIMIT)
    assert [image.getpixel((x, 0)) for x in range(4)] == [(0, 0, 0), (1, 1, 1), (128, 128, 128), (255,) * 3]


def test_exif_orientation_is_applied(chelsea: Image.Image) -> None:
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation: rotate 90° clockwise to display
    image = load_image(encode(chelsea, "JPEG", exif=exif.tobytes()), LIMIT)
    assert image.size == (chelsea.height, chelsea.width)


def test_draft_decodes_a_large_jpeg_at_a_reduced_scale(chelsea: Image.Image) -> None:
    large = chelsea.resize((chelsea.width * 4, chelsea.height * 4))
    data = encode(large, "JPEG", quality=90)
    assert load_image(data, LIMIT).size == large.size
    reduced = load_image(data, LIMIT, draft_size=256)
    assert min(reduced.size) >= 256
    assert reduced.width < large.width
    assert load_image(encode(large, "PNG"), LIMIT, draft_size=256).size == large.size  # JPEG only


# -- refusals -------------------------------------------------------------------------------------------


def test_truncated_images_stay_refused_process_wide() -> None:
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False


def test_empty_bytes() -> None:
    assert str(refuse(b"")) == "image is empty (0 bytes)"


@pytest.mark.parametrize(
    "data",
    [
        np.random.default_rng(0).bytes(4096),
        b"Hello, this is plain text and not a picture at all.\n" * 10,
        b"\x89PNG\r\n\x1a\n",
        b"\xff\xd8\xff",
    ],
    ids=["random", "text", "png-signature-only", "jpeg-marker-only"],
)
def test_not_an_image(data: bytes) -> None:
    message = str(refuse(data))
    assert "is not a readable JPEG, PNG, WebP or GIF file" in message
    assert f"({len(data)} bytes)" in message


@pytest.mark.parametrize("fmt", ["BMP", "TIFF", "ICO"])
def test_other_formats_are_named_in_the_refusal(chelsea: Image.Image, fmt: str) -> None:
    message = str(refuse(encode(chelsea.resize((64, 48)), fmt)))
    assert message == f"image format {fmt} is not supported; send JPEG, PNG, WebP or GIF"


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP", "GIF"])
def test_truncated_files_are_refused(chelsea: Image.Image, fmt: str) -> None:
    data = encode(chelsea, fmt)
    message = str(refuse(data[: len(data) // 2]))
    assert "truncated or corrupt" in message or "not a readable" in message, message


@pytest.mark.parametrize("fmt", ["JPEG", "PNG"])
def test_truncation_is_caught_by_the_full_decode(chelsea: Image.Image, fmt: str) -> None:
    data = encode(chelsea, fmt)
    cut = data[: len(data) * 3 // 4]
    with Image.open(io.BytesIO(cut)) as header_only:
        assert header_only.size == chelsea.size  # the header alone looks fine
    message = str(refuse(cut))
    assert message.startswith(f"image ({fmt} 451x300) is truncated or corrupt:"), message


@pytest.mark.parametrize(
    ("width", "height", "bit_depth", "color_type"),
    [(0, 0, 8, 0), (0, 300, 8, 2), (451, 0, 8, 2), (16, 16, 3, 2), (16, 16, 8, 5)],
    ids=["0x0", "0-wide", "0-high", "bad-bit-depth", "bad-colour-type"],
)
def test_zero_size_and_impossible_headers(width: int, height: int, bit_depth: int, color_type: int) -> None:
    rows = b"\x00" * (1 + 3 * max(width, 1)) * max(height, 1)
    message = str(refuse(png_bytes(width, height, bit_depth, color_type, rows)))
    assert "is not a readable JPEG, PNG, WebP or GIF file" in message


def test_a_header_over_the_limit_is_refused_before_decoding() -> None:
    # No pixel data at all: decoding would fail as truncated, so a 413 proves the header was checked first.
    data = png_bytes(7000, 7000, bit_depth=8, color_type=2)
    with pytest.raises(ImageTooLarge) as raised:
        load_image(data, LIMIT)
    assert str(raised.value) == "image is 7000x7000 (49000000 pixels), more than the limit of 40000000 pixels"
    assert (raised.value.limit, raised.value.size, raised.value.pixels) == (LIMIT, (7000, 7000), 49_000_000)
    assert raised.value.param == "image"
    assert isinstance(raised.value, InvalidRequest)


def test_a_real_compressible_bomb() -> None:
    data = png_bomb(10_000)  # 100M pixels in ~12 kB: over Pillow's own warning threshold too
    assert len(data) < 20_000
    with pytest.raises(
        ImageTooLarge, match=r"image is 10000x10000 \(100000000 pixels\), more than the limit"
    ):
        load_image(data, LIMIT)


def test_a_header_past_pillows_own_limit_is_still_a_413() -> None:
    data = png_bytes(100_000, 100_000, bit_depth=1, color_type=0)
    with pytest.raises(ImageTooLarge) as raised:
        load_image(data, LIMIT)
    assert str(raised.value) == "image has 10000000000 pixels, more than the limit of 40000000 pixels"


def test_the_limit_is_the_callers_and_inclusive(chelsea: Image.Image) -> None:
    data = encode(chelsea, "PNG")
    pixels = chelsea.width * chelsea.height
    assert load_image(data, pixels).size == chelsea.size
    with pytest.raises(
        ImageTooLarge, match=f"451x300 \\({pixels} pixels\\), more than the limit of {pixels - 1}"
    ):
        load_image(data, pixels - 1)
    assert Image.MAX_IMAGE_PIXELS is not None and Image.MAX_IMAGE_PIXELS > LIMIT  # not changed by the module
