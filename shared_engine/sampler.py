"""Token selection for a batch whose rows each carry their own sampling parameters."""

from __future__ import annotations

import math
from collections.abc import Collection, Sequence

import torch

from shared_engine import cpu_kernels
from shared_engine.outputs import TokenLogprob
from shared_engine.penalties import Penalties
from shared_engine.sampling_params import SamplingParams


class RequestSampler:
    """Per-request sampling state: a private RNG, so a seeded request draws the same tokens whatever
    else is in the batch or however often it is preempted; the prompt's tokens for a repetition penalty,
    the tokens that ``min_tokens`` bars, and the bad words."""

    def __init__(
        self,
        params: SamplingParams,
        device: torch.device,
        prompt_token_ids: Sequence[int] = (),
        eos_token_ids: Collection[int] = (),
    ) -> None:
        self.params = params
        self.penalties = Penalties(params, prompt_token_ids, device) if params.penalized else None
        # What min_tokens bars: the tokens that would end the request.
        stops = set(params.stop_token_ids) | (set() if params.ignore_eos else set(eos_token_ids))
        self.stop_tokens = sorted(stops) if params.min_tokens else []
        words = params.bad_words_token_ids
        self.banned = sorted({word[0] for word in words if len(word) == 1})
        self.banned_after = [(word[:-1], word[-1]) for word in words if len(word) > 1]
        self.bars = bool(self.stop_tokens or words)
        self.allowed: torch.Tensor | None = None
        if params.allowed_token_ids is not None:
            self.allowed = torch.tensor(
                sorted(set(params.allowed_token_ids)), dtype=torch.long, device=device
            )
        self.generator: torch.Generator | None = None
        if not params.greedy:
            self.generator = torch.Generator(device=device)
            if params.seed is None:
                self.generator.seed()
            else:
                self.generator.manual_seed(generator_seed(params.seed, device))

    def barred(self, output: Sequence[int]) -> list[int]:
        """The tokens this request may not take after ``output``: the stop tokens while it is short of
        ``min_tokens``, and each bad word's last token where the output ends with the rest of the word."""
        barred = list(self.stop_tokens) if len(output) < self.params.min_tokens else []
        barred += self.banned
        for head, last in self.banned_after:
            if len(output) >= len(head) and tuple(output[len(output) - len(head) :]) == head:
                barred.append(last)
        return barred


def generator_seed(seed: int, device: torch.device) -> int:
    """What ``manual_seed`` gets for a request's ``seed``. A CPU generator (Mersenne Twister) keeps only a
    seed's low 32 bits, so seeds apart by a multiple of 2**32 would draw the same tokens: there, a seed
    outside [0, 2**32) (a negative one too, read as torch reads it, modulo 2**64) is hashed down to 32
    bits (splitmix64); one inside is kept."""
    bits = seed % (1 << 64)
    if device.type != "cpu" or bits < 1 << 32:
        return seed
    bits = (bits ^ (bits >> 30)) * 0xBF58476D1CE4E5B9 % (1 << 64)
    bits = (bits ^ (bits >> 27)) * 0x94D049BB133111EB % (1 << 64)
    return (bits ^ (bits >> 31)) & 0xFFFFFFFF


def _truncate(logits: torch.Tensor, params: SamplingParams) -> torch.Tensor:
    """Mask, in one row of tempered logits, the tokens below ``min_p`` times the most likely one's
    probability, then everything outside the top-k and the top-p nucleus."""
    top_k, top_p = params.top_k, params.top_p
    if params.min_p > 0:
        logits = logits.masked_fill(logits < logits.max() + math.log(params.min_p), float("-inf"))
    if top_k > 0 and top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k).values[-1]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1.0:
        sorted_logits, order = torch.sort(logits, descending=True)
        cumulative = sorted_logits.softmax(-1).cumsum(-1)
        # Keep a token while the mass before it is below top_p (so the first token always stays).
        drop = (cumulative - sorted_logits.softmax(-1)) >= top_p
        sorted_logits = sorted_logits.masked_fill(drop, float("-inf"))
        logits = torch.empty_like(logits).scatter_(0, order, sorted_logits)
    return logits


def _tempered(logits: torch.Tensor, params: Sequence[SamplingParams]) -> tuple[torch.Tensor, torch.Tensor]:
    """``logits`` and each row's inverse temperature, so that ``softmax(logits * inverse[:, None])`` is the
    row's sampling distribution. Rows with top-k or top-p come back already scaled and truncated (inverse
    1), in a copy; otherwise ``logits`` itself."""
    inverse = [1.0 / p.temperature for p in params]
    truncated = [row for row, p in enumerate(params) if p.top_k or p.top_p < 1.0 or p.min_p > 0]
    if truncated:
        logits = logits.clone()
        for row in truncated:
            logits[row] = _truncate(logits[row] * inverse[row], params[row])
            inverse[row] = 1.0
    return logits, torch.tensor(inverse, dtype=logits.dtype, device=logits.device)


def probabilities(logits: torch.Tensor, params: Sequence[SamplingParams]) -> torch.Tensor:
    """Rows of ``logits`` turned into each row's sampling distribution (temperature, min-p, top-k, top-p)."""
    scaled, inverse = _tempered(logits, params)
    return torch.softmax(scaled * inverse.unsqueeze(-1), dim=-1)


def select_rows(x: torch.Tensor, rows: Sequence[int]) -> torch.Tensor:
    """``x[rows]``, without the copy when ``rows`` are all of them in order."""
    if len(rows) == x.shape[0] and all(row == i for i, row in enumerate(rows)):
        return x
    return x[list(rows)]


def greedy_tokens(logits: torch.Tensor) -> list[int]:
    """Each row's most likely token (``[R, vocab]``; of equal logits the first)."""
    if logits.dtype == torch.float32 and cpu_kernels.usable(logits.device):
        return cpu_kernels.argmax_rows(logits).tolist()
    return logits.argmax(dim=-1).tolist()


HEAD_TOKENS = 1024


def _signed(c: int) -> int:
    return c - (1 << 64) if c >= 1 << 63 else c


_GOLDEN, _MIX1, _MIX2 = _signed(0x9E3779B97F4A7C15), _signed(0xBF58476D1CE4E5B9), _signed(0x94D049BB133111EB)


def _uniform_per_token(keys: torch.Tensor, token_ids: torch.Tensor) -> torch.Tensor:
    """splitmix64 of (key, token id) → uniforms in [0, 1); keys ``[R, 1]``, token ids ``[R, k]``.

    The noise a token gets depends on its id, not on its rank, so two tokens whose probabilities
    swap order under bf16 rounding do not swap their draws."""
    x = token_ids * _GOLDEN + keys  # int64 arithmetic wraps, as the mix function expects
    x = x ^ ((x >> 30) & ((1 << 34) - 1))
    x = x * _MIX1
    x = x ^ ((x >> 27) & ((1 << 37) - 1))
    x = x * _MIX2
    x = x ^ ((x >> 31) & ((1 << 33) - 1))
    return ((x >> 11) & ((1 << 53) - 1)).to(torch.float64) / float(1 << 53)


def _head_and_tail(
    logits: torch.Tensor, inverse: torch.Tensor, k: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per row of the distributions ``softmax(logits * inverse[:, None])``: the ``k`` most likely tokens'
    probabilities and ids (in any order), and the probability of all the others together."""
    if logits.dtype == torch.float32 and cpu_kernels.usable(logits.device):
        return cpu_kernels.softmax_head(logits, inverse, k)  # one pass per row, no [rows, vocab] tensors
    probs = torch.softmax(logits * inverse.unsqueeze(-1), dim=-1)
    head_p, head_ids = probs.topk(k, dim=-1)
    return head_p, head_ids, probs.scatter(1, head_ids, 0.0).sum(dim=-1)


def _draw(
    logits: torch.Tensor, params: Sequence[SamplingParams], generators: list[torch.Generator | None]
) -> list[int]:
    """One token per row of ``logits`` (``[R, vocab]``), exactly by the rows' distributions (``params``).

    An exponential race (the token with the smallest ``E_i / p_i``, ``E_i ~ Exp(1)``, wins with
    probability ``p_i``) as ``torch.multinomial`` runs it, but without drawing a number for every
    vocabulary entry (~1 ms a row for a 49k vocabulary on a CPU: a quarter of a batch-32 decode
    step). The most likely tokens race one by one, with noise keyed by token id; the rest of the
    vocabulary races as one competitor whose first arrival is exponential with rate equal to its total
    mass, and only when it wins is a token drawn inside it (by inverse CDF). Per-token noise matters: an
    inverse CDF adds up the small bf16 differences that batch composition makes in every probability,
    and a seeded request's tokens would then change with whatever else shares its batch. The head is
    wide (1024) so that the tail, where that sensitivity remains, rarely wins.
    """
    k = min(HEAD_TOKENS, logits.shape[-1])
    scaled, inverse = _tempered(logits, params)
    head_p, head_ids, tail_p = _head_and_tail(scaled, inverse, k)
    # Each request's generator lives on the logits' device (RequestSampler): draw there.
    device = logits.device
    keys = torch.cat(
        [torch.randint(-(1 << 62), 1 << 62, (1,), generator=g, device=device) for g in generators]
    )
    keys = keys.unsqueeze(-1)
    tail_arrival = torch.cat([torch.empty(1, device=device).exponential_(generator=g) for g in generators])
    head_arrival = -torch.log1p(-_uniform_per_token(keys, head_ids))
    times = torch.cat([head_arrival / head_p, (tail_arrival / tail_p).unsqueeze(-1)], dim=-1)
    winners = times.argmin(dim=-1).tolist()  # a rate of 0 gives +inf: such a token never wins
    out: list[int] = []
    for r, (w, g) in enumerate(zip(winners, generators, strict=True)):
        if w < k:
            out.append(int(head_ids[r, w]))
        else:
            # Inside the tail an inverse CDF is exact and ~20x cheaper than a per-token race; its
            # sensitivity to batch-level rounding matters little among tokens this unlikely.
            tail = torch.softmax(scaled[r] * inverse[r], dim=-1).index_fill_(0, head_ids[r], 0.0)
            cdf = tail.cumsum(dim=0)
            u = torch.rand(1, generator=g, device=logits.device) * cdf[-1]
            out.append(int(torch.searchsorted(cdf, u, right=True).clamp_(max=len(cdf) - 1)))
    return out


def apply_logits_processors(
    logits: torch.Tensor,
    samplers: Sequence[RequestSampler],
    outputs: Sequence[Sequence[int]],
    pending: Sequence[int] | None = None,
) -> None:
    """On each row of ``logits`` (in place), given the tokens its request has output before it (the last
    ``pending[row]`` of them speculative guesses, not yet committed): keep only the allowed tokens, add
    the logit bias, apply the penalties, then run the processors in order."""
    for row, (sampler, out) in enumerate(zip(samplers, outputs, strict=True)):
        p = sampler.params
        if sampler.allowed is not None:
            kept = logits[row, sampler.allowed]
            logits[row] = float("-inf")
            logits[row, sampler.allowed] = kept
        if p.logit_bias:
            ids, biases = zip(*p.logit_bias, strict=True)
            logits[row, list(ids)] += torch.tensor(biases, dtype=logits.dtype, device=logits.device)
        if sampler.penalties is not None:
            sampler.penalties.apply(logits[row], out, pending[row] if pending else 0)
        for processor in p.logits_processors:
            processor(out, logits[row])


def barred_rows(
    samplers: Sequence[RequestSampler], outputs: Sequence[Sequence[int]]
) -> list[tuple[int, list[int]]]:
    """Each row with tokens its request may not take next (``RequestSampler.barred``), and those tokens."""
    rows = []
    for row, (sampler, out) in enumerate(zip(samplers, outputs, strict=True)):
        barred = sampler.barred(out) if sampler.bars else []
        if barred:
            rows.append((row, barred))
    return rows


def bar_tokens(logits: torch.Tensor, rows: Sequence[tuple[int, list[int]]]) -> None:
    """Set each row's barred tokens to -inf, unless nothing else is left there: when a grammar or
    ``allowed_token_ids`` permit only those, they win (a complete JSON document still ends)."""
    for row, tokens in rows:
        kept = logits[row, tokens].clone()
        logits[row, tokens] = float("-inf")
        if bool(logits[row].isneginf().all()):
            logits[row, tokens] = kept


def sample(
    logits: torch.Tensor, samplers: Sequence[RequestSampler], with_logprobs: bool = True
) -> tuple[list[int], list[TokenLogprob | None]]:
    """Pick one token per row of ``logits`` (``[B, vocab]``, float32, processors already applied)."""
    chosen = [0] * len(samplers)
    greedy = [i for i, s in enumerate(samplers) if s.params.greedy]
    if greedy:
        for i, token in zip(greedy, greedy_tokens(select_rows(logits, greedy)), strict=True):
            chosen[i] = token
    rows = [i for i, s in enumerate(samplers) if not s.params.greedy]
    if rows:
        drawn = _draw(
            select_rows(logits, rows),
            [samplers[i].params for i in rows],
            [samplers[i].generator for i in rows],
        )
        for i, token in zip(rows, drawn, strict=True):
            chosen[i] = token

    nums = [s.params.logprobs if with_logprobs else None for s in samplers]
    return chosen, token_logprobs(logits, list(range(len(samplers))), chosen, nums)


def token_logprobs(
    logits: torch.Tensor, rows: Sequence[int], tokens: Sequence[int], nums: Sequence[int | None]
) -> list[TokenLogprob | None]:
    """The log-probability of ``tokens[i]`` under row ``rows[i]`` of ``logits``, with the ``nums[i]``
    most likely alternatives (None where ``nums[i]`` is None: nothing was asked)."""
    out: list[TokenLogprob | None] = [None] * len(tokens)
    wanted = [i for i, n in enumerate(nums) if n is not None]
    if not wanted:
        return out
    all_lp = torch.log_softmax(logits[[rows[i] for i in wanted]], dim=-1)
    for j, i in enumerate(wanted):
        n = nums[i] or 0
        top: tuple[tuple[int, float], ...] = ()
        if n:
            values, ids = torch.topk(all_lp[j], n)
            top = tuple(zip(ids.tolist(), values.tolist(), strict=True))
        out[i] = TokenLogprob(tokens[i], float(all_lp[j, tokens[i]]), top)
    return out
