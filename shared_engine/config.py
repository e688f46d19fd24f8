"""Configuration of the decoder engine: one frozen dataclass per component, validated on construction."""

from __future__ import annotations

from dataclasses import dataclass, field

# What the KV cache stores: "auto" is bfloat16 under a float32 model, else the model's own dtype.
KV_CACHE_DTYPES = ("auto", "bfloat16", "float16", "float32")


@dataclass(frozen=True)
class CacheConfig:
    """Paged KV cache: fixed-size blocks, optionally reused across requests by prefix hash.

    Exactly one of ``num_blocks`` and ``memory_bytes`` decides the pool size; when ``num_blocks`` is
    set it wins (tests use it to force preemption with a tiny pool). ``dtype``: what keys and values are
    stored as (``KV_CACHE_DTYPES``; attention computes in the model's dtype whatever it is).
    """

    block_size: int = 16
    memory_bytes: int = 1 << 30
    num_blocks: int | None = None
    enable_prefix_caching: bool = True
    dtype: str = "auto"

    def __post_init__(self) -> None:
        if self.dtype not in KV_CACHE_DTYPES:
            raise ValueError(f"KV cache dtype must be one of {KV_CACHE_DTYPES}, got {self.dtype!r}")
        if self.block_size < 1 or self.block_size & (self.block_size - 1):
            raise ValueError(f"block_size must be a positive power of two, got {self.block_size}")
        if self.num_blocks is not None and self.num_blocks < 1:
            raise ValueError(f"num_blocks must be >= 1, got {self.num_blocks}")
        if self.memory_bytes < 1:
            raise ValueError(f"memory_bytes must be >= 1, got {self.memory_bytes}")


@dataclass(frozen=True)
class SchedulerConfig:
    """Continuous batching limits.

    ``max_num_batched_tokens`` is the per-step token budget shared by prefill and decode; a prompt
    longer than what is left of it is prefilled in chunks over several steps when
    ``enable_chunked_prefill`` is on, so running decodes are never starved by one long prompt.
    """

    max_num_seqs: int = 64
    max_num_batched_tokens: int = 2048
    enable_chunked_prefill: bool = True
    # Admission control: past these a new request is refused (429) instead of queued without bound.
    max_waiting_requests: int = 256
    max_waiting_tokens: int = 262_144  # prompt (and, after a preemption, generated) tokens waiting

    def __post_init__(self) -> None:
        if self.max_num_seqs < 1:
            raise ValueError(f"max_num_seqs must be >= 1, got {self.max_num_seqs}")
        if self.max_waiting_requests < 0:
            raise ValueError(f"max_waiting_requests must be >= 0, got {self.max_waiting_requests}")
        if self.max_waiting_tokens < 1:
            raise ValueError(f"max_waiting_tokens must be >= 1, got {self.max_waiting_tokens}")
        if self.max_num_batched_tokens < 1:
            raise ValueError(f"max_num_batched_tokens must be >= 1, got {self.max_num_batched_tokens}")


SPECULATIVE_METHODS = ("ngram", "draft_model")


@dataclass(frozen=True)
class SpeculativeConfig:
    """Speculative decoding: each step a decoding request carries up to ``num_speculative_tokens``
    guessed tokens, which the target model checks in the same forward pass.

    ``ngram`` guesses by prompt lookup: the tokens that followed the latest earlier occurrence of the
    sequence's last ``prompt_lookup_max`` … ``prompt_lookup_min`` tokens (no second model; strong when
    answers copy their context). ``draft_model`` runs a smaller model sharing the target's tokenizer
    (the pipeline loads it). While more than ``disable_by_batch_size`` requests run, nobody speculates:
    a large batch already keeps the device busy, and verifying guesses would only add work.
    """

    method: str = "ngram"
    num_speculative_tokens: int = 4
    prompt_lookup_min: int = 2
    prompt_lookup_max: int = 4
    disable_by_batch_size: int | None = None

    def __post_init__(self) -> None:
        if self.method not in SPECULATIVE_METHODS:
            raise ValueError(f"speculative method must be one of {SPECULATIVE_METHODS}, got {self.method!r}")
        if not 1 <= self.num_speculative_tokens <= 16:
            raise ValueError(
                f"num_speculative_tokens must be from 1 to 16, got {self.num_speculative_tokens}"
            )
        if not 1 <= self.prompt_lookup_min <= self.prompt_lookup_max:
            raise ValueError(
                "prompt_lookup_min and prompt_lookup_max must satisfy 1 <= min <= max, got "
                f"{self.prompt_lookup_min} and {self.prompt_lookup_max}"
            )
        if self.disable_by_batch_size is not None and self.disable_by_batch_size < 1:
            raise ValueError(f"disable_by_batch_size must be >= 1, got {self.disable_by_batch_size}")


@dataclass(frozen=True)
class EngineConfig:
    """Everything the decoder engine needs besides the model itself.

    ``cuda_graphs``: on a CUDA device, a decoder-only model's decode-only steps are captured as CUDA
    graphs (one per padded batch size and context width, when first met) and replayed; off, every step
    launches its kernels eagerly, as on a CPU (vLLM's ``enforce_eager``).
    """

    cache: CacheConfig = field(default_factory=CacheConfig)
    scheduler: SchedulerConfig = field(default_factory=SchedulerConfig)
    max_model_len: int | None = None
    speculative: SpeculativeConfig | None = None  # None: one token per request per step
    cuda_graphs: bool = True

    def __post_init__(self) -> None:
        if self.max_model_len is not None and self.max_model_len < 2:
            raise ValueError(f"max_model_len must be >= 2, got {self.max_model_len}")
