"""Log-probabilities of prompt tokens (``SamplingParams.prompt_logprobs``), scored from the hidden
states of the prefill steps that compute those tokens: position ``p``'s logits score token ``p + 1``."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from shared_engine.dual_linear import float_weights_only
from shared_engine.models.base import DecoderModel
from shared_engine.outputs import TokenLogprob
from shared_engine.scheduler import ScheduledRequest

# Positions scored at once: a [rows, vocab] float32 block of logits each (25 MB for a 49k vocabulary).
ROWS_PER_BLOCK = 128


def positions_to_score(item: ScheduledRequest) -> range:
    """Positions of this step's tokens whose next token is a prompt token not scored yet (a request
    that was preempted computes its prompt again but scores it once)."""
    r = item.request
    if r.params.prompt_logprobs is None:
        return range(0)
    start = r.num_computed_tokens
    end = min(start + item.num_new_tokens - item.num_spec_tokens, r.num_prompt_tokens - 1)
    return range(max(start, len(r.prompt_logprobs)), end)


def score_prompts(
    model: DecoderModel, hidden: torch.Tensor, items: Sequence[ScheduledRequest], offsets: Sequence[int]
) -> dict[str, list[TokenLogprob]]:
    """The prompt tokens each request of the step scores, from ``hidden`` (the step's ``[tokens, hidden]``,
    request ``i``'s tokens from ``offsets[i]``)."""
    scored: dict[str, list[TokenLogprob]] = {}
    for item, offset in zip(items, offsets, strict=True):
        positions = positions_to_score(item)
        if not positions:
            continue
        r = item.request
        first = offset + positions.start - r.num_computed_tokens
        rows = hidden[first : first + len(positions)]
        targets = r.prompt_token_ids[positions.start + 1 : positions.stop + 1]
        scored[r.request_id] = score_block(model, rows, targets, r.params.prompt_logprobs or 0)
    return scored


def score_block(
    model: DecoderModel, hidden: torch.Tensor, targets: list[int], num_top: int
) -> list[TokenLogprob]:
    """``targets[i]``'s log-probability and rank under the logits of ``hidden[i]``, with the ``num_top``
    likeliest tokens."""
    out: list[TokenLogprob] = []
    for at in range(0, len(targets), ROWS_PER_BLOCK):
        block = targets[at : at + ROWS_PER_BLOCK]
        # The float weights, as prefill takes them: a quantized head serves few rows only.
        with float_weights_only():
            logits = model.compute_logits(hidden[at : at + len(block)])
        lp = torch.log_softmax(logits.float(), dim=-1)
        ids = torch.tensor(block, dtype=torch.long, device=lp.device)
        chosen_t = lp.gather(1, ids[:, None])
        chosen = chosen_t[:, 0].tolist()
        ranks = ((lp > chosen_t).sum(dim=-1) + 1).tolist()
        tops: list[tuple[tuple[int, float], ...]] = [()] * len(block)
        if num_top:
            values, top_ids = (t.tolist() for t in torch.topk(lp, num_top, dim=-1))
            tops = [tuple(zip(i, v, strict=True)) for i, v in zip(top_ids, values, strict=True)]
        out.extend(
            TokenLogprob(t, v, top, rank) for t, v, top, rank in zip(block, chosen, tops, ranks, strict=True)
        )
    return out
