"""Penalties on tokens a request has already seen: OpenAI's presence and frequency penalties over its
output, and the repetition penalty of CTRL (Keskar et al., 2019) over its prompt and output, as vLLM and
transformers apply it."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from shared_engine.sampling_params import SamplingParams


def prompt_token_set(
    params: SamplingParams, prompt_token_ids: Sequence[int], device: torch.device
) -> torch.Tensor:
    """The distinct prompt tokens a repetition penalty covers (empty when the request has none), built once
    per request rather than once per step."""
    ids = sorted(set(prompt_token_ids)) if params.repetition_penalty != 1.0 else []
    return torch.tensor(ids, dtype=torch.long, device=device)


def penalize(
    row: torch.Tensor, params: SamplingParams, prompt_tokens: torch.Tensor, output_ids: Sequence[int]
) -> None:
    """Apply ``params``' penalties to one row of next-token logits, in place: first the repetition penalty
    over ``prompt_tokens`` (distinct ids) and ``output_ids``, then ``frequency_penalty`` times each output
    token's count and ``presence_penalty`` once per distinct output token, subtracted."""
    output = torch.tensor(list(output_ids), dtype=torch.long, device=row.device)
    if params.repetition_penalty != 1.0:
        seen = torch.cat([prompt_tokens, output]).unique()
        values = row[seen]
        penalty = params.repetition_penalty
        row[seen] = torch.where(values > 0, values / penalty, values * penalty)
    if output.numel() and (params.frequency_penalty or params.presence_penalty):
        ids, counts = output.unique(return_counts=True)
        row[ids] -= params.frequency_penalty * counts.to(row.dtype) + params.presence_penalty
