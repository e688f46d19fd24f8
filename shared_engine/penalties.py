"""Penalties on tokens a request has already seen: OpenAI's presence and frequency penalties over its
output, and the repetition penalty of CTRL (Keskar et al., 2019) over its prompt and output, as vLLM and
transformers apply it.

A request's counts are kept across steps and grow by the tokens each step commits, so a step costs the
tokens it adds, not the whole prompt and output again. Tokens not yet committed (the guesses before a
row of speculative decoding) are applied on top, one by one, without entering the counts.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from shared_engine.sampling_params import SamplingParams


class _Column:
    """Token ids, and a value per id, in tensors that grow by appending."""

    def __init__(self, ids: Sequence[int], device: torch.device) -> None:
        self.ids = torch.tensor(list(ids) or [0], dtype=torch.long, device=device)
        self.values = torch.ones(len(self.ids), device=device)
        self.size = len(ids)

    def append(self, token_id: int) -> None:
        if self.size == len(self.ids):
            self.ids = torch.cat([self.ids, torch.zeros_like(self.ids)])
            self.values = torch.cat([self.values, torch.ones_like(self.values)])
        self.ids[self.size] = token_id
        self.values[self.size] = 1.0
        self.size += 1


class Penalties:
    """One request's penalty state: its output tokens' counts and the tokens its repetition penalty covers."""

    def __init__(self, params: SamplingParams, prompt_token_ids: Sequence[int], device: torch.device) -> None:
        self.params = params
        self.num_counted = 0
        self.position: dict[int, int] = {}  # output token -> its place in ``counts``
        self.counts = _Column((), device)
        self.seen = set(prompt_token_ids) if params.repetition_penalty != 1.0 else set()
        self.covered = _Column(sorted(self.seen), device)  # what the repetition penalty divides

    def _count(self, output: Sequence[int], committed: int) -> None:
        for i in range(self.num_counted, committed):
            token = output[i]
            at = self.position.get(token)
            if at is None:
                self.position[token] = self.counts.size
                self.counts.append(token)
            else:
                self.counts.values[at] += 1.0
            if self.params.repetition_penalty != 1.0 and token not in self.seen:
                self.seen.add(token)
                self.covered.append(token)
        self.num_counted = committed

    def apply(self, row: torch.Tensor, output: Sequence[int], num_pending: int = 0) -> None:
        """Penalize one row of next-token logits (in place) given the request's ``output`` so far, whose
        last ``num_pending`` tokens are guesses not yet committed."""
        committed = len(output) - num_pending
        if committed < self.num_counted:
            raise ValueError(f"the output shrank from {self.num_counted} to {committed} tokens")
        self._count(output, committed)
        p = self.params
        if p.repetition_penalty != 1.0 and self.covered.size:
            ids = self.covered.ids[: self.covered.size]
            values = row[ids]
            row[ids] = torch.where(values > 0, values / p.repetition_penalty, values * p.repetition_penalty)
        if (p.frequency_penalty or p.presence_penalty) and self.counts.size:
            ids, counts = self.counts.ids[: self.counts.size], self.counts.values[: self.counts.size]
            row[ids] -= p.frequency_penalty * counts + p.presence_penalty
        fresh: set[int] = set()
        for token in output[committed:]:  # a guess: penalized as if counted
            if p.repetition_penalty != 1.0 and token not in self.seen and token not in fresh:
                value = float(row[token])
                row[token] = value / p.repetition_penalty if value > 0 else value * p.repetition_penalty
            row[token] -= p.frequency_penalty
            if token not in self.position and token not in fresh:
                row[token] -= p.presence_penalty
            fresh.add(token)
