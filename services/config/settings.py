"""Process-wide settings, read from the environment in this one place."""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

_N = TypeVar("_N", int, float)

REPO_ROOT = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class Settings:
    host: str = "127.0.0.1"
    port: int = 8000
    models_config: Path = REPO_ROOT / "models.toml"
    data_dir: Path = REPO_ROOT / ".data"
    # Where converted model files are kept; None: <data_dir>/models. Several data dirs may share one.
    model_cache: Path | None = None
    log_level: str = "info"
    log_format: str = "json"  # JSON lines, or "text" for reading in a terminal
    max_upload_mb: int = 25  # request bodies, uploads included (OpenAI's audio limit)
    max_audio_seconds: float = 3600.0
    max_image_pixels: int = 40_000_000
    # Distributed mode: task → gRPC addresses of its workers (an empty mapping: everything in-process).
    endpoints: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    rpc_timeout_s: float = 600.0  # deadline of every call to a worker (a request's own deadline, if sooner)
    request_timeout_s: float = 600.0  # a /v1 request's deadline unless it sends X-Request-Timeout
    max_request_timeout_s: float = 3600.0  # the most X-Request-Timeout may ask for
    shutdown_grace_s: float = 30.0  # on SIGTERM, how long running requests may take to finish
    # Where local model files may be loaded from; empty: the models config's folder and the data dir.
    model_dirs: tuple[Path, ...] = ()
    api_keys: tuple[str, ...] = ()  # when set, /v1 needs "Authorization: Bearer <one of them>"
    metrics_require_key: bool = False  # /metrics behind the API keys too
    # Origins whose browser pages may call the API (CORS): "*" for any; empty: same origin only.
    cors_origins: tuple[str, ...] = ()
    # How the gateway spreads chat requests over LLM replicas (services/rpc/routing.py).
    chat_routing: str = "cache_aware"

    def __post_init__(self) -> None:
        if not 0 < self.port < 65536:
            raise ValueError(f"PORT must be between 1 and 65535, got {self.port}")
        if not 0 < self.request_timeout_s <= self.max_request_timeout_s:
            raise ValueError(
                "MMSERVE_REQUEST_TIMEOUT_S must be > 0 and <= MMSERVE_MAX_REQUEST_TIMEOUT_S, got "
                f"{self.request_timeout_s} and {self.max_request_timeout_s}"
            )
        if self.shutdown_grace_s < 0:
            raise ValueError(f"MMSERVE_SHUTDOWN_GRACE_S must be >= 0, got {self.shutdown_grace_s}")
        if self.log_format not in ("json", "text"):
            raise ValueError(f"MMSERVE_LOG_FORMAT must be json or text, got {self.log_format!r}")
        if self.max_upload_mb < 1:
            raise ValueError(f"MMSERVE_MAX_UPLOAD_MB must be >= 1, got {self.max_upload_mb}")
        if self.max_audio_seconds <= 0:
            raise ValueError(f"MMSERVE_MAX_AUDIO_SECONDS must be > 0, got {self.max_audio_seconds}")
        if self.chat_routing not in ROUTING_POLICIES:
            policies = ", ".join(ROUTING_POLICIES)
            raise ValueError(f"MMSERVE_CHAT_ROUTING must be one of {policies}, got {self.chat_routing!r}")
        if self.max_image_pixels < 1:
            raise ValueError(f"MMSERVE_MAX_IMAGE_PIXELS must be >= 1, got {self.max_image_pixels}")

    @property
    def max_upload_bytes(self) -> int:
        return self.max_upload_mb << 20

    @property
    def allowed_model_dirs(self) -> tuple[Path, ...]:
        return self.model_dirs or (self.models_config.parent, self.data_dir)

    @property
    def model_cache_dir(self) -> Path:
        return self.model_cache if self.model_cache is not None else self.data_dir / "models"

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
            model_cache=Path(e["MMSERVE_MODEL_CACHE_DIR"]) if e.get("MMSERVE_MODEL_CACHE_DIR") else None,
            log_level=e.get("MMSERVE_LOG_LEVEL", "info").lower(),
            log_format=e.get("MMSERVE_LOG_FORMAT", "json").lower(),
            max_upload_mb=_number(e, "MMSERVE_MAX_UPLOAD_MB", 25, int),
            max_audio_seconds=_number(e, "MMSERVE_MAX_AUDIO_SECONDS", 3600.0, float),
            max_image_pixels=_number(e, "MMSERVE_MAX_IMAGE_PIXELS", 40_000_000, int),
            endpoints=parse_endpoints(e.get("MMSERVE_ENDPOINTS", "")),
            rpc_timeout_s=_number(e, "MMSERVE_RPC_TIMEOUT_S", 600.0, float),
            request_timeout_s=_number(e, "MMSERVE_REQUEST_TIMEOUT_S", 600.0, float),
            max_request_timeout_s=_number(e, "MMSERVE_MAX_REQUEST_TIMEOUT_S", 3600.0, float),
            shutdown_grace_s=_number(e, "MMSERVE_SHUTDOWN_GRACE_S", 30.0, float),
            model_dirs=tuple(Path(d) for d in e.get("MMSERVE_MODEL_DIRS", "").split(os.pathsep) if d.strip()),
            api_keys=tuple(k.strip() for k in e.get("MMSERVE_API_KEYS", "").split(",") if k.strip()),
            metrics_require_key=_flag(e, "MMSERVE_METRICS_REQUIRE_KEY"),
            cors_origins=tuple(o.strip() for o in e.get("MMSERVE_CORS_ORIGINS", "").split(",") if o.strip()),
            chat_routing=e.get("MMSERVE_CHAT_ROUTING", "cache_aware").strip().lower(),
        )


ROUTING_POLICIES = ("cache_aware", "round_robin")
REMOTE_TASKS = ("chat", "embedding", "vision", "asr", "tts", "retrieval")
# Model tasks whose models run in another task's workers: rerankers beside the embedding models, as TEI
# serves both (no worker kind of their own to deploy, scale and health-check).
HOSTED_BY = {"rerank": "embedding"}


def worker_task(task: str) -> str:
    """The worker task (MMSERVE_ENDPOINTS, ``worker --task``) that serves models of ``task``."""
    return HOSTED_BY.get(task, task)


def parse_endpoints(text: str) -> dict[str, tuple[str, ...]]:
    """``task=address[,address...];task=...`` → {task: addresses}. An address is ``host:port`` or a
    gRPC target such as ``dns:///name:port`` (every replica the name resolves to)."""
    out: dict[str, tuple[str, ...]] = {}
    for entry in filter(None, (part.strip() for part in text.split(";"))):
        task, sep, addresses = entry.partition("=")
        task = task.strip()
        targets = tuple(a.strip() for a in addresses.split(",") if a.strip())
        if not sep or not targets:
            raise ValueError(f"MMSERVE_ENDPOINTS: {entry!r} is not task=address[,address...]")
        if task not in REMOTE_TASKS:
            raise ValueError(f"MMSERVE_ENDPOINTS: unknown task {task!r}; known: {', '.join(REMOTE_TASKS)}")
        if task in out:
            raise ValueError(f"MMSERVE_ENDPOINTS: task {task!r} is given twice")
        out[task] = targets
    return out


def _flag(env: Mapping[str, str], key: str) -> bool:
    raw = env.get(key, "").strip().lower()
    if raw in ("", "0", "false", "no"):
        return False
    if raw in ("1", "true", "yes"):
        return True
    raise ValueError(f"{key} must be true or false, got {raw!r}")


def _number(env: Mapping[str, str], key: str, default: _N, kind: Callable[[str], _N]) -> _N:
    raw = env.get(key)
    if raw is None:
        return default
    try:
        return kind(raw)
    except ValueError:
        raise ValueError(f"{key} must be a number, got {raw!r}") from None
