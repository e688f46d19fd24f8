"""The sentence-transformers recipe of a folder: how token states become one vector."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch

POOLING_MODES = ("mean", "cls", "max")


@dataclass(frozen=True)
class PoolingRecipe:
    mode: str
    normalize: bool
    max_seq_length: int | None

    def __post_init__(self) -> None:
        if self.mode not in POOLING_MODES:
            raise ValueError(f"unsupported pooling mode {self.mode!r}; known: {', '.join(POOLING_MODES)}")


def read_recipe(folder: Path) -> PoolingRecipe:
    """Read ``modules.json``, the pooling config and ``sentence_bert_config.json``; a plain Hugging Face
    encoder folder without them gets mean pooling and L2 normalisation."""
    modules_file = folder / "modules.json"
    modules = json.loads(modules_file.read_text()) if modules_file.is_file() else []
    pooling_path = next((m["path"] for m in modules if m.get("type", "").endswith("Pooling")), "1_Pooling")
    normalize = any(m.get("type", "").endswith("Normalize") for m in modules) or not modules
    mode = "mean"
    pooling_file = folder / pooling_path / "config.json"
    if pooling_file.is_file():
        cfg = json.loads(pooling_file.read_text())
        if cfg.get("pooling_mode_cls_token"):
            mode = "cls"
        elif cfg.get("pooling_mode_max_tokens"):
            mode = "max"
        elif not cfg.get("pooling_mode_mean_tokens", True):
            raise ValueError(f"{pooling_file}: only mean, cls and max pooling are supported")
    st_file = folder / "sentence_bert_config.json"
    max_len = json.loads(st_file.read_text()).get("max_seq_length") if st_file.is_file() else None
    return PoolingRecipe(mode, normalize, max_len)


def pool(hidden: torch.Tensor, mask: torch.Tensor, recipe: PoolingRecipe) -> torch.Tensor:
    """``hidden [B, T, H]``, ``mask [B, T]`` → ``[B, H]`` in float32."""
    hidden = hidden.float()
    if recipe.mode == "cls":
        out = hidden[:, 0]
    elif recipe.mode == "max":
        out = hidden.masked_fill(~mask.bool().unsqueeze(-1), float("-inf")).amax(dim=1)
    else:
        m = mask.unsqueeze(-1).float()
        out = (hidden * m).sum(dim=1) / m.sum(dim=1).clamp_min(1e-9)
    return torch.nn.functional.normalize(out, dim=-1) if recipe.normalize else out
