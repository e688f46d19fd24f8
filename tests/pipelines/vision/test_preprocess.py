"""The evaluation transform: the same tensor as torchvision's Resize(256) + CenterCrop(224) + Normalize,
computed on the crop box only, so no aspect ratio can make it allocate more than one crop."""

from __future__ import annotations

import time

import pytest
import torch
from PIL import Image
from torchvision.transforms import v2

from pipelines.vision import ImageTransform
from tests.pipelines.vision.photos import photo


def reference(transform: ImageTransform) -> v2.Compose:
    return v2.Compose(
        [
            v2.Resize(transform.resize, interpolation=v2.InterpolationMode.BILINEAR, antialias=True),
            v2.CenterCrop(transform.crop),
            v2.ToImage(),
            v2.ToDtype(torch.float32, scale=True),
            v2.Normalize(transform.mean, transform.std),
        ]
    )


@pytest.mark.parametrize(
    "image",
    [
        photo("chelsea"),  # landscape, 451x300: a non-integer scale
        photo("chelsea").transpose(Image.Transpose.TRANSPOSE),  # portrait
        photo("coffee"),
        photo("astronaut"),  # square
        photo("coffee").resize((90, 60)),  # upscaled
    ],
    ids=["landscape", "portrait", "coffee", "square", "small"],
)
def test_matches_torchvision_resize_and_centre_crop(image: Image.Image) -> None:
    transform = ImageTransform()
    ours, theirs = transform(image), reference(transform)(image)
    assert ours.shape == theirs.shape == (3, 224, 224)
    assert ours.dtype == torch.float32
    # Pillow rounds to 8 bits once (box resize) where torchvision's result matches it exactly or by
    # one level: at most 1/255/std apart, and almost nowhere.
    assert float((ours - theirs).abs().max()) <= 1 / 255 / min(transform.std) + 1e-5
    assert float((ours - theirs).abs().mean()) < 1e-4


def test_other_sizes_and_statistics_come_from_the_transform() -> None:
    transform = ImageTransform(resize=160, crop=128, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))
    image = photo("coffee")
    ours = transform(image)
    assert ours.shape == (3, 128, 128)
    assert float((ours - reference(transform)(image)).abs().mean()) < 1e-4
    assert float(ours.min()) >= -1.0 and float(ours.max()) <= 1.0


def test_an_extreme_aspect_ratio_costs_one_crop() -> None:
    strip = Image.new("RGB", (1, 2_000_000), (200, 100, 50))  # resizing it whole: 256 x 512M pixels
    started = time.perf_counter()
    tensor = ImageTransform()(strip)
    assert time.perf_counter() - started < 2.0
    assert tensor.shape == (3, 224, 224)
    expected = (torch.tensor([200, 100, 50]) / 255 - torch.tensor(ImageTransform().mean)) / torch.tensor(
        ImageTransform().std
    )
    assert torch.allclose(tensor[:, 112, 112], expected, atol=1e-5)


def test_needs_rgb() -> None:
    with pytest.raises(ValueError, match="mode L"):
        ImageTransform()(Image.new("L", (10, 10)))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"crop": 0}, "crop must be >= 1"),
        ({"resize": 200, "crop": 224}, r"resize \(200\) must be >= crop \(224\)"),
        ({"std": (0.2, 0.0, 0.2)}, "std must be positive"),
        ({"mean": (0.5, 0.5)}, "3 channels"),
    ],
)
def test_validation(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        ImageTransform(**kwargs)  # type: ignore[arg-type]
