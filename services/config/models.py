"""The model configuration file (``models.toml``): which models are served, for which task, from where."""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from pipelines.asr.config import ENCODER_QUANTIZATIONS
from pipelines.sources import check_source_allowed
from services.config.settings import Settings
from shared_engine.config import CacheConfig, EngineConfig, SchedulerConfig, SpeculativeConfig
from shared_engine.micro_batcher import MicroBatchConfig
from shared_engine.quantization_config import DEFAULT_INT4_GROUP_SIZE, QuantizationConfig

TASKS = ("chat", "embedding", "vision", "asr", "tts", "rerank")
QUANTIZABLE_TASKS = ("chat", "asr")  # the tasks whose model decodes on the engine
# pipelines.rerank's methods, named here so that reading the configuration needs no transformers.
RERANK_METHODS = ("auto", "cross_encoder", "yes_no", "query_likelihood")
_MIB = 1 << 20


@dataclass(frozen=True)
class SpeculativeOptions:
    """``[models.speculative]`` of a chat model: ``method = "ngram"`` (prompt lookup) or
    ``"draft_model"`` with ``model`` = the draft's source (it must share the target's tokenizer)."""

    method: str = "ngram"
    num_speculative_tokens: int = 4
    prompt_lookup_min: int = 2
    prompt_lookup_max: int = 4
    disable_by_batch_size: int | None = None
    model: str | None = None

    def __post_init__(self) -> None:
        if (self.method == "draft_model") != (self.model is not None):
            raise ValueError(
                "speculative: method 'draft_model' needs model = <source>, and only it takes one"
            )
        self.to_config()  # validates the rest

    def to_config(self) -> SpeculativeConfig:
        return SpeculativeConfig(
            self.method,
            self.num_speculative_tokens,
            self.prompt_lookup_min,
            self.prompt_lookup_max,
            self.disable_by_batch_size,
        )


@dataclass(frozen=True)
class EngineOptions:
    kv_cache_memory_mb: int = 1024
    kv_cache_num_blocks: int | None = None
    block_size: int = 16
    enable_prefix_caching: bool = True
    kv_cache_dtype: str = "auto"  # shared_engine.config.KV_CACHE_DTYPES
    max_num_seqs: int = 64
    max_num_batched_tokens: int = 2048
    enable_chunked_prefill: bool = True
    max_model_len: int | None = None
    max_waiting_requests: int = 256
    max_waiting_tokens: int = 262_144
    cuda_graphs: bool = True  # decode steps replayed as CUDA graphs on a CUDA device

    def to_engine_config(self, speculative: SpeculativeOptions | None = None) -> EngineConfig:
        return EngineConfig(
            cache=CacheConfig(
                block_size=self.block_size,
                memory_bytes=self.kv_cache_memory_mb * _MIB,
                num_blocks=self.kv_cache_num_blocks,
                enable_prefix_caching=self.enable_prefix_caching,
                dtype=self.kv_cache_dtype,
            ),
            scheduler=SchedulerConfig(
                max_num_seqs=self.max_num_seqs,
                max_num_batched_tokens=self.max_num_batched_tokens,
                enable_chunked_prefill=self.enable_chunked_prefill,
                max_waiting_requests=self.max_waiting_requests,
                max_waiting_tokens=self.max_waiting_tokens,
            ),
            max_model_len=self.max_model_len,
            speculative=None if speculative is None else speculative.to_config(),
            cuda_graphs=self.cuda_graphs,
        )


@dataclass(frozen=True)
class BatchingOptions:
    """Micro-batching of one-shot encoders (embeddings, vision, the speech encoder, speech synthesis)."""

    max_batch_tokens: int = 16384
    max_batch_size: int = 128
    max_wait_ms: float = 2.0
    max_queued_items: int = 4096

    def to_config(self) -> MicroBatchConfig:
        return MicroBatchConfig(
            self.max_batch_tokens, self.max_batch_size, self.max_wait_ms, self.max_queued_items
        )


@dataclass(frozen=True)
class RerankOptions:
    """``[models.rerank]`` of a rerank model. ``method``: ``auto`` (a sequence-classification folder is
    a cross-encoder, a causal LM scores by query likelihood), ``yes_no`` (a causal LM trained to answer
    whether a passage fits, such as Qwen3-Reranker) or ``query_likelihood``. ``max_input_tokens``: the
    most tokens of one (query, passage) pair, passages cut to fit (default 512, within the model's
    window)."""

    method: str = "auto"
    max_input_tokens: int | None = None

    def __post_init__(self) -> None:
        if self.method not in RERANK_METHODS:
            raise ValueError(f"unknown rerank method {self.method!r}; known: {', '.join(RERANK_METHODS)}")
        limit = self.max_input_tokens
        if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 16):
            raise ValueError(f"max_input_tokens must be an integer >= 16, got {limit!r}")


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
    # Weight-only quantization of the linear layers of a chat model, or of a speech model's decoder:
    # "int8" | "int4" | "auto" (None: as loaded). auto: int4 with the float weights kept on a CPU (not
    # where the int4 kernel runs as AVX2: it is the faster at every batch size there), none on CUDA.
    quantization: str | None = None
    quantization_group_size: int | None = None  # int4 only; default DEFAULT_INT4_GROUP_SIZE
    quantization_lm_head: bool = False
    # Keep the float weights too, for batches the float matmul serves faster (shared_engine DualLinear).
    quantization_keep_float: bool = False
    # "int8" (default): the engine's integer kernels round each layer's input to int8 per group;
    # "float": torch's weight-only kernels, inputs unrounded (what Whisper's decoder needs).
    quantization_activations: str | None = None
    # asr only: "int8" runs the encoder's linear layers in int8, each input row rounded with a scale of its
    # own (shared_engine/row_int8_linear.py), where the model is float32 on a CPU; None: as loaded.
    encoder_quantization: str | None = None
    speculative: SpeculativeOptions | None = None  # chat only: speculative decoding
    rerank: RerankOptions | None = None  # rerank only (None: the defaults)

    def __post_init__(self) -> None:
        if not isinstance(self.parts, tuple):
            object.__setattr__(self, "parts", tuple(self.parts))
        if not all(isinstance(p, str) and p for p in self.parts):
            raise ValueError(f"model {self.name!r}: parts must be a list of file sources")
        if not self.name or any(c.isspace() for c in self.name):
            raise ValueError(f"invalid model name {self.name!r}: must be non-empty without whitespace")
        if self.task not in TASKS:
            raise ValueError(f"model {self.name!r}: unknown task {self.task!r}; known: {', '.join(TASKS)}")
        try:
            self.quantization_config  # noqa: B018 (validates the quantization fields)
        except ValueError as exc:
            raise ValueError(f"model {self.name!r}: {exc}") from None
        if self.encoder_quantization is not None and self.task != "asr":
            raise ValueError(f"model {self.name!r}: encoder_quantization applies to task 'asr' only")
        if self.encoder_quantization not in ENCODER_QUANTIZATIONS:
            raise ValueError(
                f"model {self.name!r}: encoder_quantization must be 'int8' or left out, "
                f"got {self.encoder_quantization!r}"
            )
        if self.speculative is not None and self.task != "chat":
            raise ValueError(f"model {self.name!r}: speculative decoding applies to task 'chat' only")
        if self.rerank is not None and self.task != "rerank":
            raise ValueError(f"model {self.name!r}: [models.rerank] applies to task 'rerank' only")

    @property
    def sources(self) -> tuple[str, ...]:
        """Every file or folder the model loads from."""
        draft = self.speculative.model if self.speculative and self.speculative.model else None
        return (self.source, *self.parts, *((draft,) if draft else ()))

    @property
    def quantization_config(self) -> QuantizationConfig | None:
        for flag in ("quantization_lm_head", "quantization_keep_float"):
            if not isinstance(getattr(self, flag), bool):
                raise ValueError(f"{flag} must be true or false, got {getattr(self, flag)!r}")
        if self.quantization is None:
            if (
                self.quantization_group_size is not None
                or self.quantization_lm_head
                or self.quantization_keep_float
                or self.quantization_activations is not None
            ):
                raise ValueError(
                    "quantization_group_size, quantization_lm_head, quantization_keep_float and "
                    "quantization_activations need quantization"
                )
            return None
        if self.task not in QUANTIZABLE_TASKS:
            raise ValueError(
                f"quantization applies to tasks {' and '.join(map(repr, QUANTIZABLE_TASKS))} only, "
                f"not {self.task!r}"
            )
        group_size = self.quantization_group_size
        if group_size is not None and self.quantization not in ("int4", "auto"):
            raise ValueError(
                f"quantization_group_size applies to int4 and auto only, not {self.quantization!r}"
            )
        return QuantizationConfig(
            self.quantization,
            DEFAULT_INT4_GROUP_SIZE if group_size is None else group_size,
            self.quantization_lm_head,
            self.quantization_keep_float,
            activations=self.quantization_activations or "int8",
        )


def _build(cls: type, table: dict[str, Any], where: str) -> Any:
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(table) - known)
    if unknown:
        raise ValueError(f"{where}: unknown key(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
    try:
        return cls(**table)
    except TypeError as exc:
        raise ValueError(f"{where}: {exc}") from None
    except ValueError as exc:
        raise ValueError(exc if str(exc).startswith("model ") else f"{where}: {exc}") from None


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
        table = entry.pop("speculative", None)
        spec = None if table is None else _build(SpeculativeOptions, table, f"{where}.speculative")
        table = entry.pop("rerank", None)
        rerank = None if table is None else _build(RerankOptions, table, f"{where}.rerank")
        options = {"engine": engine, "batching": batching, "speculative": spec, "rerank": rerank}
        specs.append(_build(ModelSpec, {**entry, **options}, where))
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


def configured_models(settings: Settings) -> list[ModelSpec]:
    """The models the service is configured to serve, each local source checked to lie inside the
    allowed model directories."""
    specs = load_model_specs(settings.models_config)
    for spec in specs:
        for source in spec.sources:
            try:
                check_source_allowed(source, settings.allowed_model_dirs)
            except ValueError as exc:
                raise ValueError(f"{settings.models_config}: model {spec.name!r}: {exc}") from None
    return specs
