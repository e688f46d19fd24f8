"""A request's penalty state, kept across steps, gives each step what computing the penalties from its
whole prompt and output would give, with speculative guesses on top that never enter the counts."""

from __future__ import annotations

import random

import pytest
import torch

from shared_engine.penalties import Penalties
from shared_engine.sampling_params import SamplingParams

CPU = torch.device("cpu")
VOCAB = 64
RULES = [
    SamplingParams(repetition_penalty=1.7),
    SamplingParams(frequency_penalty=0.4, presence_penalty=-0.9),
    SamplingParams(repetition_penalty=0.6, frequency_penalty=-1.2, presence_penalty=1.5),
]


def by_definition(
    row: torch.Tensor, params: SamplingParams, prompt: list[int], output: list[int]
) -> torch.Tensor:
    """The penalties from scratch, token by token, as vLLM and transformers define them."""
    out = row.clone()
    for token in set(prompt) | set(output) if params.repetition_penalty != 1.0 else ():
        value = float(out[token])
        out[token] = value / params.repetition_penalty if value > 0 else value * params.repetition_penalty
    for token in set(output):
        out[token] -= params.frequency_penalty * output.count(token) + params.presence_penalty
    return out


@pytest.mark.parametrize("params", RULES, ids=["repetition", "frequency-presence", "all"])
def test_each_step_equals_the_definition(params: SamplingParams) -> None:
    rng = random.Random(0)
    prompt = [rng.randrange(VOCAB) for _ in range(40)]
    output: list[int] = []
    state = Penalties(params, prompt, CPU)
    for _ in range(60):
        row = torch.randn(VOCAB, generator=torch.Generator().manual_seed(len(output)))
        expected = by_definition(row, params, prompt, output)
        state.apply(row, output)
        torch.testing.assert_close(row, expected)
        output.extend(rng.randrange(VOCAB) for _ in range(rng.choice([1, 1, 1, 3])))  # accepted guesses too


@pytest.mark.parametrize("params", RULES, ids=["repetition", "frequency-presence", "all"])
def test_guesses_count_for_their_row_only(params: SamplingParams) -> None:
    """Rows after guesses see them; the guesses that are then rejected leave nothing behind."""
    prompt, committed = [1, 2, 3, 2], [4, 5, 4]
    state = Penalties(params, prompt, CPU)
    row = torch.linspace(-3.0, 3.0, VOCAB)
    for guesses in ([5, 6, 6], [7, 1], []):
        got = row.clone()
        state.apply(got, committed + guesses, num_pending=len(guesses))
        torch.testing.assert_close(got, by_definition(row, params, prompt, committed + guesses))
    committed += [9]  # the step committed a token none of the guesses had
    got = row.clone()
    state.apply(got, committed)
    torch.testing.assert_close(got, by_definition(row, params, prompt, committed))


def test_an_output_never_shrinks() -> None:
    state = Penalties(SamplingParams(frequency_penalty=1.0), [], CPU)
    state.apply(torch.zeros(VOCAB), [1, 2, 3])
    with pytest.raises(ValueError, match="shrank"):
        state.apply(torch.zeros(VOCAB), [1, 2])
