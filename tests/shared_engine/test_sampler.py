"""Sampling rules on hand-made logits: no model needed. Each test runs twice: with the engine's CPU kernel
for the softmax and the most likely tokens, and with the torch operators CUDA and kernel-less CPUs use."""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

import pytest
import torch

from shared_engine import cpu_kernels
from shared_engine.guided import GuidedDecoding, GuidedKind
from shared_engine.sampler import (
    HEAD_TOKENS,
    RequestSampler,
    apply_logits_processors,
    bar_tokens,
    barred_rows,
    generator_seed,
    sample,
)
from shared_engine.sampling_params import SamplingParams

CPU = torch.device("cpu")
LOGITS = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]]))


@pytest.fixture(autouse=True, params=["kernels", "torch"])
def softmax_path(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    cpu_kernels.load.cache_clear()
    monkeypatch.setenv(cpu_kernels.KERNELS_ENV, "1" if request.param == "kernels" else "0")
    assert cpu_kernels.load() == (request.param == "kernels")
    yield request.param
    cpu_kernels.load.cache_clear()


def draw(params: SamplingParams, n: int, logits: torch.Tensor = LOGITS) -> list[int]:
    sampler = RequestSampler(params, CPU)
    return [sample(logits, [sampler])[0][0] for _ in range(n)]


def test_greedy_takes_the_argmax_per_row() -> None:
    logits = torch.tensor([[0.0, 2.0, 1.0], [3.0, 0.0, 1.0]])
    greedy = RequestSampler(SamplingParams(temperature=0), CPU)
    tokens, _ = sample(logits, [greedy, greedy])
    assert tokens == [1, 0]


def test_top_k_one_and_tiny_top_p_are_greedy() -> None:
    assert set(draw(SamplingParams(temperature=1.0, top_k=1, seed=1), 50)) == {0}
    assert set(draw(SamplingParams(temperature=1.0, top_p=0.01, seed=1), 50)) == {0}


def test_top_k_keeps_only_the_k_most_likely() -> None:
    assert set(draw(SamplingParams(temperature=1.0, top_k=2, seed=3), 300)) == {0, 1}


def test_top_p_keeps_the_smallest_nucleus() -> None:
    # 0.5 + 0.3 = 0.8 covers top_p=0.75, so only tokens 0 and 1 may appear.
    assert set(draw(SamplingParams(temperature=1.0, top_p=0.75, seed=4), 300)) == {0, 1}


def test_temperature_one_follows_the_distribution() -> None:
    counts = torch.bincount(torch.tensor(draw(SamplingParams(temperature=1.0, seed=5), 4000)), minlength=4)
    freq = (counts / counts.sum()).tolist()
    for observed, expected in zip(freq, [0.5, 0.3, 0.15, 0.05], strict=True):
        assert observed == pytest.approx(expected, abs=0.03)


def test_low_temperature_sharpens() -> None:
    hot = draw(SamplingParams(temperature=1.0, seed=6), 1000).count(0)
    cold = draw(SamplingParams(temperature=0.3, seed=6), 1000).count(0)
    assert cold > hot + 200


def test_same_seed_same_tokens_whatever_the_batch() -> None:
    params = SamplingParams(temperature=1.0, seed=1234)
    alone = draw(params, 20)
    a, b = RequestSampler(params, CPU), RequestSampler(SamplingParams(temperature=1.0, seed=99), CPU)
    together = [sample(LOGITS.repeat(2, 1), [b, a])[0][1] for _ in range(20)]
    assert together == alone
    assert draw(SamplingParams(temperature=1.0, seed=4321), 20) != alone


def test_seeds_apart_by_multiples_of_two_to_the_32_draw_their_own_tokens() -> None:
    """A CPU generator keeps a seed's low 32 bits: 7, 2**32 + 7, 2**40 + 7 and -(2**32) + 7 would draw
    alike. Seeds within 32 bits keep drawing what they drew; the others are their own, and repeat."""
    logits = torch.zeros(1, 64)  # uniform over 64 tokens: 40 draws of two seeds alike by chance ~1e-72
    seeds = [7, 2**32 + 7, 2**40 + 7, -(2**32) + 7, 2**63 + 7]
    runs = [draw(SamplingParams(temperature=1.0, seed=seed), 40, logits) for seed in seeds]
    assert len({tuple(run) for run in runs}) == len(seeds)
    assert draw(SamplingParams(temperature=1.0, seed=2**40 + 7), 40, logits) == runs[2]
    plain = torch.Generator(device=CPU).manual_seed(7)
    assert generator_seed(7, CPU) == 7 and generator_seed(2**40 + 7, torch.device("cuda")) == 2**40 + 7
    mixed = torch.Generator(device=CPU).manual_seed(generator_seed(7, CPU))
    assert torch.equal(torch.rand(8, generator=plain), torch.rand(8, generator=mixed))


def test_logprobs_are_of_the_raw_distribution() -> None:
    sampler = RequestSampler(SamplingParams(temperature=0.5, seed=0, logprobs=2), CPU)
    (token,), (lp,) = sample(LOGITS, [sampler])
    assert lp is not None
    assert lp.token_id == token
    assert lp.logprob == pytest.approx(math.log([0.5, 0.3, 0.15, 0.05][token]), abs=1e-5)
    assert [t for t, _ in lp.top] == [0, 1]
    assert lp.top[0][1] == pytest.approx(math.log(0.5), abs=1e-5)


def test_no_logprobs_unless_asked() -> None:
    sampler = RequestSampler(SamplingParams(temperature=0), CPU)
    assert sample(LOGITS, [sampler])[1] == [None]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"temperature": -0.1}, "temperature"),
        ({"top_p": 0.0}, "top_p"),
        ({"top_p": 1.5}, "top_p"),
        ({"top_k": -1}, "top_k"),
        ({"max_tokens": 0}, "max_tokens"),
        ({"logprobs": 21}, "logprobs"),
        ({"stop": ("",)}, "stop"),
        ({"logit_bias": ((3, 100.5),)}, "logit_bias"),
        ({"logit_bias": ((-1, 1.0),)}, "logit_bias"),
        ({"presence_penalty": 2.5}, "presence_penalty"),
        ({"frequency_penalty": -2.01}, "frequency_penalty"),
        ({"frequency_penalty": float("nan")}, "frequency_penalty"),
        ({"repetition_penalty": 0.0}, "repetition_penalty"),
        ({"repetition_penalty": float("inf")}, "repetition_penalty"),
        ({"min_p": 1.5}, "min_p"),
        ({"min_p": -0.1}, "min_p"),
        ({"min_tokens": -1}, "min_tokens"),
        ({"stop_token_ids": (5, -1)}, "stop_token_ids"),
        ({"allowed_token_ids": ()}, "allowed_token_ids"),
        ({"allowed_token_ids": (3, -1)}, "allowed_token_ids"),
        ({"allowed_token_ids": (3,), "guided": GuidedDecoding(GuidedKind.JSON_OBJECT)}, "allowed_token_ids"),
        ({"min_tokens": 17, "max_tokens": 16}, "min_tokens"),
    ],
)
def test_invalid_params_are_rejected_by_name(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        SamplingParams(**kwargs)  # type: ignore[arg-type]


def test_logit_bias_is_added_before_the_processors() -> None:
    seen: list[torch.Tensor] = []
    biased = SamplingParams(
        temperature=0,
        logit_bias=((0, -100.0), (2, 1.5)),
        logits_processors=(lambda _, row: seen.append(row.clone()),),
    )
    logits = torch.cat([LOGITS, LOGITS])
    apply_logits_processors(
        logits, [RequestSampler(biased, CPU), RequestSampler(SamplingParams(), CPU)], [[], []]
    )
    assert torch.equal(seen[0], LOGITS[0] + torch.tensor([-100.0, 0.0, 1.5, 0.0]))
    assert torch.equal(logits[1], LOGITS[0])  # the other row keeps its logits
    greedy = RequestSampler(SamplingParams(temperature=0), CPU)
    assert sample(logits, [RequestSampler(biased, CPU), greedy])[0] == [2, 0]


def test_penalties_come_after_the_bias_and_before_the_processors() -> None:
    """Presence once per distinct output token, frequency per occurrence; the repetition penalty divides
    positive logits and multiplies negative ones of tokens in the prompt or the output."""
    seen: list[torch.Tensor] = []
    params = SamplingParams(
        logit_bias=((3, 2.0),),
        presence_penalty=0.5,
        frequency_penalty=0.25,
        repetition_penalty=2.0,
        logits_processors=(lambda _, row: seen.append(row.clone()),),
    )
    logits = torch.tensor([[4.0, -1.0, 3.0, -3.0, 1.0]])
    # Prompt: token 0; output: token 2 twice and token 3 (biased to -1) once; token 1 and 4 unseen.
    apply_logits_processors(logits, [RequestSampler(params, CPU, prompt_token_ids=[0, 0])], [[2, 3, 2]])
    expected = torch.tensor([[4.0 / 2, -1.0, 3.0 / 2 - 0.5 - 2 * 0.25, -1.0 * 2 - 0.5 - 0.25, 1.0]])
    assert torch.allclose(seen[0], expected[0]) and torch.allclose(logits, expected)


def test_unpenalized_rows_keep_their_logits() -> None:
    logits = torch.cat([LOGITS, LOGITS])
    penalized = RequestSampler(SamplingParams(frequency_penalty=1.0), CPU)
    apply_logits_processors(logits, [RequestSampler(SamplingParams(), CPU), penalized], [[0, 0], [0, 0]])
    assert torch.equal(logits[0], LOGITS[0])
    assert torch.equal(logits[1], LOGITS[0] - torch.tensor([2.0, 0.0, 0.0, 0.0]))


@pytest.mark.parametrize(
    ("extra", "barred"),
    [({}, [0, 3]), ({"ignore_eos": True}, [3]), ({"stop_token_ids": ()}, [0])],
    ids=["eos-and-stop-ids", "ignore_eos", "eos-only"],
)
def test_min_tokens_bars_the_stop_tokens_until_enough_are_out(
    extra: dict[str, Any], barred: list[int]
) -> None:
    params = SamplingParams(**{"min_tokens": 2, "stop_token_ids": (3,), **extra})
    sampler = RequestSampler(params, CPU, eos_token_ids={0})
    for out, bars in (([], True), ([1], True), ([1, 2], False)):
        rows = barred_rows([sampler], [out])
        assert [row for row, _ in rows] == ([0] if bars else [])
        logits = LOGITS.clone()
        bar_tokens(logits, rows)
        expected = LOGITS.clone()
        if bars:
            expected[0, barred] = float("-inf")
        assert torch.equal(logits, expected), (out, logits)


def test_when_only_a_stop_token_is_left_min_tokens_lets_it_through() -> None:
    """A grammar that is complete (or allowed_token_ids) may leave only the end: barring it too would leave
    nothing to draw, so the end wins."""
    sampler = RequestSampler(SamplingParams(temperature=0, min_tokens=5), CPU, eos_token_ids={0})
    only_the_end = torch.tensor([[1.0, float("-inf"), float("-inf"), float("-inf")]])
    bar_tokens(only_the_end, barred_rows([sampler], [[]]))
    assert torch.equal(only_the_end, torch.tensor([[1.0, float("-inf"), float("-inf"), float("-inf")]]))
    assert sample(only_the_end, [sampler])[0] == [0]


def test_bad_words_bar_a_one_token_word_everywhere_and_a_longer_ones_last_token_after_the_rest() -> None:
    sampler = RequestSampler(SamplingParams(bad_words_token_ids=((2,), (1, 3), (0, 1, 3))), CPU)
    for out, barred in (([], [2]), ([1], [2, 3]), ([0, 1], [2, 3, 3]), ([1, 0], [2]), ([3, 1], [2, 3])):
        rows = barred_rows([sampler], [out])
        assert rows == [(0, barred)], out
        logits = LOGITS.clone()
        bar_tokens(logits, rows)
        expected = LOGITS.clone()
        expected[0, barred] = float("-inf")
        assert torch.equal(logits, expected), (out, logits)
    assert barred_rows([RequestSampler(SamplingParams(), CPU)], [[1, 3]]) == []


def test_allowed_token_ids_are_all_that_can_be_drawn() -> None:
    allowed = SamplingParams(temperature=1.0, seed=2, allowed_token_ids=(3, 2))
    sampler = RequestSampler(allowed, CPU)
    drawn = set()
    for _ in range(300):
        logits = LOGITS.clone()
        apply_logits_processors(logits, [sampler], [[]])
        assert torch.equal(logits[0, 2:], LOGITS[0, 2:]) and logits[0, :2].isneginf().all()
        drawn.add(sample(logits, [sampler])[0][0])
    assert drawn == {2, 3}


def test_token_ids_past_the_vocabulary_are_named_by_field() -> None:
    assert SamplingParams(logit_bias=((3, 1.0),), allowed_token_ids=(1, 2)).out_of_vocabulary(4) is None
    assert SamplingParams(logit_bias=((4, 1.0),)).out_of_vocabulary(4) == "logit_bias"
    assert SamplingParams(allowed_token_ids=(0, 9)).out_of_vocabulary(4) == "allowed_token_ids"
    assert SamplingParams(stop_token_ids=(2, 4)).out_of_vocabulary(4) == "stop_token_ids"


@pytest.mark.parametrize(
    ("min_p", "kept"), [(0.5, {0, 1}), (0.25, {0, 1, 2}), (1.0, {0}), (0.05, {0, 1, 2, 3})]
)
def test_min_p_keeps_tokens_at_least_min_p_times_the_most_likely(min_p: float, kept: set[int]) -> None:
    # Probabilities 0.5, 0.3, 0.15, 0.05: min_p 0.25 keeps p >= 0.125.
    assert set(draw(SamplingParams(temperature=1.0, min_p=min_p, seed=6), 400)) == kept


def test_min_p_applies_to_the_tempered_distribution() -> None:
    # At temperature 0.5 the probabilities are 0.5², 0.3², ... renormalised: 0.15² / 0.5² = 0.09 < 0.1.
    assert set(draw(SamplingParams(temperature=0.5, min_p=0.1, seed=8), 400)) == {0, 1}


def test_tokens_outside_the_most_likely_still_get_their_share() -> None:
    """Past the HEAD_TOKENS most likely tokens the vocabulary races as one competitor; the split is exact."""
    tail_size = HEAD_TOKENS + 1000
    weights = torch.linspace(1.0, 0.5, tail_size)  # strictly decreasing: which tokens form the head is fixed
    probs = torch.cat([torch.full((16,), 0.04), 0.36 * weights / weights.sum()])
    logits = probs.log().unsqueeze(0)
    tokens = torch.tensor(draw(SamplingParams(temperature=1.0, seed=11), 6000, logits))
    counts = torch.bincount(tokens, minlength=len(probs)).float() / len(tokens)
    assert counts[:16].sum().item() == pytest.approx(0.64, abs=0.025)
    assert counts[16:].sum().item() == pytest.approx(0.36, abs=0.025)
    beyond = slice(HEAD_TOKENS, None)  # reachable only through the draw inside the tail
    assert counts[beyond].sum().item() == pytest.approx(probs[beyond].sum().item(), abs=0.015)
    assert (counts[beyond] > 0).sum().item() > 300  # many different tail tokens, not one
    assert counts[:16].max().item() == pytest.approx(0.04, abs=0.012)
