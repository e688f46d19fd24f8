"""Smaller models.toml files for tests that need a server but not every model."""

from __future__ import annotations

from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def only_models(folder: Path, *names: str) -> Path:
    """A copy of the repository's models.toml keeping only the models ``names`` (in its order)."""
    blocks = (REPO / "models.toml").read_text().split("[[models]]")[1:]
    kept = [b for b in blocks if any(f'name = "{n}"' in b for n in names)]
    if len(kept) != len(names):
        raise ValueError(f"models.toml does not configure all of {names}")
    path = folder / "models.toml"
    path.write_text("".join("[[models]]" + b for b in kept))
    return path
