"""Process-wide settings, read from the environment in this one place."""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

_N = TypeVar("_N", int, float)

REPO_ROOT = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class Settings:
    host: str = "127.0.0.1"
    port: int = 8000
    models_config: Path = REPO_ROOT / "models.toml"
    data_dir: Path = REPO_ROOT / ".data"
    log_level: str = "info"
    max_upload_mb: int = 25  # request bodies, uploads included (OpenAI's audio limit)
    max_audio_seconds: float = 3600.0
    max_image_pixels: int = 40_000_000

    def __post_init__(self) -> None:
        if not 0 < self.port < 65536:
            raise ValueError(f"PORT must be between 1 and 65535, got {self.port}")
        if self.max_upload_mb < 1:
            raise ValueError(f"MMSERVE_MAX_UPLOAD_MB must be >= 1, got {self.max_upload_mb}")
        if self.max_audio_seconds <= 0:
            raise ValueError(f"MMSERVE_MAX_AUDIO_SECONDS must be > 0, got {self.max_audio_seconds}")
        if self.max_image_pixels < 1:
            raise ValueError(f"MMSERVE_MAX_IMAGE_PIXELS must be >= 1, got {self.max_image_pixels}")

    @property
    def max_upload_bytes(self) -> int:
        return self.max_upload_mb << 20

    @property
    def model_cache_dir(self) -> Path:
        return self.data_dir / "models"

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        e = os.environ if env is None else env
        port = e.get("PORT", "8000")
        if not port.isdigit():
            raise ValueError(f"PORT must be an integer, got {port!r}")
        return cls(
            host=e.get("HOST", "127.0.0.1"),
            port=int(port),
            models_config=Path(e.get("MMSERVE_MODELS_CONFIG", str(REPO_ROOT / "models.toml"))),
            data_dir=Path(e.get("MMSERVE_DATA_DIR", str(REPO_ROOT / ".data"))),
            log_level=e.get("MMSERVE_LOG_LEVEL", "info").lower(),
            max_upload_mb=_number(e, "MMSERVE_MAX_UPLOAD_MB", 25, int),
            max_audio_seconds=_number(e, "MMSERVE_MAX_AUDIO_SECONDS", 3600.0, float),
            max_image_pixels=_number(e, "MMSERVE_MAX_IMAGE_PIXELS", 40_000_000, int),
        )


def _number(env: Mapping[str, str], key: str, default: _N, kind: Callable[[str], _N]) -> _N:
    raw = env.get(key)
    if raw is None:
        return default
    try:
        return kind(raw)
    except ValueError:
        raise ValueError(f"{key} must be a number, got {raw!r}") from None
