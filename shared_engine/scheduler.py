"""Continuous batching: which requests run in the next step, and on how many tokens each.

The scheduler never touches tensors. Each step it first gives every running request the tokens it
needs (one for a decode, the rest of a chunked prefill), preempting the youngest running request
when the block pool is exhausted, then admits waiting requests in arrival order while the token
budget, the sequence limit and the block pool allow.
"""

from __future__ import annotations

import itertools
import time
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from shared_engine.config import SchedulerConfig, SpeculativeConfig
from shared_engine.errors import InvalidRequest
from shared_engine.kv_cache_manager import ComputedBlocks, KVCacheManager
from shared_engine.outputs import FinishReason
from shared_engine.request import Request, RequestStatus


@dataclass
class ScheduledRequest:
    """One request's share of a step: ``num_new_tokens`` input tokens, of which the last
    ``num_spec_tokens`` are guesses (speculative decoding) that follow the request's known tokens.

    The scheduler reserves room (budget and KV slots) for up to ``num_spec_tokens`` guesses; the
    proposer then fills ``spec_token_ids`` and shrinks the reservation to what it guessed. A draft
    model that sampled its guesses leaves the distributions it drew them from in ``draft_probs``
    (``[num_spec_tokens, vocab]``), which rejection sampling needs; None means deterministic guesses.
    """

    request: Request
    num_new_tokens: int
    num_spec_tokens: int = 0
    spec_token_ids: list[int] = field(default_factory=list)
    draft_probs: Any = None

    @property
    def completes_prompt(self) -> bool:
        """True when, after this step, every known token is computed, so the step samples a token."""
        known = self.num_new_tokens - self.num_spec_tokens
        return self.request.num_computed_tokens + known == self.request.num_tokens

    def set_guesses(self, token_ids: list[int], draft_probs: Any = None) -> None:
        """Fill the reserved guess slots with ``token_ids`` (at most ``num_spec_tokens`` of them)."""
        token_ids = token_ids[: self.num_spec_tokens]
        self.num_new_tokens -= self.num_spec_tokens - len(token_ids)
        self.num_spec_tokens = len(token_ids)
        self.spec_token_ids = token_ids
        self.draft_probs = draft_probs[: len(token_ids)] if draft_probs is not None and token_ids else None


@dataclass
class SchedulerOutput:
    scheduled: list[ScheduledRequest] = field(default_factory=list)
    preempted: list[Request] = field(default_factory=list)

    @property
    def num_tokens(self) -> int:
        return sum(s.num_new_tokens for s in self.scheduled)

    @property
    def is_empty(self) -> bool:
        return not self.scheduled


MAX_GROUP = 128


class Scheduler:
    def __init__(
        self, config: SchedulerConfig, kv: KVCacheManager, speculative: SpeculativeConfig | None = None
    ) -> None:
        self.config = config
        self.kv = kv
        self.speculative = speculative
        self.waiting: deque[Request] = deque()
        self.running: list[Request] = []
        self.num_preemptions = 0

    # -- request lifecycle -----------------------------------------------------------------------

    def add_request(self, request: Request) -> None:
        needed = self.kv.blocks_needed(request.num_prompt_tokens + request.params.max_tokens)
        if needed > self.kv.num_blocks:
            raise InvalidRequest(
                f"request needs {needed} KV blocks but the pool has {self.kv.num_blocks}; "
                "lower max_tokens or enlarge the KV cache",
                param="max_tokens",
            )
        self.waiting.append(request)

    def admission_refusal(self, num_tokens: int, num_requests: int = 1) -> str | None:
        """Why ``num_requests`` new requests of ``num_tokens`` prompt tokens in all must wait elsewhere, or
        None to queue them.

        Requests that arrived since the last step wait for it even where the running batch has room: those
        that the free slots will take are not counted as waiting. A group (a request's choices and prompts)
        is taken as a whole against the queue it finds, so its members never fill the queue against
        themselves; but one larger than the batch and the queue together, and than ``MAX_GROUP`` (the
        most choices OpenAI's API allows), or with more tokens than the queue takes at all, is refused as
        the caller's mistake: it alone would hold the queue past its limit for everyone else, or never be
        taken."""
        limit = self.config.max_waiting_requests
        most = max(MAX_GROUP, self.config.max_num_seqs + limit)
        if num_requests > most:
            raise InvalidRequest(
                f"this request asks for {num_requests} sequences (n choices of each prompt); this model "
                f"takes at most {most} from one request",
                param="n",
            )
        if num_tokens > self.config.max_waiting_tokens:  # not even an empty queue would take it
            raise InvalidRequest(
                f"this request's prompts hold {num_tokens} tokens (each counted once per choice); this "
                f"model queues at most {self.config.max_waiting_tokens} (max_waiting_tokens)"
            )
        free_slots = max(0, self.config.max_num_seqs - len(self.running))
        queued = list(itertools.islice(self.waiting, free_slots, None))
        if len(queued) >= limit:
            return f"{len(queued)} requests are waiting for this model (max_waiting_requests={limit})"
        waiting_tokens = sum(r.num_tokens for r in queued)
        if waiting_tokens + num_tokens > self.config.max_waiting_tokens:
            return (
                f"{waiting_tokens} tokens are waiting for this model and this request adds {num_tokens} "
                f"(max_waiting_tokens={self.config.max_waiting_tokens})"
            )
        return None

    def finish_request(self, request: Request, reason: FinishReason) -> None:
        if request.status is RequestStatus.RUNNING:
            self.running.remove(request)
            # The blocks that the last step's accepted guesses completed, now that their tokens are in.
            self.kv.cache_full_blocks(request)
        elif request.status is RequestStatus.WAITING:
            self.waiting.remove(request)
        else:
            return
        request.status = RequestStatus.FINISHED
        request.finish_reason = reason
        self.kv.free(request)

    @property
    def has_unfinished(self) -> bool:
        return bool(self.waiting or self.running)

    # -- the step ---------------------------------------------------------------------------------

    def schedule(self) -> SchedulerOutput:
        out = SchedulerOutput()
        budget = self.config.max_num_batched_tokens
        scheduled_ids: set[str] = set()

        max_guesses = self._max_guesses()
        i = 0
        while i < len(self.running) and budget > 0:
            request = self.running[i]
            num_new = min(request.num_tokens - request.num_computed_tokens, budget)
            num_spec = 0
            if max_guesses and num_new == 1 and request.num_computed_tokens > 0:
                # A decode: room for guesses, but never for more tokens than max_tokens still allows.
                remaining = request.params.max_tokens - request.num_output_tokens - 1
                num_spec = max(0, min(max_guesses, remaining, budget - 1))
                num_new += num_spec
            while self.kv.allocate_slots(request, num_new) is None:
                victim = self.running[-1]
                self._preempt(victim)
                out.preempted.append(victim)
                if victim is request:
                    break
            else:
                out.scheduled.append(ScheduledRequest(request, num_new, num_spec))
                scheduled_ids.add(request.request_id)
                budget -= num_new
                i += 1
                continue
            break  # the request itself was preempted: nothing younger is left to run

        # A preemption means the pool is under pressure: admitting new work now would thrash.
        if not out.preempted:
            self._admit_waiting(out, budget)
        return out

    def _max_guesses(self) -> int:
        spec = self.speculative
        if spec is None:
            return 0
        if spec.disable_by_batch_size is not None and len(self.running) > spec.disable_by_batch_size:
            return 0
        return spec.num_speculative_tokens

    def _admit_waiting(self, out: SchedulerOutput, budget: int) -> None:
        now = time.monotonic()
        while self.waiting and budget > 0 and len(self.running) < self.config.max_num_seqs:
            request = self.waiting[0]
            scores_prompt = request.scores_prompt  # then every prompt token is computed here
            computed = ComputedBlocks([], []) if scores_prompt else self.kv.get_computed_blocks(request)
            num_cached = len(computed.block_ids) * self.kv.block_size
            num_new = request.num_tokens - request.num_computed_tokens - num_cached
            if num_new > budget:
                if not self.config.enable_chunked_prefill and out.scheduled:
                    break
                num_new = budget
            if self.kv.allocate_slots(request, num_new, computed) is None:
                break
            self.waiting.popleft()
            request.num_computed_tokens += num_cached
            request.status = RequestStatus.RUNNING
            if request.first_scheduled_time is None:
                # What the prompt found cached. A preempted request that comes back finds its own
                # blocks, output included: that neither reports prompt tokens nor counts as a lookup.
                self.kv.record_prefix_lookup(request.num_tokens, num_cached)
                request.num_cached_tokens = num_cached
                request.first_scheduled_time = now
            self.running.append(request)
            out.scheduled.append(ScheduledRequest(request, num_new))
            budget -= num_new

    def _preempt(self, request: Request) -> None:
        """Free a running request's blocks; it is recomputed (prompt + output so far) later."""
        self.running.remove(request)
        self.kv.free(request)
        request.status = RequestStatus.WAITING
        request.num_computed_tokens = 0
        request.num_draft_computed = 0
        request.num_preemptions += 1
        self.num_preemptions += 1
        self.waiting.appendleft(request)

    def update_after_step(self, out: SchedulerOutput, num_accepted: Mapping[str, int] | None = None) -> None:
        """Advance computed-token counters and publish newly full blocks to the prefix cache.

        Of a request's guesses only the ``num_accepted`` ones count as computed: the keys and values
        written for rejected guesses sit past the computed length and are overwritten later."""
        for item in out.scheduled:
            r = item.request
            accepted = num_accepted.get(r.request_id, 0) if num_accepted else 0
            r.num_computed_tokens += item.num_new_tokens - item.num_spec_tokens + accepted
            r.num_draft_computed = min(r.num_draft_computed, r.num_computed_tokens)
            self.kv.cache_full_blocks(r)
