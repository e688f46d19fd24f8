"""The model configuration file (``models.toml``): which models are served, for which task, from where."""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from shared_engine.config import CacheConfig, EngineConfig, SchedulerConfig
from shared_engine.micro_batcher import MicroBatchConfig

TASKS = ("chat", "embedding", "vision", "asr", "tts")
_MIB = 1 << 20


@dataclass(frozen=True)
class EngineOptions:
    kv_cache_memory_mb: int = 1024
    kv_cache_num_blocks: int | None = None
    block_size: int = 16
    enable_prefix_caching: bool = True
    max_num_seqs: int = 64
    max_num_batched_tokens: int = 2048
    enable_chunked_prefill: bool = True
    max_model_len: int | None = None

    def to_engine_config(self) -> EngineConfig:
        return EngineConfig(
            cache=CacheConfig(
                block_size=self.block_size,
                memory_bytes=self.kv_cache_memory_mb * _MIB,
                num_blocks=self.kv_cache_num_blocks,
                enable_prefix_caching=self.enable_prefix_caching,
            ),
            scheduler=SchedulerConfig(
                max_num_seqs=self.max_num_seqs,
                max_num_batched_tokens=self.max_num_batched_tokens,
                enable_chunked_prefill=self.enable_chunked_prefill,
            ),
            max_model_len=self.max_model_len,
        )


@dataclass(frozen=True)
class BatchingOptions:
    """Micro-batching of one-shot encoders (embeddings, vision, the speech encoder, speech synthesis)."""

    max_batch_tokens: int = 16384
    max_batch_size: int = 128
    max_wait_ms: float = 2.0

    def to_config(self) -> MicroBatchConfig:
        return MicroBatchConfig(self.max_batch_tokens, self.max_batch_size, self.max_wait_ms)


@dataclass(frozen=True)
class ModelSpec:
    name: str
    task: str
    source: str
    dtype: str = "auto"
    device: str = "auto"
    # Files whose concatenation, in order, is the model's weight file (weights shipped split in parts).
    parts: tuple[str, ...] = ()
    engine: EngineOptions = field(default_factory=EngineOptions)
    batching: BatchingOptions | None = None  # None: the pipeline's own default for its model

    def __post_init__(self) -> None:
        if not isinstance(self.parts, tuple):
            object.__setattr__(self, "parts", tuple(self.parts))
        if not all(isinstance(p, str) and p for p in self.parts):
            raise ValueError(f"model {self.name!r}: parts must be a list of file sources")
        if not self.name or any(c.isspace() for c in self.name):
            raise ValueError(f"invalid model name {self.name!r}: must be non-empty without whitespace")
        if self.task not in TASKS:
            raise ValueError(f"model {self.name!r}: unknown task {self.task!r}; known: {', '.join(TASKS)}")


def _build(cls: type, table: dict[str, Any], where: str) -> Any:
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(table) - known)
    if unknown:
        raise ValueError(f"{where}: unknown key(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
    try:
        return cls(**table)
    except TypeError as exc:
        raise ValueError(f"{where}: {exc}") from None


def parse_model_specs(data: dict[str, Any], origin: str = "<config>") -> list[ModelSpec]:
    entries = data.get("models")
    if not isinstance(entries, list) or not entries:
        raise ValueError(f"{origin}: expected at least one [[models]] table")
    specs: list[ModelSpec] = []
    for i, entry in enumerate(entries):
        where = f"{origin}: models[{i}]"
        entry = dict(entry)
        engine = _build(EngineOptions, entry.pop("engine", {}), f"{where}.engine")
        table = entry.pop("batching", None)
        batching = None if table is None else _build(BatchingOptions, table, f"{where}.batching")
        specs.append(_build(ModelSpec, {**entry, "engine": engine, "batching": batching}, where))
    names = [s.name for s in specs]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise ValueError(f"{origin}: duplicate model name(s) {', '.join(dupes)}")
    return specs


def load_model_specs(path: Path) -> list[ModelSpec]:
    if not path.is_file():
        raise FileNotFoundError(f"model configuration {path} does not exist")
    with path.open("rb") as f:
        return parse_model_specs(tomllib.load(f), str(path))
