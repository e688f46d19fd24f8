"""What the KV cache stores: bfloat16 under a float32 model by default, the model's own dtype otherwise."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from transformers import AutoConfig, AutoTokenizer

from shared_engine.attention import kv_cache_dtype
from shared_engine.config import CacheConfig, EngineConfig
from shared_engine.llm_engine import LLMEngine
from shared_engine.model_runner import ModelRunner, Segment
from shared_engine.models.loader import build_decoder, iter_safetensors

CPU = torch.device("cpu")
F32, BF16, F16 = torch.float32, torch.bfloat16, torch.float16


@pytest.fixture(scope="module")
def model(smollm2_folder: Path) -> Any:
    return build_decoder(
        AutoConfig.from_pretrained(smollm2_folder), iter_safetensors(smollm2_folder), CPU, F32
    )


@pytest.mark.parametrize(
    ("name", "model_dtype", "expected"),
    [
        ("auto", F32, BF16),
        ("auto", BF16, BF16),
        ("auto", F16, F16),
        ("float32", F32, F32),
        ("float16", F32, F16),
        ("bfloat16", BF16, BF16),
    ],
)
def test_the_cache_dtype_for_a_model(name: str, model_dtype: torch.dtype, expected: torch.dtype) -> None:
    assert kv_cache_dtype(name, model_dtype) == expected


def test_a_16_bit_model_keeps_its_own_cache_dtype_and_unknown_names_are_refused() -> None:
    with pytest.raises(ValueError, match="not float32"):
        kv_cache_dtype("float32", BF16)
    with pytest.raises(ValueError, match="not float16"):
        kv_cache_dtype("float16", BF16)
    with pytest.raises(ValueError, match="KV cache dtype must be one of"):
        CacheConfig(dtype="fp8")


def test_a_float32_engine_stores_bfloat16_and_fits_twice_the_blocks(model: Any, smollm2_folder: Path) -> None:
    tokenizer = AutoTokenizer.from_pretrained(smollm2_folder)
    engines = {
        name: LLMEngine(
            model,
            tokenizer,
            EngineConfig(cache=CacheConfig(memory_bytes=8 << 20, dtype=name)),
            CPU,
            F32,
            frozenset({tokenizer.eos_token_id}),
        )
        for name in ("auto", "float32")
    }
    assert {c.dtype for c in engines["auto"].runner.kv_caches} == {BF16}
    assert {c.dtype for c in engines["float32"].runner.kv_caches} == {F32}
    assert engines["auto"].kv.num_blocks == 2 * engines["float32"].kv.num_blocks


def test_logits_over_a_bfloat16_cache_stay_close_to_float32(model: Any) -> None:
    """A prefill then decodes of two requests: over a bfloat16 cache the logits move by its rounding
    (so it is really read) but stay close, and the greedy tokens are the same."""
    prompts = [[1, 504, 3458, 282, 4649, 314], [2, 1068, 28, 7, 1]]

    def run(kv_dtype: torch.dtype) -> torch.Tensor:
        runner = ModelRunner(model, num_blocks=8, block_size=16, device=CPU, dtype=F32, kv_dtype=kv_dtype)
        blocks = [[0, 1], [2, 3]]
        steps = [runner.last_logits([Segment(b, 0, p) for b, p in zip(blocks, prompts, strict=True)])]
        lengths = [len(p) for p in prompts]
        for _ in range(4):
            tokens = steps[-1].argmax(-1).tolist()
            segments = [Segment(b, n, [t]) for b, n, t in zip(blocks, lengths, tokens, strict=True)]
            steps.append(runner.last_logits(segments))
            lengths = [n + 1 for n in lengths]
        return torch.stack(steps)

    full, rounded = run(F32), run(BF16)
    difference = (full - rounded).abs().max().item()
    assert 0 < difference < 0.5, difference
    assert torch.equal(full.argmax(-1), rounded.argmax(-1))
