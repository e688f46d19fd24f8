"""EfficientNet-style evaluation preprocessing: short side to ``resize``, centre crop ``crop``, scale to
[0, 1], normalise per channel."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class ImageTransform:
    resize: int = 256
    crop: int = 224
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD

    def __post_init__(self) -> None:
        if self.crop < 1:
            raise ValueError(f"crop must be >= 1, got {self.crop}")
        if self.resize < self.crop:
            raise ValueError(f"resize ({self.resize}) must be >= crop ({self.crop})")
        if len(self.mean) != 3 or len(self.std) != 3:
            raise ValueError(f"mean and std need 3 channels, got {self.mean} and {self.std}")
        if any(s <= 0 for s in self.std):
            raise ValueError(f"std must be positive, got {self.std}")

    def crop_box(self, width: int, height: int) -> tuple[float, float, float, float]:
        """The region of a ``width`` x ``height`` picture that becomes the centre crop once its short
        side is scaled to ``resize``, rounded as torchvision's ``Resize`` + ``CenterCrop`` round."""
        short, long = min(width, height), max(width, height)
        scaled_long = int(self.resize * long / short)
        scaled_w, scaled_h = (self.resize, scaled_long) if width <= height else (scaled_long, self.resize)
        left = round((scaled_w - self.crop) / 2.0)
        top = round((scaled_h - self.crop) / 2.0)
        sx, sy = width / scaled_w, height / scaled_h
        return left * sx, top * sy, (left + self.crop) * sx, (top + self.crop) * sy

    def __call__(self, image: Image.Image) -> torch.Tensor:
        """A float32 tensor [3, crop, crop] from an RGB image."""
        if image.mode != "RGB":
            raise ValueError(f"expected an RGB image, got mode {image.mode}")
        # Resampling only the crop box gives the same pixels as resizing the whole picture and then
        # cropping (Pillow's filter still reads the pixels around the box) but costs crop² output
        # pixels, whatever the aspect ratio: a 1 x 40M-pixel strip would otherwise become 10G pixels.
        square = image.resize(
            (self.crop, self.crop), Image.Resampling.BILINEAR, box=self.crop_box(*image.size)
        )
        pixels = torch.from_numpy(np.asarray(square, dtype=np.float32) / 255.0).permute(2, 0, 1)
        mean = torch.tensor(self.mean, dtype=torch.float32).view(3, 1, 1)
        std = torch.tensor(self.std, dtype=torch.float32).view(3, 1, 1)
        return ((pixels - mean) / std).contiguous()
