"""Decode steps from fixed buffers at padded sizes (shared_engine/decode_graphs.py): what CUDA graphs
replay. Here they run eagerly on the CPU, on the packaged model, through both attention paths (the CPU
kernel's and the gathered one a GPU takes); tests/pipelines/llm/test_devices.py captures them on CUDA."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from transformers import AutoConfig, AutoTokenizer

from shared_engine.config import CacheConfig, EngineConfig, SchedulerConfig
from shared_engine.decode_graphs import DecodeGraphs, batch_bucket, width_bucket
from shared_engine.llm_engine import LLMEngine
from shared_engine.model_runner import ModelRunner, Segment
from shared_engine.models.loader import build_decoder, iter_safetensors
from shared_engine.sampling_params import SamplingParams

CPU = torch.device("cpu")
F32 = torch.float32
BLOCK = 4
# Prompts of 5, 9 and 14 tokens: 2, 3 and 4 blocks of 4 once their first decode token is in.
PROMPTS = [[1, 504, 3458, 282, 4649], [2, 1068, 28, 7, 1, 9, 44, 120, 5000], [1, *range(300, 313)]]
BLOCKS = [[7, 2], [11, 0, 5], [3, 9, 1, 14]]  # out of order, as a pool hands them out after a while
ATTENTION = ["kernel", "gathered"]


@pytest.fixture(scope="module")
def model(smollm2_folder: Path) -> Any:
    config = AutoConfig.from_pretrained(smollm2_folder)
    return build_decoder(config, iter_safetensors(smollm2_folder), CPU, F32, None)


def test_buckets() -> None:
    assert [batch_bucket(n) for n in (1, 2, 3, 4, 5, 8, 9, 16, 17, 64)] == [1, 2, 4, 4, 8, 8, 16, 16, 24, 64]
    assert [width_bucket(n) for n in (1, 2, 3, 5, 16, 17)] == [1, 2, 4, 8, 16, 32]
    for bucket in (batch_bucket, width_bucket):
        with pytest.raises(ValueError, match="at least one"):
            bucket(0)


def test_capture_needs_cuda_and_a_scratch_block(model: Any) -> None:
    runner = ModelRunner(model, num_blocks=8, block_size=BLOCK, device=CPU, dtype=F32)
    assert runner.kv_caches[0].shape[2] == 9  # the scratch block past the allocator's eight
    with pytest.raises(ValueError, match="CUDA graphs need a CUDA device"):
        runner.enable_decode_graphs(4, 8, capture=True)
    with pytest.raises(ValueError, match="scratch block 9"):
        DecodeGraphs(model, runner.kv_caches, BLOCK, 9, 4, 8, gathered=False, capture=False)


def test_a_draft_runner_gets_the_same_limits_and_scratch_block(model: Any) -> None:
    runner = ModelRunner(model, num_blocks=8, block_size=BLOCK, device=CPU, dtype=F32)
    assert runner.for_model(model).decode_graphs is None
    runner.enable_decode_graphs(max_batch=12, max_blocks=5, capture=False)
    draft = runner.for_model(model).decode_graphs
    assert draft is not None and draft is not runner.decode_graphs
    assert (draft.max_batch, draft.max_width, draft.scratch_block, draft.capture) == (16, 8, 8, False)


def prefilled_runner(model: Any, attention: str) -> tuple[ModelRunner, list[int]]:
    """A runner holding the prompts' keys and values, and each prompt's greedy next token."""
    runner = ModelRunner(model, num_blocks=16, block_size=BLOCK, device=CPU, dtype=F32, kv_dtype=F32)
    runner.gathered_decode = attention == "gathered"
    with torch.inference_mode():
        logits = runner.last_logits([Segment(b, 0, p) for b, p in zip(BLOCKS, PROMPTS, strict=True)])
    return runner, logits.argmax(-1).tolist()


@pytest.mark.parametrize("attention", ATTENTION)
def test_a_padded_step_computes_what_the_eager_step_does(model: Any, attention: str) -> None:
    runner, tokens = prefilled_runner(model, attention)
    segments = [Segment(b, len(p), [t]) for b, p, t in zip(BLOCKS, PROMPTS, tokens, strict=True)]
    before = [kv.clone() for kv in runner.kv_caches]
    eager, offsets = runner.forward(segments)
    assert offsets == [0, 1, 2]
    eager_kv = [kv.clone() for kv in runner.kv_caches]
    for kv, saved in zip(runner.kv_caches, before, strict=True):
        kv.copy_(saved)

    runner.enable_decode_graphs(max_batch=8, max_blocks=8, capture=False)
    graphs = runner.decode_graphs
    assert graphs is not None
    padded, offsets = runner.forward(segments)
    assert offsets == [0, 1, 2] and padded.shape == eager.shape
    assert graphs.shapes == [(4, 4)]  # three requests padded to four, the widest table of four blocks
    torch.testing.assert_close(padded, eager, rtol=1e-5, atol=1e-5)
    scratch = graphs.scratch_block
    for kv, want, old in zip(runner.kv_caches, eager_kv, before, strict=True):
        # The requests' keys and values are the eager step's; the padding row wrote only the scratch block.
        torch.testing.assert_close(kv[:, :, :scratch], want[:, :, :scratch], rtol=1e-5, atol=1e-5)
        assert not torch.equal(kv[:, :, scratch], old[:, :, scratch])


@pytest.mark.parametrize("attention", ATTENTION)
def test_the_start_up_step_writes_only_the_scratch_block(model: Any, attention: str) -> None:
    runner, _ = prefilled_runner(model, attention)
    before = [kv.clone() for kv in runner.kv_caches]
    runner.enable_decode_graphs(max_batch=4, max_blocks=4, capture=False)
    graphs = runner.decode_graphs
    assert graphs is not None
    with torch.inference_mode():
        graphs.capture_smallest()
    assert graphs.shapes == [(1, 1)]
    scratch = graphs.scratch_block
    for kv, old in zip(runner.kv_caches, before, strict=True):
        assert torch.equal(kv[:, :, :scratch], old[:, :, :scratch])
        assert not torch.equal(kv[:, :, scratch, 0], old[:, :, scratch, 0])
        assert torch.equal(kv[:, :, scratch, 1:], old[:, :, scratch, 1:])  # the rest of it stays zero


@pytest.mark.parametrize("attention", ATTENTION)
def test_steps_the_buffers_cannot_hold_run_eagerly(model: Any, attention: str) -> None:
    runner, tokens = prefilled_runner(model, attention)
    runner.enable_decode_graphs(max_batch=2, max_blocks=3, capture=False)
    graphs = runner.decode_graphs
    assert graphs is not None and (graphs.max_batch, graphs.max_width) == (2, 4)
    segments = [Segment(b, len(p), [t]) for b, p, t in zip(BLOCKS, PROMPTS, tokens, strict=True)]
    runner.forward(segments)  # three requests: more than two
    runner.forward([Segment(BLOCKS[2] + [6], 15, [tokens[2]])])  # five blocks: wider than four
    runner.forward([Segment(BLOCKS[0], 5, [tokens[0], 17])])  # two tokens: not a decode
    assert graphs.shapes == []
    runner.forward(segments[:2])
    assert graphs.shapes == [(2, 4)]


def test_the_engine_generates_the_same_tokens_through_padded_steps(model: Any, smollm2_folder: Path) -> None:
    tokenizer = AutoTokenizer.from_pretrained(smollm2_folder)
    config = EngineConfig(
        cache=CacheConfig(block_size=BLOCK, num_blocks=128, dtype="float32"),
        scheduler=SchedulerConfig(max_num_seqs=16),
    )
    eos = frozenset({tokenizer.eos_token_id})
    texts = ("The capital of France is", "def fib(n):", "1, 2, 3,")
    prompts = [tokenizer(text)["input_ids"] for text in texts]
    # Requests finish at different steps, so the batch shrinks (3 → 2 → 1) and tables widen past buckets.
    params = [
        SamplingParams(max_tokens=n, temperature=t, seed=5, ignore_eos=True)
        for n, t in ((24, 0.0), (12, 0.8), (6, 0.0))
    ]

    def generate(padded: bool) -> tuple[list[list[int]], list[tuple[int, int]]]:
        engine = LLMEngine(model, tokenizer, config, CPU, F32, eos)
        if padded:
            engine.runner.enable_decode_graphs(16, 64, capture=False)
        tokens: dict[str, list[int]] = {}
        for i, (prompt, p) in enumerate(zip(prompts, params, strict=True)):
            engine.add_request(f"r{i}", prompt, p)
            tokens[f"r{i}"] = []
        while engine.has_unfinished_requests():
            for out in engine.step():
                tokens[out.request_id].extend(out.token_ids)
        graphs = engine.runner.decode_graphs
        return list(tokens.values()), [] if graphs is None else graphs.shapes

    eager, no_shapes = generate(padded=False)
    padded, shapes = generate(padded=True)
    assert no_shapes == [] and padded == eager
    assert [len(t) for t in padded] == [24, 12, 6]
    assert {b for b, _ in shapes} == {1, 2, 4} and len({w for _, w in shapes}) >= 2
