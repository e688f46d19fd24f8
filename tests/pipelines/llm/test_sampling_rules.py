"""Penalties, min-p and min-tokens on the packaged SmolLM2 (float32): each greedy token under a penalty is
the best under transformers' logits with the same rule, for every prompt of a batch at once; scheduling
(prefix cache, preemption, mixed batches) changes nothing; min_tokens holds the end back."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import torch
from transformers import AutoModelForCausalLM, LogitsProcessor, RepetitionPenaltyLogitsProcessor

from shared_engine.sampling_params import SamplingParams
from tests.pipelines.llm.smollm2 import GREEDY, MAX_TOKENS, make_engine


class OutputPenalties(LogitsProcessor):
    """OpenAI's presence and frequency penalties over the tokens generated so far (not the prompt), as the
    API reference defines them: ``logit - count * frequency - (count > 0) * presence``."""

    def __init__(self, prompt_len: int, presence: float, frequency: float) -> None:
        self.prompt_len, self.presence, self.frequency = prompt_len, presence, frequency

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        counts = torch.bincount(input_ids[0, self.prompt_len :], minlength=scores.shape[-1]).to(scores.dtype)
        return scores - self.frequency * counts - self.presence * (counts > 0).to(scores.dtype)


@pytest.fixture(scope="module")
def hf(smollm2_folder: Path) -> Any:
    return AutoModelForCausalLM.from_pretrained(smollm2_folder, dtype=torch.float32).eval()


def worst_margin(hf: Any, prompts: list[list[int]], outputs: list[list[int]], rule: Any) -> float:
    """How far, at worst, a token of ``outputs`` falls below the best token under transformers' logits with
    ``rule(prompt_len)`` (a ``LogitsProcessor``) applied, each position given the tokens before it: 0 when
    every token is the rule's greedy choice. Teacher-forced, so a near tie that float32 rounding breaks
    the other way (our kernels and transformers' sum in different orders) costs hundredths, not a
    diverging continuation."""
    worst = 0.0
    with torch.inference_mode():
        for prompt, output in zip(prompts, outputs, strict=True):
            ids = torch.tensor([prompt + output])
            logits = hf(ids).logits[0, len(prompt) - 1 : -1]
            processor = rule(len(prompt))
            for j, token in enumerate(output):
                scores = processor(ids[:, : len(prompt) + j], logits[j : j + 1].clone())
                worst = max(worst, float(scores.max() - scores[0, token]))
    return worst


TOLERANCE = 0.05  # float32 logits of ~30 agree to ~0.02 between the two implementations


def changed(a: list[list[int]], b: list[list[int]]) -> int:
    return sum(x != y for x, y in zip(a, b, strict=True))


@pytest.mark.parametrize("penalty", [1.3, 0.8])
def test_repetition_penalty_matches_transformers(
    model: Any, tokenizer: Any, prompt_ids: list[list[int]], hf: Any, penalty: float
) -> None:
    """Over the prompt and the output, as transformers' ``repetition_penalty`` (and vLLM's)."""
    engine = make_engine(model, tokenizer)
    got = engine.generate(prompt_ids, replace(GREEDY, repetition_penalty=penalty))
    assert worst_margin(hf, prompt_ids, got, lambda _: RepetitionPenaltyLogitsProcessor(penalty)) < TOLERANCE
    assert changed(got, engine.generate(prompt_ids, GREEDY)) >= len(prompt_ids) // 2  # it did something


@pytest.mark.parametrize(("presence", "frequency"), [(0.0, 1.0), (1.5, 0.0), (0.5, 0.5), (-1.0, 0.0)])
def test_presence_and_frequency_penalties_match_their_definition(
    model: Any, tokenizer: Any, prompt_ids: list[list[int]], hf: Any, presence: float, frequency: float
) -> None:
    engine = make_engine(model, tokenizer)
    got = engine.generate(prompt_ids, replace(GREEDY, presence_penalty=presence, frequency_penalty=frequency))
    rule = lambda prompt_len: OutputPenalties(prompt_len, presence, frequency)  # noqa: E731
    assert worst_margin(hf, prompt_ids, got, rule) < TOLERANCE
    assert changed(got, engine.generate(prompt_ids, GREEDY)) >= 2


def test_a_negative_presence_penalty_makes_output_repeat_itself(
    model: Any, tokenizer: Any, prompt_ids: list[list[int]]
) -> None:
    engine = make_engine(model, tokenizer)
    plain = engine.generate(prompt_ids, GREEDY)
    pushed = engine.generate(prompt_ids, replace(GREEDY, presence_penalty=-2.0))
    discouraged = engine.generate(prompt_ids, replace(GREEDY, frequency_penalty=2.0))
    distinct = [sum(len(set(out)) for out in outputs) for outputs in (pushed, plain, discouraged)]
    assert distinct[0] < distinct[1] < distinct[2], distinct


def test_penalties_survive_prefix_caching_and_preemption(
    model: Any, tokenizer: Any, prompt_ids: list[list[int]]
) -> None:
    """The penalty reads the request's own tokens, however its steps were scheduled or recomputed."""
    params = replace(GREEDY, repetition_penalty=1.2, frequency_penalty=0.4)
    expected = make_engine(model, tokenizer, prefix_caching=False).generate(prompt_ids, params)
    cramped = make_engine(model, tokenizer, block_size=4, num_blocks=24)
    assert cramped.generate(prompt_ids, params) == expected
    assert cramped.scheduler.num_preemptions > 0
    cached = make_engine(model, tokenizer, block_size=4)
    assert cached.generate(prompt_ids, params) == expected
    assert cached.generate(prompt_ids, params) == expected  # the prompts now from the prefix cache
    assert cached.kv.prefix_hits > 0


def test_penalized_and_plain_requests_share_a_batch(
    model: Any, tokenizer: Any, prompt_ids: list[list[int]]
) -> None:
    engine = make_engine(model, tokenizer)
    plain = engine.generate(prompt_ids, GREEDY)
    penalized = engine.generate(prompt_ids, replace(GREEDY, frequency_penalty=1.0))
    rules = [GREEDY, replace(GREEDY, frequency_penalty=1.0)]
    for i, ids in enumerate(prompt_ids):
        engine.add_request(str(i), ids, rules[i % 2])
    got: dict[str, list[int]] = {str(i): [] for i in range(len(prompt_ids))}
    while engine.has_unfinished_requests():
        for out in engine.step():
            got[out.request_id].extend(out.token_ids)
    assert [got[str(i)] for i in range(len(prompt_ids))] == [
        (plain if i % 2 == 0 else penalized)[i] for i in range(len(prompt_ids))
    ]


def test_min_p_one_is_greedy_and_small_min_p_keeps_variety(
    model: Any, tokenizer: Any, prompt_ids: list[list[int]]
) -> None:
    """min_p = 1 keeps only the most likely token, so a hot sampler turns greedy; min_p = 0.05 keeps
    others, which a temperature of 1.5 then picks."""
    engine = make_engine(model, tokenizer)
    plain = engine.generate(prompt_ids, GREEDY)
    hot = SamplingParams(max_tokens=MAX_TOKENS, temperature=1.5, ignore_eos=True, seed=7)
    assert engine.generate(prompt_ids, replace(hot, min_p=1.0)) == plain
    assert changed(engine.generate(prompt_ids, replace(hot, min_p=0.05)), plain) >= len(prompt_ids) // 2


def test_min_tokens_holds_the_end_of_sequence_back(model: Any, tokenizer: Any) -> None:
    """An answer that ends early: with min_tokens the end-of-sequence token is barred until then, and
    nothing else changes before the step where it would have come."""
    prompt = tokenizer.apply_chat_template(
        [{"role": "user", "content": "What is the capital of France?"}],
        add_generation_prompt=True,
        return_dict=False,
    )
    engine = make_engine(model, tokenizer)
    short = SamplingParams(max_tokens=64, temperature=0.0)
    plain = engine.generate([prompt], short)[0]
    assert plain[-1] == tokenizer.eos_token_id and len(plain) < 20, tokenizer.decode(plain)
    held = engine.generate([prompt], replace(short, min_tokens=len(plain) + 8))[0]
    assert len(held) >= len(plain) + 8
    assert held[: len(plain) - 1] == plain[:-1]
    assert tokenizer.eos_token_id not in held[: len(plain) + 8]
