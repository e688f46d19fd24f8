"""Where speculative decoding's guesses come from.

After the scheduler has reserved room for up to ``k`` guesses of each decoding request, a proposer
fills them in (``ScheduledRequest.set_guesses``); the target model then checks every guess in the
same forward pass (``shared_engine.rejection_sampler``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import numpy as np
import torch
from numpy.lib.stride_tricks import sliding_window_view

from shared_engine.config import SpeculativeConfig
from shared_engine.model_runner import ModelRunner, Segment
from shared_engine.models.base import DecoderModel
from shared_engine.sampler import (
    RequestSampler,
    apply_logits_processors,
    bar_tokens,
    barred_rows,
    greedy_tokens,
    probabilities,
)
from shared_engine.scheduler import ScheduledRequest


class Proposer(Protocol):
    def propose(self, items: Sequence[ScheduledRequest], samplers: dict[str, RequestSampler]) -> None: ...


def prompt_lookup(token_ids: Sequence[int], num_tokens: int, min_n: int, max_n: int) -> list[int]:
    """Up to ``num_tokens`` tokens that followed the latest earlier occurrence of the sequence's last
    ``n`` tokens, for the longest ``n`` from ``max_n`` down to ``min_n`` that occurs; [] if none does."""
    seq = np.asarray(token_ids, dtype=np.int64)
    for n in range(min(max_n, len(seq) - 1), min_n - 1, -1):
        # Windows that start before the suffix itself and leave at least one token after them.
        windows = sliding_window_view(seq[:-1], n)
        hits = np.flatnonzero((windows == seq[-n:]).all(axis=1))
        if hits.size:
            start = int(hits[-1]) + n
            return seq[start : start + num_tokens].tolist()
    return []


class NgramProposer:
    """Prompt lookup: no second model, guesses copied from the request's own tokens."""

    def __init__(self, config: SpeculativeConfig) -> None:
        self.config = config

    def propose(self, items: Sequence[ScheduledRequest], samplers: dict[str, RequestSampler]) -> None:
        c = self.config
        for s in items:
            if s.num_spec_tokens:
                tokens = s.request.all_token_ids
                s.set_guesses(
                    prompt_lookup(tokens, s.num_spec_tokens, c.prompt_lookup_min, c.prompt_lookup_max)
                )


class DraftModelProposer:
    """A smaller model with the target's tokenizer guesses autoregressively, all requests batched.

    The draft keeps its own KV cache in the same block layout as the target's (same block ids and
    slots), so it needs no allocator of its own. ``Request.num_draft_computed`` counts the tokens the
    draft has cached; the first pass of a step feeds whatever it lacks (the whole prompt the first
    time, afterwards one or two tokens), each further pass one guess. Guesses are greedy for greedy
    requests and sampled from the draft's distribution otherwise (kept for rejection sampling).
    """

    def __init__(self, runner: ModelRunner) -> None:
        self.runner = runner

    @torch.inference_mode()
    def propose(self, items: Sequence[ScheduledRequest], samplers: dict[str, RequestSampler]) -> None:
        active = [s for s in items if s.num_spec_tokens]
        guesses: dict[int, list[int]] = {id(s): [] for s in active}
        probs: dict[int, list[torch.Tensor]] = {id(s): [] for s in active}
        segments = []
        for s in active:
            r = s.request
            start = r.num_draft_computed
            segments.append(
                Segment(r.block_ids, start, r.token_ids_slice(start, r.num_tokens), r.encoder_state)
            )
        while active:
            logits = self.runner.last_logits(segments)
            params = [s.request.params for s in active]
            outputs = [s.request.output_token_ids + guesses[id(s)] for s in active]
            row_samplers = [samplers[s.request.request_id] for s in active]
            apply_logits_processors(logits, row_samplers, outputs, [len(guesses[id(s)]) for s in active])
            bar_tokens(logits, barred_rows(row_samplers, outputs))
            greedy_ids = greedy_tokens(logits)
            sampled_rows = [i for i, p in enumerate(params) if not p.greedy]
            row_probs = probabilities(logits[sampled_rows], [params[i] for i in sampled_rows])
            next_active, next_segments = [], []
            for i, (s, seg) in enumerate(zip(active, segments, strict=True)):
                r = s.request
                r.num_draft_computed = seg.start + len(seg.token_ids)
                if i in sampled_rows:
                    q = row_probs[sampled_rows.index(i)]
                    token = int(torch.multinomial(q, 1, generator=samplers[r.request_id].generator))
                    probs[id(s)].append(q)
                else:
                    token = greedy_ids[i]
                guesses[id(s)].append(token)
                if len(guesses[id(s)]) < s.num_spec_tokens:
                    next_active.append(s)
                    next_segments.append(Segment(r.block_ids, r.num_draft_computed, [token], r.encoder_state))
            active, segments = next_active, next_segments
        for s in items:
            if s.num_spec_tokens:
                drawn = probs[id(s)]
                s.set_guesses(guesses[id(s)], torch.stack(drawn) if drawn else None)


def make_proposer(
    config: SpeculativeConfig | None, target: ModelRunner, draft: DecoderModel | None
) -> Proposer | None:
    """The proposer ``config`` asks for (None: no speculative decoding), checked against the target's
    model; a draft model runs beside ``target`` in the same block layout."""
    model = target.model
    if config is None:
        if draft is not None:
            raise ValueError("a draft model needs a speculative config with method 'draft_model'")
        return None
    if config.method == "ngram":
        if draft is not None:
            raise ValueError("speculative method 'ngram' takes no draft model")
        return NgramProposer(config)
    if draft is None:
        raise ValueError("speculative method 'draft_model' needs a draft model")
    if draft.arch.vocab_size != model.arch.vocab_size:
        raise ValueError(
            f"the draft model's vocabulary ({draft.arch.vocab_size} tokens) differs from the target's "
            f"({model.arch.vocab_size}): a draft model must share the target's tokenizer"
        )
    if draft.arch.is_encoder_decoder or model.arch.is_encoder_decoder:
        raise ValueError("speculative decoding with a draft model takes decoder-only models")
    return DraftModelProposer(target.for_model(draft))
