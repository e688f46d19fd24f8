"""The engine's greedy output equals transformers' ``generate`` token for token (fp32), whatever the
batching, prefix caching, chunking or preemption in between."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from transformers import AutoModelForCausalLM

from shared_engine.sampling_params import SamplingParams
from tests.pipelines.llm.smollm2 import GREEDY, MAX_TOKENS, PROMPTS, make_engine


@pytest.fixture(scope="module")
def reference(smollm2_folder: Path, prompt_ids: list[list[int]]) -> list[list[int]]:
    """transformers' greedy continuation of each prompt, one at a time (no padding involved)."""
    hf = AutoModelForCausalLM.from_pretrained(smollm2_folder, dtype=torch.float32).eval()
    out = []
    with torch.inference_mode():
        for ids in prompt_ids:
            gen = hf.generate(
                torch.tensor([ids]), max_new_tokens=MAX_TOKENS, min_new_tokens=MAX_TOKENS, do_sample=False
            )
            out.append(gen[0, len(ids) :].tolist())
    return out


def test_single_request_matches_transformers(
    model: Any, tokenizer: Any, prompt_ids: Any, reference: Any
) -> None:
    engine = make_engine(model, tokenizer)
    assert engine.generate([prompt_ids[0]], GREEDY) == [reference[0]]


def test_concurrent_prompts_match_transformers(
    model: Any, tokenizer: Any, prompt_ids: Any, reference: Any
) -> None:
    engine = make_engine(model, tokenizer)
    assert engine.generate(prompt_ids, GREEDY) == reference
    assert engine.stats().last_batch_size == len(PROMPTS)  # they really ran as one batch


@pytest.mark.parametrize("prefix_caching", [False, True])
def test_prefix_caching_on_and_off(
    model: Any, tokenizer: Any, prompt_ids: Any, reference: Any, prefix_caching: bool
) -> None:
    engine = make_engine(model, tokenizer, prefix_caching=prefix_caching, block_size=4)
    assert engine.generate(prompt_ids, GREEDY) == reference
    # Second pass: every prompt's full blocks are now cached (when caching is on).
    assert engine.generate(prompt_ids, GREEDY) == reference
    if prefix_caching:
        assert engine.kv.prefix_hits > 0
    else:
        assert engine.kv.prefix_hits == 0


def test_prefix_hit_mid_flight(model: Any, tokenizer: Any, prompt_ids: Any, reference: Any) -> None:
    """A request that shares a prefix with a *running* request reuses its blocks."""
    engine = make_engine(model, tokenizer, block_size=4)
    engine.add_request("a", prompt_ids[7], GREEDY)
    tokens: dict[str, list[int]] = {"a": [], "b": []}
    for out in engine.step():  # prefill of "a" publishes its full blocks
        tokens[out.request_id].extend(out.token_ids)
    engine.add_request("b", prompt_ids[7], GREEDY)
    while engine.has_unfinished_requests():
        for out in engine.step():
            tokens[out.request_id].extend(out.token_ids)
    assert tokens["a"] == tokens["b"] == reference[7]
    assert engine.kv.prefix_hits >= (len(prompt_ids[7]) - 1) // 4 * 4


def test_preemption_under_small_kv_budget(
    model: Any, tokenizer: Any, prompt_ids: Any, reference: Any
) -> None:
    # 8 prompts of up to ~25 tokens + 20 new tokens need ~90 blocks of 4; 24 blocks force preemption.
    engine = make_engine(model, tokenizer, block_size=4, num_blocks=24)
    assert engine.generate(prompt_ids, GREEDY) == reference
    assert engine.stats().num_preemptions > 0
    assert engine.kv.num_free_blocks == engine.kv.num_blocks  # everything released at the end


@pytest.mark.parametrize("prefix_caching", [False, True])
def test_preemption_with_prefix_caching(
    model: Any, tokenizer: Any, prompt_ids: Any, reference: Any, prefix_caching: bool
) -> None:
    engine = make_engine(model, tokenizer, block_size=4, num_blocks=20, prefix_caching=prefix_caching)
    assert engine.generate(prompt_ids, GREEDY) == reference
    assert engine.stats().num_preemptions > 0


def test_chunked_prefill(model: Any, tokenizer: Any, prompt_ids: Any, reference: Any) -> None:
    # A budget of 7 tokens per step splits every prompt into several chunks, interleaved with decodes.
    engine = make_engine(model, tokenizer, max_num_batched_tokens=7, block_size=4)
    assert engine.generate(prompt_ids, GREEDY) == reference


def test_max_num_seqs_limits_the_batch(model: Any, tokenizer: Any, prompt_ids: Any, reference: Any) -> None:
    engine = make_engine(model, tokenizer, max_num_seqs=3)
    assert engine.generate(prompt_ids, GREEDY) == reference


def test_late_arrivals_join_the_running_batch(
    model: Any, tokenizer: Any, prompt_ids: Any, reference: Any
) -> None:
    """Continuous batching: a request added mid-generation runs in the very next step."""
    engine = make_engine(model, tokenizer)
    engine.add_request("first", prompt_ids[0], GREEDY)
    engine.step()
    engine.step()
    engine.add_request("late", prompt_ids[1], GREEDY)
    outputs = engine.step()
    assert {o.request_id for o in outputs} == {"first", "late"}
    assert engine.stats().last_batch_size == 2


def test_seeded_sampling_does_not_depend_on_the_batch(model: Any, tokenizer: Any, prompt_ids: Any) -> None:
    """In float32 a seeded request draws the same tokens alone and in a batch of strangers."""
    sampled = SamplingParams(max_tokens=MAX_TOKENS, temperature=1.0, seed=2024, ignore_eos=True)
    # float32 keys and values: a bfloat16 cache turns the last-bit differences that a prompt's matmul
    # rows have in a batch (the float32 GEMM blocks them by the batch's rows) into bfloat16 steps.
    engine = make_engine(model, tokenizer, kv_cache_dtype="float32")
    alone = engine.generate([prompt_ids[2]], sampled)[0]
    engine.add_request("stranger-a", prompt_ids[0], SamplingParams(max_tokens=5, temperature=0.7, seed=1))
    engine.add_request("stranger-b", prompt_ids[5], GREEDY)
    in_batch = engine.generate([prompt_ids[2]], sampled)[0]
    assert in_batch == alone
    other_seed = SamplingParams(max_tokens=MAX_TOKENS, temperature=1.0, seed=7, ignore_eos=True)
    assert engine.generate([prompt_ids[2]], other_seed)[0] != alone
