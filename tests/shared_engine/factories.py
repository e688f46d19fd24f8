"""Model-free helpers for the block manager and scheduler tests.

Nothing here replaces code under test: ``simulate_step`` drives the real ``Scheduler`` and
``KVCacheManager`` exactly the way ``LLMEngine.step`` does, only with a fake "model" that samples a
deterministic token per request and position. ``FakeKVStore`` plays the role of the KV tensors: it
records which token was written into which (block, slot) and checks, every step, that a request reads
back its own tokens (so a prefix hit, a shared block or an evicted block can never hand a request
somebody else's keys and values).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from shared_engine.config import SchedulerConfig
from shared_engine.kv_cache_manager import KVCacheManager
from shared_engine.request import Request, RequestStatus
from shared_engine.sampling_params import SamplingParams
from shared_engine.scheduler import Scheduler, SchedulerOutput

TokenFn = Callable[[Request], int]


def prompt(n: int, base: int = 0) -> list[int]:
    """``n`` distinct token ids starting at ``base`` (distinct bases give distinct prefixes)."""
    return list(range(base, base + n))


def make_request(
    request_id: str,
    prompt_token_ids: list[int],
    max_tokens: int = 16,
    *,
    params: SamplingParams | None = None,
    eos_token_ids: frozenset[int] = frozenset(),
    arrival_time: float = 0.0,
) -> Request:
    """A ``Request`` with the given prompt; ``params`` wins over ``max_tokens`` when given."""
    sampling = params if params is not None else SamplingParams(max_tokens=max_tokens, temperature=0.0)
    return Request(request_id, prompt_token_ids, sampling, eos_token_ids, arrival_time)


def make_kv(num_blocks: int = 64, block_size: int = 4, enable_prefix_caching: bool = True) -> KVCacheManager:
    return KVCacheManager(num_blocks, block_size, enable_prefix_caching)


def make_scheduler(
    num_blocks: int = 64,
    block_size: int = 4,
    *,
    max_num_seqs: int = 64,
    max_num_batched_tokens: int = 2048,
    enable_chunked_prefill: bool = True,
    enable_prefix_caching: bool = True,
    max_waiting_requests: int = 256,
    max_waiting_tokens: int = 262_144,
) -> tuple[KVCacheManager, Scheduler]:
    """A fresh KVCacheManager/Scheduler pair wired together like ``LLMEngine`` does."""
    kv = make_kv(num_blocks, block_size, enable_prefix_caching)
    config = SchedulerConfig(
        max_num_seqs=max_num_seqs,
        max_num_batched_tokens=max_num_batched_tokens,
        enable_chunked_prefill=enable_chunked_prefill,
        max_waiting_requests=max_waiting_requests,
        max_waiting_tokens=max_waiting_tokens,
    )
    return kv, Scheduler(config, kv)


def fake_token(request: Request) -> int:
    """Deterministic "sampled" token: depends only on the request id and output position."""
    return 10_000 + 100 * (sum(map(ord, request.request_id)) % 100) + request.num_output_tokens


def fill_blocks(kv: KVCacheManager, request: Request, num_tokens: int | None = None) -> list[int]:
    """Allocate and "compute" ``num_tokens`` (default: all) tokens of ``request`` and publish its full
    blocks, the way one prefill step of the scheduler would (no prefix lookup)."""
    n = request.num_tokens if num_tokens is None else num_tokens
    new = kv.allocate_slots(request, n)
    assert new is not None, "pool too small for this test setup"
    request.num_computed_tokens += n
    kv.cache_full_blocks(request)
    return new


# -- the fake KV tensors -------------------------------------------------------------------------------


@dataclass
class FakeKVStore:
    """Which token's keys/values live in which slot of which block."""

    block_size: int
    slots: dict[tuple[int, int], int] = field(default_factory=dict)

    def check_and_write(self, kv: KVCacheManager, request: Request, num_new: int) -> None:
        bs = self.block_size
        tokens = request.all_token_ids
        start = request.num_computed_tokens
        assert len(request.block_ids) * bs >= start + num_new, (
            f"{request.request_id}: {len(request.block_ids)} blocks cannot hold {start + num_new} tokens"
        )
        # Attention reads every computed position: it must hold this request's own token.
        for pos in range(start):
            block = request.block_ids[pos // bs]
            got = self.slots.get((block, pos % bs))
            assert got == tokens[pos], (
                f"{request.request_id}: position {pos} (block {block}) holds {got}, expected {tokens[pos]}"
            )
        # New positions are written; a block somebody else also references must never be written.
        for pos in range(start, start + num_new):
            block = request.block_ids[pos // bs]
            assert kv.ref_counts[block] == 1, (
                f"{request.request_id}: writing position {pos} into shared block {block} "
                f"(ref count {kv.ref_counts[block]})"
            )
            assert kv.block_hash[block] is None, (
                f"{request.request_id}: writing into block {block} that is published in the prefix cache"
            )
            self.slots[(block, pos % bs)] = tokens[pos]


# -- one engine step -------------------------------------------------------------------------------------


@dataclass
class StepResult:
    out: SchedulerOutput
    scheduled: list[tuple[str, int]]
    completed: list[str]
    sampled: dict[str, int]
    finished: list[Request]

    @property
    def preempted(self) -> list[str]:
        return [r.request_id for r in self.out.preempted]


def simulate_step(
    scheduler: Scheduler,
    token_fn: TokenFn = fake_token,
    store: FakeKVStore | None = None,
    finish: bool = True,
) -> StepResult:
    """One engine step without a model, in ``LLMEngine.step`` order.

    schedule → note which items complete their prompt (before the counters move) → [fake forward:
    check/write the KV store] → ``update_after_step`` → append a sampled token to every item that
    completed its prompt → finish requests that hit a stop token or ``max_tokens`` (when ``finish``).
    """
    out = scheduler.schedule()
    scheduled = [(s.request.request_id, s.num_new_tokens) for s in out.scheduled]
    completing = [s.request for s in out.scheduled if s.completes_prompt]
    if store is not None:
        for s in out.scheduled:
            store.check_and_write(scheduler.kv, s.request, s.num_new_tokens)
    scheduler.update_after_step(out)
    sampled: dict[str, int] = {}
    finished: list[Request] = []
    for request in completing:
        token = token_fn(request)
        request.append_output_token(token)
        sampled[request.request_id] = token
        if finish:
            reason = request.check_stop_token()
            if reason is not None:
                scheduler.finish_request(request, reason)
                finished.append(request)
    return StepResult(out, scheduled, [r.request_id for r in completing], sampled, finished)


def run_to_completion(
    scheduler: Scheduler,
    max_steps: int = 10_000,
    store: FakeKVStore | None = None,
    on_step: Callable[[StepResult], None] | None = None,
) -> list[StepResult]:
    """Step until nothing is left; fails (instead of hanging) if the scheduler stops making progress."""
    steps: list[StepResult] = []
    while scheduler.has_unfinished:
        assert len(steps) < max_steps, "scheduler made no progress"
        result = simulate_step(scheduler, store=store)
        assert not result.out.is_empty or result.out.preempted, "empty step with unfinished requests"
        steps.append(result)
        if on_step is not None:
            on_step(result)
    return steps


# -- invariants -------------------------------------------------------------------------------------------


def check_invariants(kv: KVCacheManager, live: Iterable[Request]) -> None:
    """Ref counts, free queue and prefix-cache maps agree with the requests holding blocks."""
    live = list(live)
    held = Counter(b for r in live for b in r.block_ids)
    for request in live:
        assert len(set(request.block_ids)) == len(request.block_ids), f"{request.request_id} repeats a block"
    for block in range(kv.num_blocks):
        assert kv.ref_counts[block] == held[block], (
            f"block {block}: ref count {kv.ref_counts[block]}, held by {held[block]} requests"
        )
        assert (block in kv.free_queue) == (held[block] == 0), f"block {block} free-queue membership"
    for digest, block in kv.cached.items():
        assert kv.block_hash[block] == digest
    for block, maybe in enumerate(kv.block_hash):
        if maybe is not None:
            assert kv.cached.get(maybe) == block


def check_scheduler_invariants(scheduler: Scheduler) -> None:
    """Block bookkeeping of the running requests, plus: waiting requests hold nothing, running ones
    hold enough blocks for what they computed, and the queues agree with the request statuses."""
    kv = scheduler.kv
    for request in scheduler.waiting:
        assert request.status is RequestStatus.WAITING
        assert request.block_ids == [], f"waiting {request.request_id} holds blocks"
        assert request.block_hashes == []
        assert request.num_computed_tokens == 0
    for request in scheduler.running:
        assert request.status is RequestStatus.RUNNING
        assert request.num_computed_tokens <= len(request.block_ids) * kv.block_size
        assert request.num_computed_tokens < request.num_tokens
        assert len(request.block_hashes) <= len(request.block_ids)
    assert len(scheduler.running) <= scheduler.config.max_num_seqs
    ids = [r.request_id for r in [*scheduler.running, *scheduler.waiting]]
    assert len(ids) == len(set(ids)), "a request is queued twice"
    check_invariants(kv, scheduler.running)


def free_queue_order(kv: KVCacheManager) -> list[int]:
    """Block ids in eviction order (first = handed out next)."""
    return list(kv.free_queue)
