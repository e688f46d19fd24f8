"""The chat model's ``LLMEngine`` as the offline benchmarks (compile, roofline, chunked_prefill) run it in
their own process: a KV cache of a fixed number of blocks with prefix caching off, so that no run reuses
another's prompt; greedy ``ignore_eos`` requests; prompts cut from the corpus; and the order of the
configurations in interleaved rounds."""

from __future__ import annotations

import math
from typing import Any

import torch

from benchmarks.workload import default_corpus
from shared_engine.config import CacheConfig, EngineConfig, SchedulerConfig
from shared_engine.llm_engine import LLMEngine
from shared_engine.sampling_params import SamplingParams

BLOCK_SIZE = 16
SPARE_BLOCKS = 8  # beyond what the prompts and outputs of one batch fill
PROMPT_STRIDE = 97  # tokens between the starts of consecutive prompts in the corpus


def make_engine(
    model: Any,
    tokenizer: Any,
    device: torch.device,
    dtype: torch.dtype,
    blocks: int,
    scheduler: SchedulerConfig | None = None,
    kv_cache_dtype: str = "auto",
) -> LLMEngine:
    """An engine over ``model`` with ``blocks`` KV blocks of ``kv_cache_dtype``, no prefix caching, no
    EOS tokens (the requests are ``ignore_eos``) and ``scheduler`` (default: the engine's)."""
    cache = CacheConfig(
        block_size=BLOCK_SIZE, num_blocks=blocks, enable_prefix_caching=False, dtype=kv_cache_dtype
    )
    config = EngineConfig(cache=cache, scheduler=scheduler or SchedulerConfig())
    return LLMEngine(model, tokenizer, config, device, dtype, frozenset())


def kv_blocks(batch: int, prompt_len: int, output_len: int) -> int:
    """KV blocks for ``batch`` requests of ``prompt_len`` + ``output_len`` tokens all at once."""
    return batch * math.ceil((prompt_len + output_len) / BLOCK_SIZE) + SPARE_BLOCKS


def greedy(max_tokens: int) -> SamplingParams:
    return SamplingParams(max_tokens, temperature=0.0, ignore_eos=True)


def corpus_ids(tokenizer: Any) -> list[int]:
    """The whole corpus (Python's LICENSE.txt) as token ids, without special tokens."""
    ids: list[int] = tokenizer.encode(default_corpus().read_text(encoding="utf-8"), add_special_tokens=False)
    return ids


def decode_prompts(corpus: list[int], count: int, length: int) -> list[list[int]]:
    """``count`` prompts of ``length`` tokens of ``corpus``, each starting ``PROMPT_STRIDE`` tokens
    (wrapping around) after the one before; ``corpus`` must be longer than ``length``."""
    span = len(corpus) - length
    if span < 1:
        raise ValueError(f"prompts of {length} tokens need a corpus longer than its {len(corpus)} tokens")
    return [corpus[(i * PROMPT_STRIDE) % span :][:length] for i in range(count)]


def rotation(names: list[str], round_index: int) -> list[str]:
    """The order of round ``round_index``: ``names`` rotated by one more each round, so that no
    configuration always runs first and a machine whose speed drifts slows them all alike."""
    shift = round_index % len(names)
    return names[shift:] + names[:shift]
