"""Structured outputs: a grammar matcher per constrained request, and per step one token bitmask for the
whole batch, applied to the logits in one operation before sampling.

The engine step is schedule → (propose) → run → update; the mask fits in as follows. After scheduling
(and after the proposer has guessed), ``prepare`` lays out one bitmask row per logits row the runner will
sample from — one per request, or ``k + 1`` for a request with ``k`` guesses — and fills the constrained
requests' rows in a helper thread while the forward pass runs. The sampler then waits for the mask and
applies it (``StepMask.apply``), and the engine feeds each accepted token to its request's matcher; a
matcher that has accepted its stop token ends the request with ``stop``.

Guesses (speculative decoding) are checked against the grammar as they would be against the model: row
``j`` of a guessing request is the mask after its first ``j`` guesses, so a guess the grammar forbids has
probability zero under the masked target and is always rejected, and every emitted token is allowed.
"""

from __future__ import annotations

import os
import threading
import time
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

import torch
import xgrammar as xgr

from shared_engine.guided import GrammarError, GuidedDecoding, GuidedKind, check, engine_message
from shared_engine.scheduler import ScheduledRequest

ALL_ALLOWED = -1  # a bitmask word with every bit set


class RequestGrammar:
    """One request's position in its grammar."""

    def __init__(self, compiled: xgr.CompiledGrammar) -> None:
        self.matcher = xgr.GrammarMatcher(compiled)

    def accept(self, token_id: int) -> bool:
        """Advance by one sampled token; False if the grammar forbids it (the sampler's mask should
        have made that impossible) or has already ended."""
        return bool(self.matcher.accept_token(token_id))

    @property
    def terminated(self) -> bool:
        """The grammar is complete and its stop token has been accepted."""
        return bool(self.matcher.is_terminated())

    def fill_rows(self, bitmask: torch.Tensor, first_row: int, guesses: Sequence[int]) -> None:
        """Rows ``first_row …`` ``+ len(guesses)``: the mask before each guess and after the last.
        Rows past a guess the grammar refuses are never read (that guess is rejected): all allowed."""
        advanced = 0
        last = first_row + len(guesses)
        for j, guess in enumerate(guesses):
            self.matcher.fill_next_token_bitmask(bitmask, first_row + j)
            if not self.matcher.accept_token(guess):
                break
            advanced += 1
            if self.terminated:
                break
        else:
            self.matcher.fill_next_token_bitmask(bitmask, last)
        if advanced < len(guesses):
            bitmask[first_row + advanced + 1 : last + 1] = ALL_ALLOWED
        if advanced:
            self.matcher.rollback(advanced)


@dataclass
class MaskTiming:
    """Seconds spent on masks since the start: filling them (helper thread), waiting for a fill that the
    forward pass did not hide (engine thread), applying them; and the steps that had one."""

    fill_s: float = 0.0
    wait_s: float = 0.0
    apply_s: float = 0.0
    steps: int = 0


class StepMask:
    """The bitmask of one step (rows as the runner lays out its logits), filled in a helper thread."""

    def __init__(
        self,
        filled: Future[None],
        bitmask: torch.Tensor,
        rows: list[int],
        vocab_size: int,
        timing: MaskTiming,
    ) -> None:
        self.filled = filled
        self.bitmask = bitmask
        self.rows = rows
        self.vocab_size = vocab_size
        self.timing = timing

    def apply(self, logits: torch.Tensor) -> None:
        """Disallowed tokens of the constrained rows of ``logits`` to -inf, in place, in one operation."""
        start = time.perf_counter()
        self.filled.result()
        waited = time.perf_counter()
        mask = self.bitmask.to(logits.device, non_blocking=True)
        vocab = min(self.vocab_size, logits.shape[-1])
        xgr.apply_token_bitmask_inplace(logits, mask, vocab_size=vocab, indices=self.rows)
        self.timing.wait_s += waited - start
        self.timing.apply_s += time.perf_counter() - waited


class StructuredOutputs:
    """Compiles constraints (cached by constraint) and builds each step's batch bitmask.

    ``tokenizer_info`` describes the model's vocabulary to the grammar engine (built from the tokenizer by
    the pipeline, with the model's vocabulary size and its stop tokens)."""

    def __init__(self, tokenizer_info: xgr.TokenizerInfo, max_cached: int = 256, pin_memory: bool = False):
        threads = max(1, min(8, (os.cpu_count() or 2) // 2))
        # Our own cache below (keyed by the constraint, bounded by entries) stands in for xgrammar's.
        self.compiler = xgr.GrammarCompiler(tokenizer_info, max_threads=threads, cache_enabled=False)
        self.vocab_size = tokenizer_info.vocab_size
        self.max_cached = max_cached
        self.pin_memory = pin_memory
        self._cache: OrderedDict[GuidedDecoding, xgr.CompiledGrammar] = OrderedDict()
        self._lock = threading.Lock()
        self._bitmask: torch.Tensor | None = None
        self._batch = xgr.BatchGrammarMatcher(threads)
        # One helper thread: it fills the mask while the engine thread runs the forward pass.
        self._filler = ThreadPoolExecutor(max_workers=1, thread_name_prefix="grammar-mask")
        self.num_compiled = 0
        self.compile_seconds = 0.0
        self.timing = MaskTiming()

    # -- compiling -------------------------------------------------------------------------------------

    def compile(self, guided: GuidedDecoding) -> xgr.CompiledGrammar:
        """The compiled grammar of ``guided``, from the cache or compiled now (milliseconds to seconds:
        callers on an event loop run this in a worker thread). Raises ``GrammarError``."""
        with self._lock:
            compiled = self._cache.get(guided)
            if compiled is not None:
                self._cache.move_to_end(guided)
                return compiled
        check(guided)
        start = time.perf_counter()
        try:
            compiled = self._compile(guided)
        except Exception as exc:
            raise GrammarError(f"the grammar engine could not compile it: {engine_message(exc)}") from None
        with self._lock:  # two threads may compile the same constraint at once: the result is the same
            self.num_compiled += 1
            self.compile_seconds += time.perf_counter() - start
            self._cache[guided] = compiled
            while len(self._cache) > self.max_cached:
                self._cache.popitem(last=False)
        return compiled

    def _compile(self, guided: GuidedDecoding) -> xgr.CompiledGrammar:
        kind, c = guided.kind, self.compiler
        # JSON on one line, with ", " and ": " between items: free whitespace lets a small model wander
        # into runs of newlines (measured: a quarter of SmolLM2-135M's answers at temperature 1 never ended).
        if kind is GuidedKind.JSON_SCHEMA:
            # Strict mode (no properties or items the schema does not name) steers a small model best,
            # but refuses some valid schemas ({"type": "array", "minItems": 2} names no items): those
            # compile as JSON Schema reads them. Either way every answer validates.
            try:
                return c.compile_json_schema(guided.spec, any_whitespace=False)
            except Exception:
                return c.compile_json_schema(guided.spec, any_whitespace=False, strict_mode=False)
        if kind is GuidedKind.JSON_OBJECT:
            return c.compile_json_schema('{"type": "object"}', any_whitespace=False)
        if kind is GuidedKind.REGEX:
            return c.compile_regex(guided.spec)
        if kind is GuidedKind.CHOICE:
            return c.compile_grammar(guided.ebnf())
        if kind is GuidedKind.GRAMMAR:
            return c.compile_grammar(guided.spec)
        return c.compile_structural_tag(guided.spec)

    def grammar_for(self, guided: GuidedDecoding) -> RequestGrammar:
        return RequestGrammar(self.compile(guided))

    # -- each step ---------------------------------------------------------------------------------------

    def prepare(
        self, items: Sequence[ScheduledRequest], grammars: Mapping[str, RequestGrammar]
    ) -> StepMask | None:
        """Start filling this step's bitmask; None when no request that samples this step is constrained.

        Rows follow the runner's logits: each item that completes its known tokens, in order, with
        ``num_spec_tokens + 1`` rows."""
        plain: list[tuple[RequestGrammar, int]] = []
        guessing: list[tuple[RequestGrammar, int, list[int]]] = []
        rows: list[int] = []
        num_rows = 0
        for s in items:
            if not s.completes_prompt:
                continue
            grammar = grammars.get(s.request.request_id)
            if grammar is not None:
                rows.extend(range(num_rows, num_rows + s.num_spec_tokens + 1))
                if s.num_spec_tokens:
                    guessing.append((grammar, num_rows, list(s.spec_token_ids)))
                else:
                    plain.append((grammar, num_rows))
            num_rows += s.num_spec_tokens + 1
        if not rows:
            return None
        bitmask = self._buffer(num_rows)
        filled = self._filler.submit(self._fill, bitmask, plain, guessing)
        self.timing.steps += 1
        return StepMask(filled, bitmask, rows, self.vocab_size, self.timing)

    def _fill(
        self,
        bitmask: torch.Tensor,
        plain: list[tuple[RequestGrammar, int]],
        guessing: list[tuple[RequestGrammar, int, list[int]]],
    ) -> None:
        start = time.perf_counter()
        if plain:
            matchers = [g.matcher for g, _ in plain]
            self._batch.batch_fill_next_token_bitmask(matchers, bitmask, [row for _, row in plain])
        for grammar, row, guesses in guessing:
            grammar.fill_rows(bitmask, row, guesses)
        self.timing.fill_s += time.perf_counter() - start

    def _buffer(self, num_rows: int) -> torch.Tensor:
        """A view of ``num_rows`` rows of one reused bitmask tensor (grown when needed)."""
        if self._bitmask is None or self._bitmask.shape[0] < num_rows:
            size = max(num_rows, 2 * self._bitmask.shape[0] if self._bitmask is not None else 64)
            bitmask = xgr.allocate_token_bitmask(size, self.vocab_size)
            self._bitmask = bitmask.pin_memory() if self.pin_memory else bitmask
        return self._bitmask[:num_rows]

    def shutdown(self) -> None:
        self._filler.shutdown(wait=False)
