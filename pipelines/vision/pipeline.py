"""The vision pipeline: EfficientNet-Lite image classification and image embeddings from one
micro-batched forward."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
from efficientnet_lite_pytorch import EfficientNet
from PIL import Image
from torchvision.models import EfficientNet_B0_Weights

from pipelines.sources import resolve_source
from pipelines.vision.images import load_image
from pipelines.vision.preprocess import IMAGENET_MEAN, IMAGENET_STD, ImageTransform
from shared_engine.compute import compute_lane
from shared_engine.device import DTYPES, resolve_device, resolve_dtype
from shared_engine.errors import InvalidRequest, about_item
from shared_engine.micro_batcher import BatchObserver, BatchStats, MicroBatchConfig, MicroBatcher

logger = logging.getLogger(__name__)

ARCHITECTURES = tuple(f"efficientnet-lite{i}" for i in range(5))
CHECKPOINT_SUFFIXES = (".pth", ".pt")


@dataclass(frozen=True, slots=True)
class Label:
    index: int
    label: str
    score: float  # softmax probability


class VisionOutput(NamedTuple):
    """One image's forward: pooled pre-classifier features (not normalised) and class logits."""

    features: np.ndarray
    logits: np.ndarray


@dataclass(frozen=True)
class VisionPipelineConfig:
    name: str
    source: str  # a .pth state dict, or a folder holding exactly one
    architecture: str = "efficientnet-lite0"
    labels: str | None = None  # a text file, one class name a line; None: the ImageNet-1k names
    dtype: str = "float32"
    device: str = "auto"
    # Every image costs 1, so max_batch_tokens is a second cap on images per forward. On CPU, images/s
    # peaks at batches of 2-4 and falls past 8 (activations leave the cache); a GPU wants more.
    batching: MicroBatchConfig = field(
        default_factory=lambda: MicroBatchConfig(max_batch_tokens=8, max_batch_size=8, max_wait_ms=2.0)
    )
    max_pixels: int = 40_000_000
    image_size: int = 224
    resize: int = 256
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD

    def __post_init__(self) -> None:
        if not self.name or not self.source:
            raise ValueError("a vision model needs a name and a source")
        if self.architecture not in ARCHITECTURES:
            raise ValueError(f"unknown architecture {self.architecture!r}; known: {', '.join(ARCHITECTURES)}")
        if self.dtype not in ("auto", *DTYPES):
            raise ValueError(f"unknown dtype {self.dtype!r}; known: auto, {', '.join(DTYPES)}")
        if self.max_pixels < 1:
            raise ValueError(f"max_pixels must be >= 1, got {self.max_pixels}")
        _ = self.transform  # validates image_size, resize, mean and std

    @property
    def transform(self) -> ImageTransform:
        return ImageTransform(resize=self.resize, crop=self.image_size, mean=self.mean, std=self.std)


class VisionPipeline:
    task = "vision"

    def __init__(self, config: VisionPipelineConfig, on_batch: BatchObserver | None = None) -> None:
        self.config = config
        self.name = config.name
        self.transform = config.transform
        self.device = resolve_device(config.device)
        self.dtype = resolve_dtype(config.dtype, self.device)
        checkpoint = checkpoint_file(resolve_source(config.source))
        self.model = build_model(config.architecture, config.image_size, read_state_dict(checkpoint))
        # channels_last: about 1.5x faster convolutions on CPU (and the layout tensor cores want).
        self.model.to(self.device, self.dtype, memory_format=torch.channels_last).eval()
        self.dimensions = int(self.model._fc.in_features)
        self.labels = read_labels(config.labels, int(self.model._fc.out_features))
        self.lane = compute_lane(self.device)
        self.batcher: MicroBatcher[torch.Tensor, VisionOutput] = MicroBatcher(
            self.forward_batch,
            lambda _: 1,
            config.batching,
            name=f"vision-{config.name}",
            lane=self.lane,
            on_batch=on_batch,
        )
        logger.info("vision model %s loaded from %s (%s, %s)", self.name, checkpoint, self.device, self.dtype)

    def open_image(self, data: bytes) -> Image.Image:
        """Decode an upload under this model's pixel limit; a JPEG decodes at a reduced scale when its
        short side stays >= ``resize``."""
        return load_image(data, self.config.max_pixels, draft_size=self.config.resize)

    async def run(self, images: Sequence[Image.Image | bytes]) -> list[VisionOutput]:
        """Features and logits of each image (or upload, decoded here), batched with whatever else is
        waiting."""
        if not images:
            return []
        # Preprocessing is a step of its own, not part of the batch: an odd image fails before it is
        # queued. Each upload is decoded and brought to the model's size before the next is decoded, so a
        # request of many large images holds one at full size (each may be 40 megapixels, 120 MB of RGB).
        # Resizing runs on the compute lane because it is torch work too.
        tensors = []
        for index, image in enumerate(images):
            if isinstance(image, bytes):
                try:
                    image = await asyncio.to_thread(self.open_image, image)
                except InvalidRequest as exc:
                    raise about_item(exc, f"image {index}") if len(images) > 1 else exc from None
            tensors.append(await self.lane.run_async(self.transform, image))
        return await self.batcher.submit(tensors)

    async def classify(self, images: Sequence[Image.Image | bytes], top_k: int = 5) -> list[list[Label]]:
        """The ``top_k`` most probable classes of each image, most probable first."""
        self.check_top_k(top_k)
        return [self.top_labels(out.logits, top_k) for out in await self.run(images)]

    def check_top_k(self, top_k: int) -> None:
        """Refuse a ``top_k`` outside 1..classes (callers may check before decoding any image)."""
        classes = len(self.labels)
        if isinstance(top_k, bool) or not isinstance(top_k, int) or not 1 <= top_k <= classes:
            raise InvalidRequest(
                f"top_k must be an integer from 1 to {classes}, got {top_k!r}", param="top_k"
            )

    async def embed(self, images: Sequence[Image.Image | bytes]) -> list[np.ndarray]:
        """L2-normalised float32 image embeddings of ``dimensions`` values."""
        vectors = []
        for out in await self.run(images):
            norm = float(np.linalg.norm(out.features))
            vectors.append((out.features / max(norm, 1e-12)).astype(np.float32))
        return vectors

    def top_labels(self, logits: np.ndarray, top_k: int) -> list[Label]:
        shifted = logits.astype(np.float64) - float(logits.max())
        probs = np.exp(shifted) / np.exp(shifted).sum()
        best = np.argsort(-probs, kind="stable")[:top_k]
        return [Label(int(i), self.labels[i], float(probs[i])) for i in best]

    @torch.inference_mode()
    def forward_batch(self, batch: list[torch.Tensor]) -> list[VisionOutput]:
        """One forward over ``batch`` right now, bypassing the micro-batcher (which calls this)."""
        pixels = torch.stack(batch).to(self.device, self.dtype, memory_format=torch.channels_last)
        # The model's own forward discards the pooled features, so pool and classify here.
        pooled = self.model.extract_features(pixels).mean(dim=(2, 3))
        logits = self.model._fc(pooled)
        features = pooled.float().cpu().numpy()
        scores = logits.float().cpu().numpy()
        return [VisionOutput(f, s) for f, s in zip(features, scores, strict=True)]

    def stats(self) -> BatchStats:
        return self.batcher.stats()

    @property
    def is_alive(self) -> bool:
        return self.batcher.is_alive

    def shutdown(self) -> None:
        self.batcher.shutdown()


def checkpoint_file(path: Path) -> Path:
    """``path`` itself, or the single checkpoint inside a folder."""
    if path.is_file():
        return path
    found = sorted(p for p in path.iterdir() if p.suffix in CHECKPOINT_SUFFIXES)
    if len(found) != 1:
        raise FileNotFoundError(
            f"{path} must hold exactly one {'/'.join(CHECKPOINT_SUFFIXES)} file, found {found}"
        )
    return found[0]


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """Tensors only: ``weights_only`` refuses pickled code. Accepts a bare state dict or one wrapped
    under ``state_dict``/``model``, with or without DataParallel's ``module.`` prefix."""
    loaded: Any = torch.load(path, map_location="cpu", weights_only=True)
    for key in ("state_dict", "model"):
        if isinstance(loaded, Mapping) and isinstance(loaded.get(key), Mapping):
            loaded = loaded[key]
    if not isinstance(loaded, Mapping) or not all(isinstance(v, torch.Tensor) for v in loaded.values()):
        raise ValueError(f"{path} is not a state dict of tensors")
    return {k.removeprefix("module."): v for k, v in loaded.items()}


def build_model(architecture: str, image_size: int, state: dict[str, torch.Tensor]) -> EfficientNet:
    """The EfficientNet of ``architecture`` with its classifier sized from the checkpoint, loaded strictly."""
    if "_fc.weight" not in state:
        raise ValueError(f"checkpoint has no classifier (_fc.weight); is it an {architecture} state dict?")
    classes = int(state["_fc.weight"].shape[0])
    model = EfficientNet.from_name(architecture, num_classes=classes, image_size=image_size)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise ValueError(f"checkpoint does not fit {architecture}: {exc}") from exc
    return model


def read_labels(source: str | None, classes: int) -> tuple[str, ...]:
    if source is None:
        names: list[str] = EfficientNet_B0_Weights.IMAGENET1K_V1.meta["categories"]
        origin = "ImageNet-1k"
    else:
        path = resolve_source(source)
        names = [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
        origin = str(path)
    if len(names) != classes:
        raise ValueError(f"the model has {classes} classes but {origin} names {len(names)}")
    return tuple(names)
