"""Continuous batching: which requests run in the next step, and on how many tokens each.

The scheduler never touches tensors. Each step it first gives every running request the tokens it
needs (one for a decode, the rest of a chunked prefill), preempting the youngest running request
when the block pool is exhausted, then admits waiting requests in arrival order while the token
budget, the sequence limit and the block pool allow.
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass, field

from shared_engine.config import SchedulerConfig
from shared_engine.errors import InvalidRequest
from shared_engine.kv_cache_manager import KVCacheManager
from shared_engine.outputs import FinishReason
from shared_engine.request import Request, RequestStatus


@dataclass
class ScheduledRequest:
    request: Request
    num_new_tokens: int

    @property
    def completes_prompt(self) -> bool:
        """True when, after this step, every known token is computed, so the step samples a token."""
        return self.request.num_computed_tokens + self.num_new_tokens == self.request.num_tokens


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


class Scheduler:
    def __init__(self, config: SchedulerConfig, kv: KVCacheManager) -> None:
        self.config = config
        self.kv = kv
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

    def admission_refusal(self, num_tokens: int) -> str | None:
        """Why a new request of ``num_tokens`` prompt tokens must wait elsewhere, or None to queue it."""
        limit = self.config.max_waiting_requests
        if len(self.waiting) >= limit:
            return f"{len(self.waiting)} requests are waiting for this model (max_waiting_requests={limit})"
        waiting_tokens = sum(r.num_tokens for r in self.waiting)
        if waiting_tokens + num_tokens > self.config.max_waiting_tokens:
            return (
                f"{waiting_tokens} tokens are waiting for this model and this request adds {num_tokens} "
                f"(max_waiting_tokens={self.config.max_waiting_tokens})"
            )
        return None

    def finish_request(self, request: Request, reason: FinishReason) -> None:
        if request.status is RequestStatus.RUNNING:
            self.running.remove(request)
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

        i = 0
        while i < len(self.running) and budget > 0:
            request = self.running[i]
            num_new = min(request.num_tokens - request.num_computed_tokens, budget)
            while self.kv.allocate_slots(request, num_new) is None:
                victim = self.running[-1]
                self._preempt(victim)
                out.preempted.append(victim)
                if victim is request:
                    break
            else:
                out.scheduled.append(ScheduledRequest(request, num_new))
                scheduled_ids.add(request.request_id)
                budget -= num_new
                i += 1
                continue
            break  # the request itself was preempted: nothing younger is left to run

        # A preemption means the pool is under pressure: admitting new work now would thrash.
        if not out.preempted:
            self._admit_waiting(out, budget)
        return out

    def _admit_waiting(self, out: SchedulerOutput, budget: int) -> None:
        now = time.monotonic()
        while self.waiting and budget > 0 and len(self.running) < self.config.max_num_seqs:
            request = self.waiting[0]
            computed = self.kv.get_computed_blocks(request)
            num_cached = len(computed.block_ids) * self.kv.block_size
            num_new = request.num_tokens - request.num_computed_tokens - num_cached
            if num_new > budget:
                if not self.config.enable_chunked_prefill and out.scheduled:
                    break
                num_new = budget
            if self.kv.allocate_slots(request, num_new, computed) is None:
                break
            self.kv.record_prefix_lookup(request.num_tokens, num_cached)
            self.waiting.popleft()
            request.num_computed_tokens += num_cached
            request.num_cached_tokens = num_cached
            request.status = RequestStatus.RUNNING
            if request.first_scheduled_time is None:
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
        request.num_preemptions += 1
        self.num_preemptions += 1
        self.waiting.appendleft(request)

    def update_after_step(self, out: SchedulerOutput) -> None:
        """Advance computed-token counters and publish newly full blocks to the prefix cache."""
        for item in out.scheduled:
            item.request.num_computed_tokens += item.num_new_tokens
            self.kv.cache_full_blocks(item.request)
