"""State of one generation request as it moves through the scheduler."""

from __future__ import annotations

import time
from enum import Enum
from typing import Any

from shared_engine.outputs import FinishReason, RequestMetrics, TokenLogprob
from shared_engine.sampling_params import SamplingParams


class RequestStatus(Enum):
    WAITING = "waiting"
    RUNNING = "running"
    FINISHED = "finished"


class Request:
    """Token ids, progress and KV blocks of one sequence.

    ``num_computed_tokens`` counts the tokens whose keys and values are already in the KV cache. A
    sampled token is appended to ``output_token_ids`` at once but only becomes "computed" in the next
    step, when it is fed back as input: so a decoding request always has exactly one uncomputed token.
    """

    def __init__(
        self,
        request_id: str,
        prompt_token_ids: list[int],
        params: SamplingParams,
        eos_token_ids: frozenset[int] = frozenset(),
        arrival_time: float | None = None,
        encoder_state: Any = None,
    ) -> None:
        if not prompt_token_ids:
            raise ValueError("a request needs at least one prompt token")
        self.request_id = request_id
        self.prompt_token_ids = list(prompt_token_ids)
        self.output_token_ids: list[int] = []
        self.params = params
        self.eos_token_ids = eos_token_ids
        self.arrival_time = time.monotonic() if arrival_time is None else arrival_time
        # Monotonic timestamps: the scheduler sets the first, the engine the others.
        self.first_scheduled_time: float | None = None
        self.first_token_time: float | None = None
        self.last_token_time: float | None = None
        self.finished_time: float | None = None
        self.status = RequestStatus.WAITING
        self.num_computed_tokens = 0
        # Speculative decoding with a draft model: tokens whose keys and values the draft has cached.
        self.num_draft_computed = 0
        self.num_cached_tokens = 0
        self.block_ids: list[int] = []
        self.block_hashes: list[bytes] = []
        self.num_preemptions = 0
        self.finish_reason: FinishReason | None = None
        # What an encoder-decoder model computed once from the request's input (e.g. Whisper's
        # cross-attention keys and values); opaque to the scheduler, kept across preemptions.
        self.encoder_state = encoder_state
        # Of prompt tokens 1.. (SamplingParams.prompt_logprobs), in order, as the prefill scores them.
        self.prompt_logprobs: list[TokenLogprob] = []

    @property
    def scores_prompt(self) -> bool:
        """True while prompt tokens asked to be scored are not: the prompt must be computed, not cached."""
        wanted = self.params.prompt_logprobs is not None
        return wanted and len(self.prompt_logprobs) < self.num_prompt_tokens - 1

    @property
    def num_prompt_tokens(self) -> int:
        return len(self.prompt_token_ids)

    @property
    def num_tokens(self) -> int:
        return len(self.prompt_token_ids) + len(self.output_token_ids)

    @property
    def num_output_tokens(self) -> int:
        return len(self.output_token_ids)

    @property
    def all_token_ids(self) -> list[int]:
        return self.prompt_token_ids + self.output_token_ids

    def token_ids_slice(self, start: int, end: int) -> list[int]:
        n = len(self.prompt_token_ids)
        if end <= n:
            return self.prompt_token_ids[start:end]
        if start >= n:
            return self.output_token_ids[start - n : end - n]
        return self.prompt_token_ids[start:] + self.output_token_ids[: end - n]

    @property
    def is_finished(self) -> bool:
        return self.status is RequestStatus.FINISHED

    def append_output_token(self, token_id: int) -> None:
        self.output_token_ids.append(token_id)

    def check_stop_token(self) -> FinishReason | None:
        """Stop by token id or length; stop *strings* are the detokenizer's job."""
        last = self.output_token_ids[-1]
        if not self.params.ignore_eos and last in self.eos_token_ids:
            return FinishReason.STOP
        if last in self.params.stop_token_ids:
            return FinishReason.STOP
        if self.num_output_tokens >= self.params.max_tokens:
            return FinishReason.LENGTH
        return None

    def record_token_time(self, now: float) -> float | None:
        """Note an output at ``now``; the time since the previous one (None for the first)."""
        previous = self.last_token_time
        if self.first_token_time is None:
            self.first_token_time = now
        self.last_token_time = now
        return None if previous is None else now - previous

    def finish_metrics(self, now: float) -> RequestMetrics:
        self.finished_time = now
        scheduled = now if self.first_scheduled_time is None else self.first_scheduled_time
        first_token = self.first_token_time
        return RequestMetrics(
            queue_s=scheduled - self.arrival_time,
            ttft_s=None if first_token is None else first_token - self.arrival_time,
            e2e_s=now - self.arrival_time,
            inference_s=now - scheduled,
            num_prompt_tokens=self.num_prompt_tokens,
            num_output_tokens=self.num_output_tokens,
            num_cached_tokens=self.num_cached_tokens,
        )

    def __repr__(self) -> str:
        return (
            f"Request({self.request_id!r}, status={self.status.value}, tokens={self.num_tokens}, "
            f"computed={self.num_computed_tokens}, blocks={len(self.block_ids)})"
        )
