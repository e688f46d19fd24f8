"""The asyncio front: many awaiting callers, one engine thread, aborts that free KV blocks."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from transformers import AutoTokenizer, LlamaConfig

from shared_engine.async_engine import AsyncLLMEngine
from shared_engine.config import CacheConfig, EngineConfig
from shared_engine.errors import ContextLengthExceeded
from shared_engine.llm_engine import LLMEngine
from shared_engine.models import MODEL_REGISTRY
from shared_engine.models.loader import arch_from_hf_config
from shared_engine.sampling_params import SamplingParams

CPU = torch.device("cpu")


@pytest.fixture()
def engine(smollm2_folder: Path) -> Iterator[AsyncLLMEngine]:
    tokenizer: Any = AutoTokenizer.from_pretrained(smollm2_folder)
    cfg = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
    )
    cfg.architectures = ["LlamaForCausalLM"]
    torch.manual_seed(0)
    arch = arch_from_hf_config(cfg)
    model = MODEL_REGISTRY.get(arch.architecture)(arch).eval()
    config = EngineConfig(cache=CacheConfig(block_size=8, num_blocks=128))
    front = AsyncLLMEngine(LLMEngine(model, tokenizer, config, CPU, torch.float32, frozenset()))
    yield front
    front.shutdown()


async def _wait_idle(front: AsyncLLMEngine) -> None:
    for _ in range(200):
        stats = front.stats()
        if stats.num_running == 0 and stats.num_waiting == 0:
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"engine still busy: {front.stats()}")


async def test_concurrent_callers_each_get_their_own_stream(engine: AsyncLLMEngine) -> None:
    params = SamplingParams(max_tokens=16, temperature=0, ignore_eos=True)

    async def run(i: int) -> list[int]:
        tokens: list[int] = []
        async for out in engine.generate(f"r{i}", [1, 2, 3, i + 10], params):
            assert out.request_id == f"r{i}"
            tokens.extend(out.token_ids)
        return tokens

    results = await asyncio.gather(*(run(i) for i in range(6)))
    assert all(len(r) == 16 for r in results)
    # The same prompt twice gives the same greedy tokens.
    assert await run(0) == results[0]


async def test_closing_the_stream_aborts_and_frees_blocks(engine: AsyncLLMEngine) -> None:
    params = SamplingParams(max_tokens=400, temperature=0, ignore_eos=True)
    stream = engine.generate("long", list(range(1, 40)), params)
    seen = 0
    async for _ in stream:
        seen += 1
        if seen == 3:
            break
    await stream.aclose()  # type: ignore[attr-defined]  (what a disconnecting client's handler does)
    await _wait_idle(engine)
    assert engine.stats().kv_cache_usage == 0.0


async def test_validation_errors_reach_the_caller(engine: AsyncLLMEngine) -> None:
    params = SamplingParams(max_tokens=500, temperature=0)
    with pytest.raises(ContextLengthExceeded, match="maximum context length is 512"):
        async for _ in engine.generate("too-long", list(range(1, 100)), params):
            pass
    # The engine keeps serving afterwards.
    outs = [o async for o in engine.generate("ok", [5, 6, 7], SamplingParams(max_tokens=2, temperature=0))]
    assert outs[-1].finished and outs[-1].num_output_tokens == 2
