"""Speculative decoding: greedy output is token for token what decoding one at a time gives, for prompt
lookup and for a draft model, through batching, stops and preemption; rejection sampling keeps the target
distribution; the scheduler reserves room for guesses only where they can be used."""

from __future__ import annotations

import itertools
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import torch
from transformers import AutoConfig, AutoTokenizer

from shared_engine.config import CacheConfig, EngineConfig, SchedulerConfig, SpeculativeConfig
from shared_engine.kv_cache_manager import KVCacheManager
from shared_engine.llm_engine import LLMEngine
from shared_engine.models.loader import build_decoder, iter_safetensors
from shared_engine.rejection_sampler import accept_greedy, accept_sampled
from shared_engine.request import Request
from shared_engine.sampling_params import SamplingParams
from shared_engine.scheduler import Scheduler, SchedulerOutput
from shared_engine.spec_decode import prompt_lookup
from tests.shared_engine.factories import make_request

CPU = torch.device("cpu")
PROMPTS = [
    "The capital of France is",
    "def fibonacci(n):",
    "1, 2, 3, 4,",
    # Answers that copy their context, as in RAG: where prompt lookup shines.
    "Context: The Eiffel Tower is a wrought-iron lattice tower on the Champ de Mars in Paris, France. "
    "It is named after the engineer Gustave Eiffel, whose company designed and built the tower.\n"
    "Question: Who is the Eiffel Tower named after?\nAnswer: The Eiffel Tower is named after",
    "Repeat after me: the quick brown fox jumps over the lazy dog. the quick brown fox jumps over the",
]
GREEDY = SamplingParams(max_tokens=24, temperature=0.0, ignore_eos=True)


@pytest.fixture(scope="module")
def tokenizer(smollm2_folder: Path) -> Any:
    return AutoTokenizer.from_pretrained(smollm2_folder)


@pytest.fixture(scope="module")
def model(smollm2_folder: Path) -> Any:
    return build_decoder(
        AutoConfig.from_pretrained(smollm2_folder), iter_safetensors(smollm2_folder), CPU, torch.float32
    )


@pytest.fixture(scope="module")
def draft(smollm2_folder: Path) -> Any:
    """The same weights as a second model: the machinery under test, with guesses usually right."""
    return build_decoder(
        AutoConfig.from_pretrained(smollm2_folder), iter_safetensors(smollm2_folder), CPU, torch.float32
    )


@pytest.fixture(scope="module")
def prompt_ids(tokenizer: Any) -> list[list[int]]:
    return [tokenizer(p)["input_ids"] for p in PROMPTS]


def make_engine(
    model: Any, tokenizer: Any, spec: SpeculativeConfig | None, draft: Any = None, **kw: Any
) -> LLMEngine:
    # Token-for-token comparisons across batch shapes and code paths: float32 keys and values, as
    # a bfloat16 cache would turn their float32 rounding differences into bfloat16 steps.
    block_size = kw.pop("block_size", 16)
    cache = CacheConfig(block_size=block_size, num_blocks=kw.pop("num_blocks", 256), dtype="float32")
    scheduler = SchedulerConfig(max_num_seqs=kw.pop("max_num_seqs", 64))
    assert not kw, f"unknown options {kw}"
    config = EngineConfig(cache=cache, scheduler=scheduler, speculative=spec)
    eos = frozenset({tokenizer.eos_token_id})
    return LLMEngine(model, tokenizer, config, CPU, torch.float32, eos, draft_model=draft)


@pytest.fixture(scope="module")
def reference(model: Any, tokenizer: Any, prompt_ids: list[list[int]]) -> list[list[int]]:
    return make_engine(model, tokenizer, None).generate(prompt_ids, GREEDY)


NGRAM = SpeculativeConfig(method="ngram", num_speculative_tokens=4, prompt_lookup_min=1, prompt_lookup_max=3)
DRAFT = SpeculativeConfig(method="draft_model", num_speculative_tokens=3)


def guessing_engine(method: str, model: Any, draft: Any, tokenizer: Any, **kw: Any) -> LLMEngine:
    """An engine that guesses by prompt lookup (``ngram``) or with ``draft`` (``draft_model``)."""
    if method == "ngram":
        return make_engine(model, tokenizer, NGRAM, **kw)
    return make_engine(model, tokenizer, DRAFT, draft, **kw)


def test_prompt_lookup_greedy_output_is_unchanged(
    model: Any, tokenizer: Any, prompt_ids: list[list[int]], reference: list[list[int]]
) -> None:
    engine = make_engine(model, tokenizer, NGRAM)
    assert engine.generate(prompt_ids, GREEDY) == reference
    stats = engine.stats()
    assert stats.spec_num_draft_tokens > 0
    # The copying prompts make some guesses right, and never more than were made.
    assert 0 < stats.spec_num_accepted_tokens <= stats.spec_num_draft_tokens
    assert stats.num_running == stats.num_waiting == 0 and stats.kv_cache_usage == 0.0


def test_prompt_lookup_saves_steps_on_copying_prompts(
    model: Any, tokenizer: Any, prompt_ids: list[list[int]], reference: list[list[int]]
) -> None:
    plain, spec = make_engine(model, tokenizer, None), make_engine(model, tokenizer, NGRAM)
    copying = prompt_ids[-1:]
    steps = []
    for engine in (plain, spec):
        engine.add_request("r", copying[0], GREEDY)
        n = 0
        tokens: list[int] = []
        while engine.has_unfinished_requests():
            n += 1
            for out in engine.step():
                tokens.extend(out.token_ids)
        assert tokens == reference[-1]
        steps.append(n)
    assert steps[1] < steps[0], f"speculation took {steps[1]} steps, plain decoding {steps[0]}"


def test_draft_model_greedy_output_is_unchanged(
    model: Any, draft: Any, tokenizer: Any, prompt_ids: list[list[int]], reference: list[list[int]]
) -> None:
    engine = make_engine(model, tokenizer, DRAFT, draft)
    assert engine.generate(prompt_ids, GREEDY) == reference
    stats = engine.stats()
    # The draft is the target itself: its guesses are (up to batch rounding) always right.
    assert stats.spec_acceptance_rate > 0.9, stats


@pytest.mark.parametrize("method", ["ngram", "draft_model"])
def test_preemption_under_a_small_pool_changes_nothing(
    method: str,
    model: Any,
    draft: Any,
    tokenizer: Any,
    prompt_ids: list[list[int]],
    reference: list[list[int]],
) -> None:
    engine = guessing_engine(method, model, draft, tokenizer, num_blocks=14)
    assert engine.generate(prompt_ids, GREEDY) == reference
    assert engine.stats().num_preemptions > 0


@pytest.mark.parametrize("method", ["ngram", "draft_model"])
def test_blocks_completed_by_accepted_guesses_serve_the_next_turn(
    method: str,
    model: Any,
    draft: Any,
    tokenizer: Any,
    prompt_ids: list[list[int]],
    reference: list[list[int]],
) -> None:
    """A chat's next turn resends the answer: the blocks accepted guesses filled are cached as the
    answer's tokens, as plain decoding caches them."""
    engine = guessing_engine(method, model, draft, tokenizer, block_size=4)
    first = prompt_ids[-1]
    assert engine.generate([first], GREEDY) == reference[-1:]
    assert engine.stats().spec_num_accepted_tokens > 0
    conversation = first + reference[-1]
    follow_up = conversation + tokenizer(" Again:")["input_ids"]
    engine.add_request("next", follow_up, SamplingParams(max_tokens=1, temperature=0.0))
    outputs = [out for _ in iter(engine.has_unfinished_requests, False) for out in engine.step()]
    # Every block but the one holding the answer's last token (never fed back to the model) is reused.
    assert outputs[-1].num_cached_tokens == (len(conversation) - 1) // 4 * 4


def test_stops_inside_accepted_guesses_end_the_output_there(
    model: Any, draft: Any, tokenizer: Any, prompt_ids: list[list[int]], reference: list[list[int]]
) -> None:
    stop_at = reference[-1][6]
    params = SamplingParams(max_tokens=24, temperature=0.0, ignore_eos=True, stop_token_ids=(stop_at,))
    expected = make_engine(model, tokenizer, None).generate(prompt_ids, params)
    assert expected[-1] == reference[-1][: reference[-1].index(stop_at) + 1]
    assert make_engine(model, tokenizer, NGRAM).generate(prompt_ids, params) == expected
    assert make_engine(model, tokenizer, DRAFT, draft).generate(prompt_ids, params) == expected


def test_logprobs_come_with_every_accepted_token(
    model: Any, tokenizer: Any, prompt_ids: list[list[int]]
) -> None:
    params = SamplingParams(max_tokens=16, temperature=0.0, ignore_eos=True, logprobs=2)
    runs = []
    for spec in (None, NGRAM):
        engine = make_engine(model, tokenizer, spec)
        engine.add_request("r", prompt_ids[-1], params)
        outs = [out for _ in range(64) if engine.has_unfinished_requests() for out in engine.step()]
        runs.append([lp for out in outs for lp in out.logprobs])
        for out in outs:
            assert [lp.token_id for lp in out.logprobs] == out.token_ids
    plain, spec_lps = runs
    assert [lp.token_id for lp in spec_lps] == [lp.token_id for lp in plain]
    for a, b in zip(plain, spec_lps, strict=True):
        assert a.logprob == pytest.approx(b.logprob, abs=1e-3)
        assert [t for t, _ in a.top] == [t for t, _ in b.top]


@pytest.mark.parametrize("method", ["ngram", "draft_model"])
def test_penalties_see_the_guesses_before_each_row(
    method: str, model: Any, draft: Any, tokenizer: Any, prompt_ids: list[list[int]]
) -> None:
    """Row j of a request's guesses comes after j guesses: its penalties count them, so greedy output
    with penalties is still what decoding one token at a time gives."""
    params = replace(GREEDY, frequency_penalty=0.5, presence_penalty=0.3, repetition_penalty=1.1)
    expected = make_engine(model, tokenizer, None).generate(prompt_ids, params)
    assert expected != make_engine(model, tokenizer, None).generate(prompt_ids, GREEDY)
    engine = guessing_engine(method, model, draft, tokenizer)
    assert engine.generate(prompt_ids, params) == expected
    assert engine.stats().spec_num_accepted_tokens > 0


@pytest.mark.parametrize("method", ["ngram", "draft_model"])
def test_min_tokens_counts_the_guesses_before_each_row(
    method: str, model: Any, draft: Any, tokenizer: Any
) -> None:
    """The end of sequence is barred in row j only while the output and j guesses are short of min_tokens."""
    question = [{"role": "user", "content": "What is the capital of France?"}]
    prompt = tokenizer.apply_chat_template(question, add_generation_prompt=True, return_dict=False)
    short = SamplingParams(max_tokens=48, temperature=0.0)
    plain = make_engine(model, tokenizer, None).generate([prompt], short)[0]
    assert plain[-1] == tokenizer.eos_token_id and len(plain) < 20
    # Barred up to just before where it comes anyway: the same answer, its end in a guess's row.
    at_the_end = replace(short, min_tokens=len(plain) - 1)
    assert make_engine(model, tokenizer, None).generate([prompt], at_the_end) == [plain]
    engine = guessing_engine(method, model, draft, tokenizer)
    assert engine.generate([prompt], at_the_end) == [plain]
    past_it = replace(short, min_tokens=len(plain) + 6)
    expected = make_engine(model, tokenizer, None).generate([prompt], past_it)
    assert engine.generate([prompt], past_it) == expected
    assert engine.stats().spec_num_draft_tokens > 0


@pytest.mark.parametrize("method", ["ngram", "draft_model"])
def test_bad_words_see_the_guesses_before_each_row(
    method: str,
    model: Any,
    draft: Any,
    tokenizer: Any,
    prompt_ids: list[list[int]],
    reference: list[list[int]],
) -> None:
    """A bad word's last token is barred in row j where the output and the first j guesses end with the
    rest of it: greedy output with bad words is what decoding one token at a time gives, and never holds
    them."""
    pair = tuple(reference[0][2:4])
    single = next(t for t in reference[1] if t not in pair)
    params = replace(GREEDY, bad_words_token_ids=(pair, (single,)))
    expected = make_engine(model, tokenizer, None).generate(prompt_ids, params)
    assert expected != reference
    for out in expected:
        assert single not in out and pair not in itertools.pairwise(out), out
    engine = guessing_engine(method, model, draft, tokenizer)
    assert engine.generate(prompt_ids, params) == expected
    assert engine.stats().spec_num_accepted_tokens > 0


@pytest.mark.parametrize("method", ["ngram", "draft_model"])
def test_seeded_sampling_with_guesses_is_reproducible(
    method: str, model: Any, draft: Any, tokenizer: Any, prompt_ids: list[list[int]]
) -> None:
    params = SamplingParams(max_tokens=24, temperature=0.8, top_p=0.95, seed=7, ignore_eos=True)
    runs = [guessing_engine(method, model, draft, tokenizer).generate(prompt_ids, params) for _ in range(2)]
    assert runs[0] == runs[1]
    assert all(len(tokens) == 24 for tokens in runs[0])


# -- the pieces ---------------------------------------------------------------------------------------


def test_prompt_lookup_takes_the_longest_latest_match() -> None:
    seq = [1, 2, 3, 9, 9, 7, 2, 3, 4, 5, 6, 1, 2, 3]
    # "1 2 3" occurred at the start (followed by 9 9 7); the longer suffix wins over the later "2 3".
    assert prompt_lookup(seq, 3, 1, 3) == [9, 9, 7]
    assert prompt_lookup(seq, 3, 1, 2) == [4, 5, 6]  # "2 3": its latest earlier occurrence
    assert prompt_lookup(seq, 10, 1, 2)[:3] == [4, 5, 6]
    assert prompt_lookup([5, 6, 7, 8], 3, 1, 3) == []
    assert prompt_lookup([4], 3, 1, 3) == []


def test_greedy_acceptance_keeps_guesses_up_to_the_first_disagreement() -> None:
    assert accept_greedy([5, 6, 7, 8], [5, 6, 7]) == [5, 6, 7, 8]
    assert accept_greedy([5, 6, 7, 8], [5, 9, 7]) == [5, 6]
    assert accept_greedy([5, 6, 7, 8], [1, 6, 7]) == [5]


def _first_token_frequencies(p: torch.Tensor, guess: int, q: torch.Tensor | None, n: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    target = torch.stack([p, p])  # the row after the guess: drawn when the guess is kept
    counts = torch.zeros(len(p))
    for _ in range(n):
        guess_now = guess if q is None else int(torch.multinomial(q, 1, generator=g))
        first = accept_sampled(target, [guess_now], None if q is None else q.unsqueeze(0), g)[0]
        counts[first] += 1
    return counts / n


@pytest.mark.parametrize("draft_kind", ["deterministic", "draft distribution"])
def test_rejection_sampling_keeps_the_target_distribution(draft_kind: str) -> None:
    p = torch.tensor([0.5, 0.25, 0.15, 0.1, 0.0])
    q = None if draft_kind == "deterministic" else torch.tensor([0.1, 0.1, 0.2, 0.3, 0.3])
    freq = _first_token_frequencies(p, 2, q, 20_000)
    # Standard error of each frequency is at most 0.0035: five of them is far outside chance.
    assert torch.allclose(freq, p, atol=0.018), freq
    assert freq[4] == 0.0  # never a token the target gives no probability


def _decoding(scheduler: Scheduler, request_ids: str, max_tokens: int) -> list[Request]:
    """New requests of ``scheduler``, one per letter, each with its prompt computed and a first token."""
    requests = [make_request(rid, list(range(10)), max_tokens=max_tokens) for rid in request_ids]
    for r in requests:
        scheduler.add_request(r)
    out = scheduler.schedule()
    assert [(s.num_new_tokens, s.num_spec_tokens) for s in out.scheduled] == [(10, 0)] * len(requests)
    scheduler.update_after_step(out)  # a prefill guesses nothing
    for r in requests:
        r.append_output_token(1)
    return requests


def test_scheduler_reserves_guesses_only_where_max_tokens_lets_them_be_used() -> None:
    scheduler = Scheduler(
        SchedulerConfig(), KVCacheManager(64, 4), SpeculativeConfig(num_speculative_tokens=4)
    )
    _decoding(scheduler, "a", max_tokens=3)
    (decode,) = scheduler.schedule().scheduled
    # 2 more tokens may come after the pending one: at most 1 guess can be used.
    assert (decode.num_new_tokens, decode.num_spec_tokens) == (2, 1)
    decode.set_guesses([7, 8])
    assert (decode.num_new_tokens, decode.num_spec_tokens, decode.spec_token_ids) == (2, 1, [7])
    decode.set_guesses([])
    assert (decode.num_new_tokens, decode.num_spec_tokens) == (1, 0)


def test_accepted_guesses_count_as_computed() -> None:
    scheduler = Scheduler(
        SchedulerConfig(), KVCacheManager(64, 4), SpeculativeConfig(num_speculative_tokens=4)
    )
    (a,) = _decoding(scheduler, "a", max_tokens=16)
    (decode,) = scheduler.schedule().scheduled
    assert (decode.num_new_tokens, decode.num_spec_tokens) == (5, 4)
    decode.set_guesses([7, 8, 9])
    scheduler.update_after_step(SchedulerOutput([decode]), {"a": 2})
    assert a.num_computed_tokens == 13  # the prompt, the pending token and the two accepted guesses


def test_nobody_guesses_while_the_batch_is_larger_than_disable_by_batch_size() -> None:
    spec = SpeculativeConfig(num_speculative_tokens=4, disable_by_batch_size=2)
    scheduler = Scheduler(SchedulerConfig(), KVCacheManager(64, 4), spec)
    _decoding(scheduler, "ab", max_tokens=16)
    assert [s.num_spec_tokens for s in scheduler.schedule().scheduled] == [4, 4]
    scheduler = Scheduler(SchedulerConfig(), KVCacheManager(64, 4), spec)
    _decoding(scheduler, "abc", max_tokens=16)
    assert [s.num_spec_tokens for s in scheduler.schedule().scheduled] == [0, 0, 0]


def test_speculative_config_is_validated() -> None:
    with pytest.raises(ValueError, match="method must be one of"):
        SpeculativeConfig(method="medusa")
    with pytest.raises(ValueError, match="num_speculative_tokens must be from 1 to 16"):
        SpeculativeConfig(num_speculative_tokens=0)
    with pytest.raises(ValueError, match="prompt_lookup_min and prompt_lookup_max"):
        SpeculativeConfig(prompt_lookup_min=3, prompt_lookup_max=2)


def test_a_draft_model_needs_the_draft_method(model: Any, draft: Any, tokenizer: Any) -> None:
    with pytest.raises(ValueError, match="needs a draft model"):
        make_engine(model, tokenizer, DRAFT)
    with pytest.raises(ValueError, match="takes no draft model"):
        make_engine(model, tokenizer, NGRAM, draft)
