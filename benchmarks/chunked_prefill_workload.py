"""The chunked-prefill benchmark's workload and engines: the streams' short prompts, the long prompt of
exactly N tokens of real text, and the two scheduler configurations (chunked, unchunked), each with an
engine sized so that no stream ends inside the window and nothing is preempted."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch

from benchmarks.offline_engine import BLOCK_SIZE, make_engine
from benchmarks.workload import build_prompts, corpus_words, default_corpus
from shared_engine.config import SchedulerConfig
from shared_engine.llm_engine import LLMEngine

STREAM_PREFIX_TAG = "chunked-prefill"
SPARE_STREAM_TOKENS = 16  # the streams' own prefill may take a step or two more
SPARE_BLOCKS = 4


@dataclass(frozen=True)
class Workload:
    streams: list[list[int]]  # the running streams' prompts
    long_ids: list[int]  # the prompt that arrives once they all decode
    warmup_tokens: int  # tokens per stream before it arrives
    after_tokens: int  # the long request's tokens after its first


def stream_prompts(tokenizer: Any, count: int, length: int) -> list[list[int]]:
    """``count`` prompts of about ``length`` tokens, each with its own prefix (``benchmarks.workload``)."""
    words = corpus_words(default_corpus())
    prompts = build_prompts(words, tokenizer, count, length, seed=0, prefix_tag=STREAM_PREFIX_TAG)
    return [tokenizer.encode(pr.text, add_special_tokens=False) for pr in prompts]


def long_prompt(tokenizer: Any, length: int) -> list[int]:
    """Exactly ``length`` tokens of the corpus, repeated as often as needed."""
    text = default_corpus().read_text(encoding="utf-8")
    ids: list[int] = tokenizer.encode(text, add_special_tokens=False)
    copies = math.ceil(length / len(ids))
    if copies > 1:
        ids = tokenizer.encode("\n\n".join([text] * copies), add_special_tokens=False)
    return ids[:length]


def scheduler_configs(streams: int, chunk_budget: int, unchunked_budget: int) -> dict[str, SchedulerConfig]:
    return {
        "chunked": SchedulerConfig(
            max_num_seqs=max(64, streams + 1),
            max_num_batched_tokens=chunk_budget,
            enable_chunked_prefill=True,
        ),
        "unchunked": SchedulerConfig(
            max_num_seqs=max(64, streams + 1),
            max_num_batched_tokens=unchunked_budget,
            enable_chunked_prefill=False,
        ),
    }


def prefill_steps(long_len: int, budget: int, streams: int) -> int:
    """Steps the long prompt needs when every step also carries the streams' decodes."""
    return math.ceil(long_len / (budget - streams))


def stream_max_tokens(work: Workload, sched: SchedulerConfig) -> int:
    """Enough tokens per stream that none ends inside the window."""
    steps = prefill_steps(len(work.long_ids), sched.max_num_batched_tokens, len(work.streams))
    return work.warmup_tokens + steps + work.after_tokens + SPARE_STREAM_TOKENS


def engine_for(
    model: Any, tokenizer: Any, device: torch.device, dtype: torch.dtype, sched: SchedulerConfig,
    work: Workload, stream_max: int,
) -> LLMEngine:  # fmt: skip
    """An engine with KV blocks for all of the workload at once: no preemption."""
    blocks = sum(math.ceil((len(s) + stream_max) / BLOCK_SIZE) for s in work.streams)
    blocks += math.ceil((len(work.long_ids) + work.after_tokens + 1) / BLOCK_SIZE) + len(work.streams)
    return make_engine(model, tokenizer, device, dtype, blocks + SPARE_BLOCKS, sched)
