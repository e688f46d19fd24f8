"""A speech recognition model's configuration: where its weights are, how its decoder runs on the shared
engine and how its encoder batches."""

from __future__ import annotations

from dataclasses import dataclass, field

from shared_engine.config import CacheConfig, EngineConfig
from shared_engine.micro_batcher import MicroBatchConfig
from shared_engine.quantization_config import QuantizationConfig

ENCODER_QUANTIZATIONS = (None, "int8")


@dataclass(frozen=True)
class ASRPipelineConfig:
    name: str
    source: str
    parts: tuple[str, ...] = ()
    dtype: str = "float32"
    device: str = "auto"
    engine: EngineConfig = field(
        default_factory=lambda: EngineConfig(cache=CacheConfig(memory_bytes=256 << 20))
    )
    batching: MicroBatchConfig = field(default_factory=lambda: MicroBatchConfig(max_batch_size=8))
    quantization: QuantizationConfig | None = None  # the decoder's linear layers (None: as loaded)
    # "int8": the encoder's linear layers with int8 weights and inputs rounded per row, where it is float32
    # on a CPU (shared_engine.row_int8_linear); None: as loaded.
    encoder_quantization: str | None = None

    def __post_init__(self) -> None:
        if not self.name or not self.source:
            raise ValueError("a speech recognition model needs a name and a source")
        if self.encoder_quantization not in ENCODER_QUANTIZATIONS:
            raise ValueError(
                f"encoder_quantization must be one of {', '.join(map(str, ENCODER_QUANTIZATIONS))}, "
                f"got {self.encoder_quantization!r}"
            )
