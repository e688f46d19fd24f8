"""The engine on the packaged SmolLM2 (float32, CPU) as the parity tests build it, and their prompts."""

from __future__ import annotations

from typing import Any

import torch

from shared_engine.config import CacheConfig, EngineConfig, SchedulerConfig
from shared_engine.llm_engine import LLMEngine
from shared_engine.sampling_params import SamplingParams

PROMPTS = [
    "The capital of France is",
    "def fibonacci(n):",
    "Once upon a time, in a land far away, there lived a",
    "1, 2, 3, 4,",
    "Hello, my name is",
    "The quick brown fox jumps over the lazy dog. The quick brown fox jumps over the lazy dog. Then",
    "Water boils at",
    "In 1969, the first humans landed on the Moon. The mission was called Apollo 11 and the crew were",
]
MAX_TOKENS = 20
GREEDY = SamplingParams(max_tokens=MAX_TOKENS, temperature=0.0, ignore_eos=True)
CPU = torch.device("cpu")


def make_engine(model: Any, tokenizer: Any, **kw: Any) -> LLMEngine:
    cache = CacheConfig(
        block_size=kw.pop("block_size", 16),
        num_blocks=kw.pop("num_blocks", 256),
        enable_prefix_caching=kw.pop("prefix_caching", True),
        dtype=kw.pop("kv_cache_dtype", "auto"),
    )
    scheduler = SchedulerConfig(
        max_num_seqs=kw.pop("max_num_seqs", 64),
        max_num_batched_tokens=kw.pop("max_num_batched_tokens", 2048),
        enable_chunked_prefill=kw.pop("chunked_prefill", True),
    )
    assert not kw, f"unknown options {kw}"
    eos = frozenset({tokenizer.eos_token_id})
    return LLMEngine(
        model, tokenizer, EngineConfig(cache=cache, scheduler=scheduler), CPU, torch.float32, eos
    )
