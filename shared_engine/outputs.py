"""What the engine hands back to callers, one object per request per step."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import StrEnum


class FinishReason(StrEnum):
    STOP = "stop"
    LENGTH = "length"
    ABORT = "abort"


@dataclass(frozen=True)
class TokenLogprob:
    """A token's log-probability, the likeliest tokens' (``top``, likeliest first) and, where computed
    (prompt scores), the token's ``rank`` in the distribution (1: the likeliest)."""

    token_id: int
    logprob: float
    top: tuple[tuple[int, float], ...] = ()
    rank: int | None = None


@dataclass(frozen=True)
class RequestMetrics:
    """How a finished request spent its time, in seconds: waiting to be scheduled (``queue_s``), to its
    first token (``ttft_s``, None when it produced none), in all (``e2e_s``), and from its first scheduled
    step to its end (``inference_s``), as vLLM's request metrics count them."""

    queue_s: float
    ttft_s: float | None
    e2e_s: float
    inference_s: float
    num_prompt_tokens: int
    num_output_tokens: int
    num_cached_tokens: int

    @property
    def tpot_s(self) -> float | None:
        """Time per output token after the first, or None with fewer than two tokens."""
        if self.ttft_s is None or self.num_output_tokens < 2:
            return None
        return (self.e2e_s - self.ttft_s) / (self.num_output_tokens - 1)


@dataclass
class RequestOutput:
    """The increment a request produced in one engine step.

    ``text`` is the newly detokenized text only (never a broken UTF-8 sequence, never any part of a
    stop string); ``token_ids`` and ``logprobs`` are the tokens generated in this step. ``itl_s`` is the
    time since the request's previous output (None on its first, and on merged outputs); ``metrics``
    comes with the last output. ``prompt_logprobs`` (asked for with ``SamplingParams.prompt_logprobs``)
    comes with the first output that carries tokens: one per prompt token after the first.
    """

    request_id: str
    text: str
    token_ids: list[int]
    num_prompt_tokens: int
    num_output_tokens: int
    num_cached_tokens: int = 0
    logprobs: list[TokenLogprob] = field(default_factory=list)
    finish_reason: FinishReason | None = None
    itl_s: float | None = None
    metrics: RequestMetrics | None = None
    prompt_logprobs: list[TokenLogprob] | None = None

    @property
    def finished(self) -> bool:
        return self.finish_reason is not None


def merge_outputs(outputs: Sequence[RequestOutput]) -> RequestOutput:
    """One output for several consecutive increments of the same request: the text, tokens and
    log-probabilities joined, the counts, finish reason and metrics of the latest."""
    if len(outputs) == 1:
        return outputs[0]
    last = outputs[-1]
    return RequestOutput(
        request_id=last.request_id,
        text="".join(o.text for o in outputs),
        token_ids=[t for o in outputs for t in o.token_ids],
        num_prompt_tokens=last.num_prompt_tokens,
        num_output_tokens=last.num_output_tokens,
        num_cached_tokens=last.num_cached_tokens,
        logprobs=[lp for o in outputs for lp in o.logprobs],
        finish_reason=last.finish_reason,
        metrics=last.metrics,
        prompt_logprobs=next((o.prompt_logprobs for o in outputs if o.prompt_logprobs is not None), None),
    )


@dataclass
class StepResult:
    """What one engine step produced, keyed by request id (only requests that produced tokens): the
    new tokens (one, or with speculative decoding the accepted guesses plus one), their
    log-probabilities (empty lists unless asked for), how many guesses were accepted, and the
    log-probabilities of the prompt tokens this step scored (requests that asked for them only)."""

    tokens: dict[str, list[int]]
    logprobs: dict[str, list[TokenLogprob | None]]
    num_accepted: dict[str, int] = field(default_factory=dict)
    prompt_logprobs: dict[str, list[TokenLogprob]] = field(default_factory=dict)


@dataclass(frozen=True)
class EngineStats:
    """The engine now; counters (``num_preemptions``, ``prefix_cache_*``) count since it started, and
    ``last_batch_*`` are the sequences and tokens scheduled in the latest step."""

    num_running: int
    num_waiting: int
    kv_cache_usage: float
    prefix_cache_hit_rate: float
    num_preemptions: int
    num_blocks: int
    last_batch_size: int
    last_batch_tokens: int
    prefix_cache_queries: int  # prompt tokens looked up in the prefix cache
    prefix_cache_hits: int  # of those, tokens found there
    spec_num_drafts: int = 0  # speculative decoding: request-steps that carried guesses
    spec_num_draft_tokens: int = 0  # guesses checked
    spec_num_accepted_tokens: int = 0  # of those, guesses the target model agreed with

    @property
    def spec_acceptance_rate(self) -> float:
        return (
            self.spec_num_accepted_tokens / self.spec_num_draft_tokens if self.spec_num_draft_tokens else 0.0
        )
