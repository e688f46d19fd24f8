"""Process-wide settings, read from the environment in this one place."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class Settings:
    host: str = "127.0.0.1"
    port: int = 8000
    models_config: Path = REPO_ROOT / "models.toml"
    data_dir: Path = REPO_ROOT / ".data"
    log_level: str = "info"

    def __post_init__(self) -> None:
        if not 0 < self.port < 65536:
            raise ValueError(f"PORT must be between 1 and 65535, got {self.port}")

    @property
    def model_cache_dir(self) -> Path:
        return self.data_dir / "models"

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None) -> Settings:
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
        )
