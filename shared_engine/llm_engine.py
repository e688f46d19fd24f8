"""The decoder engine: ``step()`` = schedule → run → update."""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, replace
from typing import Any

import torch

from shared_engine.attention import kv_cache_dtype
from shared_engine.config import EngineConfig
from shared_engine.decode_graphs import MAX_CAPTURED_TOKENS
from shared_engine.detokenizer import IncrementalDetokenizer, Tokenizer
from shared_engine.errors import ContextLengthExceeded, DuplicateRequest, InvalidRequest, Overloaded
from shared_engine.kv_cache_manager import KVCacheManager
from shared_engine.model_runner import ModelRunner, num_blocks_for_memory, usable_model_len
from shared_engine.models.base import DecoderModel
from shared_engine.outputs import EngineStats, FinishReason, RequestMetrics, RequestOutput, TokenLogprob
from shared_engine.request import Request
from shared_engine.sampler import RequestSampler
from shared_engine.sampling_params import SamplingParams
from shared_engine.scheduler import Scheduler, SchedulerOutput
from shared_engine.spec_decode import make_proposer
from shared_engine.structured_output import RequestGrammar, StructuredOutputs

logger = logging.getLogger(__name__)


@dataclass(slots=True)
class _Live:
    """Engine-side companions of a request: its RNG, its detokenizer and, if constrained, its grammar."""

    request: Request
    sampler: RequestSampler
    detokenizer: IncrementalDetokenizer
    grammar: RequestGrammar | None = None


class LLMEngine:
    def __init__(
        self,
        model: DecoderModel,
        tokenizer: Tokenizer,
        config: EngineConfig,
        device: torch.device,
        dtype: torch.dtype,
        eos_token_ids: frozenset[int],
        draft_model: DecoderModel | None = None,
        structured: StructuredOutputs | None = None,
    ) -> None:
        """``draft_model``: the smaller model that guesses for ``config.speculative`` method
        ``draft_model`` (it must share ``model``'s tokenizer). ``structured``: the grammar engine for
        requests with ``SamplingParams.guided`` (without it such requests are refused)."""
        arch = model.arch
        self.config = config
        self.tokenizer = tokenizer
        self.device = device
        self.eos_token_ids = eos_token_ids
        self.is_encoder_decoder = arch.is_encoder_decoder
        self.vocab_size = arch.vocab_size
        cache = config.cache
        if arch.is_encoder_decoder and cache.enable_prefix_caching:
            # Block hashes cover token ids only, but an encoder-decoder's keys depend on its encoder
            # input too: two requests with the same prompt tokens must not share blocks.
            logger.info("prefix caching is off for %s (an encoder-decoder model)", arch.architecture)
            cache = replace(cache, enable_prefix_caching=False)
        kv_dtype = kv_cache_dtype(cache.dtype, dtype)
        num_blocks = cache.num_blocks or num_blocks_for_memory(
            cache.memory_bytes, arch.kv_bytes_per_token, cache.block_size, kv_dtype
        )
        positions = arch.max_position_embeddings
        self.max_model_len = usable_model_len(config.max_model_len, positions, num_blocks, cache)
        self.kv = KVCacheManager(num_blocks, cache.block_size, cache.enable_prefix_caching)
        self.scheduler = Scheduler(config.scheduler, self.kv, config.speculative)
        self.runner = ModelRunner(model, num_blocks, cache.block_size, device, dtype, kv_dtype)
        # An encoder-decoder's steps read each request's encoder output: they stay eager.
        if config.cuda_graphs and device.type == "cuda" and not arch.is_encoder_decoder:
            captured = min(self.max_model_len, MAX_CAPTURED_TOKENS)
            max_blocks = -(-captured // cache.block_size)
            self.runner.enable_decode_graphs(config.scheduler.max_num_seqs, max_blocks, capture=True)
        self.proposer = make_proposer(config.speculative, self.runner, draft_model)
        self.structured = structured
        self._grammars: dict[str, RequestGrammar] = {}  # the constrained requests' matchers
        self._spec_counts = [0, 0, 0]  # drafts, draft tokens, accepted tokens
        self.live: dict[str, _Live] = {}
        self._mean_e2e_s: float | None = None  # recent finished requests', for Retry-After
        self._last_batch = (0, 0)
        kv_mib = num_blocks * cache.block_size * arch.kv_bytes_per_token * kv_dtype.itemsize / 2**20
        logger.info(
            "engine ready: %d KV blocks of %d tokens (%.1f MiB %s), max_model_len %d, dtype %s, device %s%s",
            num_blocks, cache.block_size, kv_mib, kv_dtype, self.max_model_len, dtype, device,
            ", decode steps as CUDA graphs" if self.runner.decode_graphs is not None else "",
        )  # fmt: skip

    # -- requests --------------------------------------------------------------------------------

    def add_request(
        self,
        request_id: str,
        prompt_token_ids: list[int],
        params: SamplingParams,
        arrival_time: float | None = None,
        encoder_state: Any = None,
        admitted: bool = False,
    ) -> None:
        if request_id in self.live:
            raise DuplicateRequest(f"request id {request_id!r} is already in flight")
        if self.is_encoder_decoder != (encoder_state is not None):
            needs = "needs" if self.is_encoder_decoder else "takes no"
            raise InvalidRequest(f"this model {needs} encoder output with each request")
        total = len(prompt_token_ids) + params.max_tokens
        if total > self.max_model_len:
            raise ContextLengthExceeded(len(prompt_token_ids), params.max_tokens, self.max_model_len)
        if (culprit := params.out_of_vocabulary(self.vocab_size)) is not None:
            raise InvalidRequest(f"{culprit}: token ids are below {self.vocab_size}", param=culprit)
        if not admitted:
            self.check_admission(len(prompt_token_ids))
        request = Request(
            request_id, prompt_token_ids, params, self.eos_token_ids, arrival_time, encoder_state
        )
        # Build everything that can fail before the scheduler sees the request.
        live = _Live(
            request,
            RequestSampler(params, self.device, prompt_token_ids, self.eos_token_ids),
            IncrementalDetokenizer.for_params(self.tokenizer, prompt_token_ids, params),
            self._grammar(params),
        )
        self.scheduler.add_request(request)
        self.live[request_id] = live
        if live.grammar is not None:
            self._grammars[request_id] = live.grammar

    def _grammar(self, params: SamplingParams) -> RequestGrammar | None:
        if params.guided is None:
            return None
        if self.structured is None:
            raise InvalidRequest("this model does not support structured outputs", param="response_format")
        return self.structured.grammar_for(params.guided)  # compiled already, if precompile() ran

    def precompile(self, params: SamplingParams) -> None:
        """Compile the request's grammar into the cache (any thread: it can take a while), so that adding
        the request does not stall the engine's steps. Raises InvalidRequest for a grammar the engine
        cannot enforce."""
        if params.guided is not None and self.structured is not None:
            self.structured.compile(params.guided)

    def abort_request(self, request_id: str) -> RequestOutput | None:
        live = self.live.pop(request_id, None)
        if live is None:
            return None
        self._grammars.pop(request_id, None)
        self.scheduler.finish_request(live.request, FinishReason.ABORT)
        metrics = live.request.finish_metrics(time.monotonic())
        return self._output(live, [], [], FinishReason.ABORT, metrics=metrics)

    def has_unfinished_requests(self) -> bool:
        return self.scheduler.has_unfinished

    # -- the step ----------------------------------------------------------------------------------

    def step(self) -> list[RequestOutput]:
        sched = self.scheduler.schedule()
        if sched.is_empty:
            return []
        samplers = {rid: lv.sampler for rid, lv in self.live.items()}
        if self.proposer is not None:
            self.proposer.propose(sched.scheduled, samplers)
        # Filled in a helper thread while the forward pass runs; applied by the sampler.
        mask = None
        if self.structured is not None and self._grammars:
            mask = self.structured.prepare(sched.scheduled, self._grammars)
        result = self.runner.execute(sched, samplers, mask)
        self.scheduler.update_after_step(sched, result.num_accepted)
        self._last_batch = (len(sched.scheduled), sched.num_tokens)
        self._count_guesses(sched, result.num_accepted)
        now = time.monotonic()

        for rid, scored in result.prompt_logprobs.items():
            self.live[rid].request.prompt_logprobs.extend(scored)
        outputs: list[RequestOutput] = []
        for item in sched.scheduled:
            rid = item.request.request_id
            if rid not in result.tokens:
                continue  # a prefill chunk that did not reach the end of the prompt
            live = self.live[rid]
            tokens: list[int] = []
            reason = None
            for token in result.tokens[rid]:  # several with speculative decoding: stop at the first stop
                tokens.append(token)
                live.request.append_output_token(token)
                reason = live.request.check_stop_token()
                stop_token = reason is FinishReason.STOP  # whose text is not the answer's, unless asked for
                stop_by_text = live.detokenizer.add_tokens([token], ends=stop_token)
                reason = reason or self._grammar_stop(live, token)
                if stop_by_text is not None:
                    reason = stop_by_text
                if reason is not None:
                    break
            itl = live.request.record_token_time(now)
            metrics = None
            if reason is not None:
                self.scheduler.finish_request(live.request, reason)
                del self.live[rid]
                self._grammars.pop(rid, None)
                metrics = live.request.finish_metrics(now)
                mean = self._mean_e2e_s
                self._mean_e2e_s = metrics.e2e_s if mean is None else 0.9 * mean + 0.1 * metrics.e2e_s
            lps = result.logprobs.get(rid, [])[: len(tokens)]
            outputs.append(self._output(live, tokens, lps, reason, itl, metrics))
        return outputs

    def check_admission(self, num_tokens: int, num_requests: int = 1) -> None:
        """Refuse new work of ``num_requests`` requests of ``num_tokens`` prompt tokens while the queue is
        past its limits, with a retry after the recent mean request time for each round of
        ``max_num_seqs`` requests ahead (1 to 60 seconds)."""
        if (refusal := self.scheduler.admission_refusal(num_tokens, num_requests)) is None:
            return
        rounds = (len(self.scheduler.waiting) + 1) / self.scheduler.config.max_num_seqs
        mean = self._mean_e2e_s
        retry_s = 1 if mean is None else min(60, max(1, math.ceil(mean * rounds)))
        raise Overloaded(f"The server is busy: {refusal}. Retry later.", retry_s)

    @staticmethod
    def _grammar_stop(live: _Live, token: int) -> FinishReason | None:
        """Feed a sampled token to the request's grammar: STOP once the grammar has ended."""
        grammar = live.grammar
        if grammar is None:
            return None
        if not grammar.accept(token):
            # The mask allows only tokens the grammar accepts: this would be a bug, not the caller's,
            # and the answer must not claim to have ended well.
            logger.error("request %s: token %d is outside its grammar", live.request.request_id, token)
            return FinishReason.ABORT
        return FinishReason.STOP if grammar.terminated else None

    def _count_guesses(self, sched: SchedulerOutput, num_accepted: dict[str, int]) -> None:
        for item in sched.scheduled:
            if item.num_spec_tokens:
                self._spec_counts[0] += 1
                self._spec_counts[1] += item.num_spec_tokens
                self._spec_counts[2] += num_accepted.get(item.request.request_id, 0)

    def _output(
        self,
        live: _Live,
        tokens: list[int],
        logprobs: list[TokenLogprob | None],
        reason: FinishReason | None,
        itl: float | None = None,
        metrics: RequestMetrics | None = None,
    ) -> RequestOutput:
        r = live.request
        first = bool(tokens) and r.num_output_tokens == len(tokens)
        return RequestOutput(
            request_id=r.request_id,
            text=live.detokenizer.take_new_text(finished=reason is not None),
            token_ids=tokens,
            num_prompt_tokens=r.num_prompt_tokens,
            num_output_tokens=r.num_output_tokens,
            num_cached_tokens=r.num_cached_tokens,
            logprobs=[lp for lp in logprobs if lp is not None],
            finish_reason=reason,
            itl_s=itl,
            metrics=metrics,
            prompt_logprobs=r.prompt_logprobs if first and r.params.prompt_logprobs is not None else None,
        )

    def stats(self) -> EngineStats:
        return EngineStats(
            num_running=len(self.scheduler.running),
            num_waiting=len(self.scheduler.waiting),
            kv_cache_usage=self.kv.usage,
            prefix_cache_hit_rate=self.kv.prefix_hit_rate,
            num_preemptions=self.scheduler.num_preemptions,
            num_blocks=self.kv.num_blocks,
            last_batch_size=self._last_batch[0],
            last_batch_tokens=self._last_batch[1],
            prefix_cache_queries=self.kv.prefix_queries,
            prefix_cache_hits=self.kv.prefix_hits,
            spec_num_drafts=self._spec_counts[0],
            spec_num_draft_tokens=self._spec_counts[1],
            spec_num_accepted_tokens=self._spec_counts[2],
        )

    def generate(self, prompts: list[list[int]], params: SamplingParams) -> list[list[int]]:
        """Offline batch generation (tests, benchmarks): all prompts at once, token ids back in order."""
        ids = [f"offline-{time.monotonic_ns()}-{i}" for i in range(len(prompts))]
        for rid, prompt in zip(ids, prompts, strict=True):
            self.add_request(rid, prompt, params)
        tokens: dict[str, list[int]] = {rid: [] for rid in ids}
        while self.has_unfinished_requests():
            for out in self.step():
                if out.request_id in tokens:  # requests added by someone else run alongside
                    tokens[out.request_id].extend(out.token_ids)
        return [tokens[rid] for rid in ids]
