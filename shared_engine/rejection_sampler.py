"""Token selection for a step in which some requests carry guesses (speculative decoding).

A request with ``k`` guesses gets ``k + 1`` rows of logits: row ``j`` is the target model's next-token
distribution after the known tokens and the first ``j`` guesses. Greedy requests keep guesses while
each equals the row's argmax, then add the argmax of the first row that disagreed (or of the last row):
the same tokens as decoding one at a time. Sampled requests use rejection sampling (Leviathan et al.,
2023): guess ``d`` drawn from ``q`` is kept with probability ``min(1, p(d) / q(d))``; the first rejected
position draws from ``max(0, p - q)`` renormalised, and when every guess is kept one more token is drawn
from the last row. Each emitted token is then distributed exactly as ``p``. Guesses from prompt lookup
are deterministic (``q`` is one-hot), so a guess is kept with probability ``p(d)`` and a rejection
draws from ``p`` without ``d``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from shared_engine.outputs import StepResult, TokenLogprob
from shared_engine.sampler import (
    RequestSampler,
    apply_logits_processors,
    bar_tokens,
    barred_rows,
    greedy_tokens,
    probabilities,
    sample,
    select_rows,
    token_logprobs,
)
from shared_engine.scheduler import ScheduledRequest
from shared_engine.structured_output import StepMask


def accept_greedy(target_ids: Sequence[int], guesses: Sequence[int]) -> list[int]:
    """Guesses up to the first disagreement with ``target_ids`` (the rows' argmax), then the target's."""
    out: list[int] = []
    for guess, target in zip(guesses, target_ids, strict=False):
        if guess != target:
            break
        out.append(guess)
    out.append(target_ids[len(out)])
    return out


def accept_sampled(
    target_probs: torch.Tensor,
    guesses: Sequence[int],
    draft_probs: torch.Tensor | None,
    generator: torch.Generator | None,
) -> list[int]:
    """Rejection sampling of ``guesses`` against ``target_probs`` (``[k + 1, vocab]``); ``draft_probs``
    (``[k, vocab]``) are the distributions the guesses were drawn from, None for deterministic ones."""
    device = target_probs.device
    out: list[int] = []
    for j, guess in enumerate(guesses):
        p = target_probs[j]
        q_guess = 1.0 if draft_probs is None else float(draft_probs[j, guess])
        u = float(torch.rand(1, generator=generator, device=device))
        if u * q_guess < float(p[guess]):
            out.append(guess)
            continue
        if draft_probs is None:
            residual = p.clone()
            residual[guess] = 0.0
        else:
            residual = (p - draft_probs[j]).clamp_min_(0.0)
        if float(residual.sum()) <= 0.0:  # p == q up to rounding: p itself is the residual's limit
            residual = p
        out.append(int(torch.multinomial(residual, 1, generator=generator)))
        return out
    out.append(int(torch.multinomial(target_probs[len(guesses)], 1, generator=generator)))
    return out


def verify_and_sample(
    logits: torch.Tensor,
    items: Sequence[ScheduledRequest],
    samplers: dict[str, RequestSampler],
    mask: StepMask | None = None,
) -> StepResult:
    """Tokens for each of ``items`` from its rows of ``logits`` (one row per guess, plus one).

    ``mask`` (structured outputs) sets the tokens each constrained row's grammar forbids to -inf, after
    the logits processors, and then ``min_tokens`` and the bad words bar their tokens (unless that would
    leave nothing);
    log-probabilities are reported from the logits before both, as vLLM does, so they show the model's
    own confidence (and never -inf)."""
    row_samplers: list[RequestSampler] = []
    row_outputs: list[Sequence[int]] = []
    row_pending: list[int] = []
    first_row: list[int] = []
    for s in items:
        r = s.request
        first_row.append(len(row_samplers))
        # Row j comes after the first j guesses: rules that read the output so far see them too.
        p = r.params
        reads_output = bool(p.logits_processors or p.bad_words_token_ids) or p.penalized or p.min_tokens > 0
        for j in range(s.num_spec_tokens + 1):
            row_samplers.append(samplers[r.request_id])
            guessed = j if reads_output else 0
            row_outputs.append(r.output_token_ids + s.spec_token_ids[:j] if guessed else r.output_token_ids)
            row_pending.append(guessed)
    apply_logits_processors(logits, row_samplers, row_outputs, row_pending)
    barred = barred_rows(row_samplers, row_outputs)
    raw = logits
    if mask is not None or barred:
        if any(s.request.params.logprobs is not None for s in items):
            raw = logits.clone()
        if mask is not None:
            mask.apply(logits)
        bar_tokens(logits, barred)

    tokens: dict[str, list[int]] = {}
    num_accepted: dict[str, int] = {}
    plain = [i for i, s in enumerate(items) if not s.num_spec_tokens]
    if plain:  # one row each: the batch-invariant sampler
        chosen, _ = sample(
            select_rows(logits, [first_row[i] for i in plain]),
            [samplers[items[i].request.request_id] for i in plain],
            with_logprobs=False,
        )
        for i, token in zip(plain, chosen, strict=True):
            tokens[items[i].request.request_id] = [token]
    guessing = any(s.num_spec_tokens for s in items)
    argmax = greedy_tokens(logits) if guessing else []  # plain steps: the sampler's argmax only
    for i, s in enumerate(items):
        if not s.num_spec_tokens:
            continue
        rid = s.request.request_id
        rows = slice(first_row[i], first_row[i] + s.num_spec_tokens + 1)
        if s.request.params.greedy:
            out = accept_greedy(argmax[rows], s.spec_token_ids)
        else:
            probs = probabilities(logits[rows], [s.request.params] * (s.num_spec_tokens + 1))
            out = accept_sampled(probs, s.spec_token_ids, s.draft_probs, samplers[rid].generator)
        tokens[rid] = out
        num_accepted[rid] = len(out) - 1

    logprobs: dict[str, list[TokenLogprob | None]] = {}
    wanted = [(i, s) for i, s in enumerate(items) if s.request.params.logprobs is not None]
    if wanted:
        rows_, toks, nums = [], [], []
        for i, s in wanted:
            for j, token in enumerate(tokens[s.request.request_id]):
                rows_.append(first_row[i] + j)
                toks.append(token)
                nums.append(s.request.params.logprobs)
        flat = token_logprobs(raw, rows_, toks, nums)
        at = 0
        for _, s in wanted:
            n = len(tokens[s.request.request_id])
            logprobs[s.request.request_id] = flat[at : at + n]
            at += n
    return StepResult(tokens, logprobs, num_accepted)
