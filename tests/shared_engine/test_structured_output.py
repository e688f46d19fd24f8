"""Structured outputs in the engine, on the packaged model: every answer that ends with ``stop`` follows its
grammar, whatever the temperature, batch, chunking, preemption or speculation; seeds still reproduce;
log-probabilities stay those of the model; compiled grammars are reused."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import torch
from transformers import AutoConfig, AutoTokenizer

from pipelines.llm.pipeline import structured_outputs
from shared_engine.config import CacheConfig, EngineConfig, SchedulerConfig, SpeculativeConfig
from shared_engine.errors import InvalidRequest
from shared_engine.guided import GrammarError, GuidedDecoding, GuidedKind
from shared_engine.llm_engine import LLMEngine
from shared_engine.models.loader import build_decoder, iter_safetensors
from shared_engine.sampling_params import SamplingParams
from shared_engine.structured_output import StructuredOutputs

CPU = torch.device("cpu")
PERSON = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 24},
        "age": {"type": "integer", "minimum": 0, "maximum": 130},
        "city": {"enum": ["Paris", "Tokyo", "Lima"]},
    },
    "required": ["name", "age", "city"],
    "additionalProperties": False,
}
QUESTIONS = [
    "Describe a person as JSON.",
    "Who lives in Tokyo? Answer in JSON.",
    "Invent a character for a story.",
    "Give me a user record.",
]


@pytest.fixture(scope="module")
def tokenizer(smollm2_folder: Path) -> Any:
    return AutoTokenizer.from_pretrained(smollm2_folder)


@pytest.fixture(scope="module")
def model(smollm2_folder: Path) -> Any:
    return build_decoder(
        AutoConfig.from_pretrained(smollm2_folder), iter_safetensors(smollm2_folder), CPU, torch.float32
    )


@pytest.fixture(scope="module")
def structured(model: Any, tokenizer: Any) -> StructuredOutputs:
    return structured_outputs(tokenizer, model.arch.vocab_size, frozenset({tokenizer.eos_token_id}), CPU)


@pytest.fixture(scope="module")
def prompts(tokenizer: Any) -> list[list[int]]:
    out = []
    for q in QUESTIONS:
        text = tokenizer.apply_chat_template(
            [{"role": "user", "content": q}], add_generation_prompt=True, tokenize=False
        )
        out.append(tokenizer(text, add_special_tokens=False)["input_ids"])
    return out


def make_engine(
    model: Any,
    tokenizer: Any,
    structured: StructuredOutputs | None,
    *,
    num_blocks: int = 256,
    budget: int = 2048,
    spec: SpeculativeConfig | None = None,
    draft: Any = None,
) -> LLMEngine:
    # Token-for-token comparisons across batch shapes and code paths: float32 keys and values, as
    # a bfloat16 cache would turn their float32 rounding differences into bfloat16 steps.
    config = EngineConfig(
        cache=CacheConfig(block_size=16, num_blocks=num_blocks, dtype="float32"),
        scheduler=SchedulerConfig(max_num_batched_tokens=budget),
        speculative=spec,
    )
    eos = frozenset({tokenizer.eos_token_id})
    return LLMEngine(
        model, tokenizer, config, CPU, torch.float32, eos, draft_model=draft, structured=structured
    )


def run(
    engine: LLMEngine, prompts: list[list[int]], params: list[SamplingParams]
) -> list[tuple[list[int], str]]:
    """(tokens, finish reason) per prompt, all in one batch."""
    ids = [f"r{i}" for i in range(len(prompts))]
    for rid, prompt, p in zip(ids, prompts, params, strict=True):
        engine.add_request(rid, prompt, p)
    tokens: dict[str, list[int]] = {rid: [] for rid in ids}
    reasons: dict[str, str] = {}
    while engine.has_unfinished_requests():
        for out in engine.step():
            tokens[out.request_id].extend(out.token_ids)
            if out.finish_reason is not None:
                reasons[out.request_id] = out.finish_reason.value
    return [(tokens[rid], reasons[rid]) for rid in ids]


def text(tokenizer: Any, tokens: list[int]) -> str:
    return str(tokenizer.decode(tokens, skip_special_tokens=True))


def schema_params(temperature: float, seed: int, max_tokens: int = 64, **kw: Any) -> SamplingParams:
    guided = GuidedDecoding.json_schema(PERSON)
    return SamplingParams(max_tokens=max_tokens, temperature=temperature, seed=seed, guided=guided, **kw)


@pytest.mark.parametrize("temperature", [0.0, 1.0, 1.6])
def test_every_answer_that_stops_validates_against_the_schema(
    model: Any, tokenizer: Any, structured: StructuredOutputs, prompts: list[list[int]], temperature: float
) -> None:
    engine = make_engine(model, tokenizer, structured)
    params = [schema_params(temperature, seed) for seed in range(len(prompts))]
    results = run(engine, prompts, params)
    stopped = [text(tokenizer, t) for t, reason in results if reason == "stop"]
    for answer in stopped:
        jsonschema.validate(json.loads(answer), PERSON)
    for tokens, reason in results:
        assert reason in ("stop", "length")
        assert reason == "stop" or len(tokens) == 64  # cut only by max_tokens
    if temperature == 0.0:
        assert len(stopped) == len(prompts), results
    elif temperature <= 1.0:
        assert stopped, results


def test_unconstrained_answers_are_not_json(
    model: Any, tokenizer: Any, structured: StructuredOutputs, prompts: list[list[int]]
) -> None:
    """The constraint is what makes the answers above valid: without it the same prompts give prose."""
    engine = make_engine(model, tokenizer, structured)
    results = run(engine, prompts, [SamplingParams(max_tokens=24, temperature=0.0)] * len(prompts))
    assert not any(text(tokenizer, t).lstrip().startswith("{") for t, _ in results)


@pytest.mark.parametrize(
    ("guided", "pattern"),
    [
        (GuidedDecoding(GuidedKind.REGEX, r"[0-9]{3}-[0-9]{4}"), r"[0-9]{3}-[0-9]{4}"),
        (GuidedDecoding.choice(["yes", "no", "maybe so"]), r"yes|no|maybe so"),
        (GuidedDecoding(GuidedKind.GRAMMAR, 'root ::= "A" [0-9] [0-9]'), r"A[0-9]{2}"),
    ],
    ids=["regex", "choice", "ebnf"],
)
def test_regex_choice_and_grammar_are_followed(
    model: Any,
    tokenizer: Any,
    structured: StructuredOutputs,
    prompts: list[list[int]],
    guided: GuidedDecoding,
    pattern: str,
) -> None:
    engine = make_engine(model, tokenizer, structured)
    params = [SamplingParams(max_tokens=16, temperature=1.2, seed=s, guided=guided) for s in range(4)]
    for tokens, reason in run(engine, prompts, params):
        assert reason == "stop"
        assert re.fullmatch(pattern, text(tokenizer, tokens))


def test_the_grammar_ends_the_request_even_when_ignoring_eos(
    model: Any, tokenizer: Any, structured: StructuredOutputs, prompts: list[list[int]]
) -> None:
    engine = make_engine(model, tokenizer, structured)
    params = [schema_params(0.0, 0, max_tokens=96, ignore_eos=True)] * 2
    for tokens, reason in run(engine, prompts[:2], params):
        assert reason == "stop", text(tokenizer, tokens)
        assert tokens[-1] == tokenizer.eos_token_id
        jsonschema.validate(json.loads(text(tokenizer, tokens)), PERSON)


def test_json_object_answers_are_objects(
    model: Any, tokenizer: Any, structured: StructuredOutputs, prompts: list[list[int]]
) -> None:
    engine = make_engine(model, tokenizer, structured)
    guided = GuidedDecoding(GuidedKind.JSON_OBJECT)
    params = [SamplingParams(max_tokens=48, temperature=1.0, seed=s, guided=guided) for s in range(4)]
    results = run(engine, prompts, params)
    assert any(reason == "stop" for _, reason in results), results
    for tokens, reason in results:
        if reason == "stop":
            assert isinstance(json.loads(text(tokenizer, tokens)), dict)
        else:
            assert text(tokenizer, tokens).startswith("{") and len(tokens) == 48


def test_batch_chunking_and_preemption_change_nothing(
    model: Any, tokenizer: Any, structured: StructuredOutputs, prompts: list[list[int]]
) -> None:
    """Seeded constrained requests, alone or batched, chunked and preempted: the same tokens. Seeded
    requests read nothing from the prefix cache (a cached prefix rounds differently), so it stays unused."""
    params = [schema_params(0.9, seed) for seed in range(len(prompts))]
    alone = [
        run(make_engine(model, tokenizer, structured), [p], [q])[0]
        for p, q in zip(prompts, params, strict=True)
    ]
    # Chunks of 8 prompt tokens, a pool so small that requests are preempted, and a shared prefix cache.
    squeezed = make_engine(model, tokenizer, structured, num_blocks=12, budget=8)
    batched = run(squeezed, prompts + prompts, params + params)
    assert batched == alone + alone
    assert squeezed.stats().num_preemptions > 0
    assert squeezed.stats().prefix_cache_queries > 0 and squeezed.stats().prefix_cache_hits == 0


@pytest.mark.parametrize("method", ["ngram", "draft_model"])
def test_speculative_guesses_respect_the_grammar(
    model: Any, tokenizer: Any, structured: StructuredOutputs, prompts: list[list[int]], method: str
) -> None:
    spec = SpeculativeConfig(
        method=method, num_speculative_tokens=3, prompt_lookup_min=1, prompt_lookup_max=3
    )
    draft = model if method == "draft_model" else None
    greedy = [schema_params(0.0, 0)] * len(prompts)
    plain = run(make_engine(model, tokenizer, structured), prompts, greedy)
    engine = make_engine(model, tokenizer, structured, spec=spec, draft=draft)
    assert run(engine, prompts, greedy) == plain  # greedy: token for token the same
    assert engine.stats().spec_num_accepted_tokens > 0
    sampled = run(engine, prompts, [schema_params(1.0, s) for s in range(len(prompts))])
    for tokens, reason in sampled:
        if reason == "stop":
            jsonschema.validate(json.loads(text(tokenizer, tokens)), PERSON)


def test_seeded_answers_reproduce_and_logprobs_are_the_models(
    model: Any, tokenizer: Any, structured: StructuredOutputs, prompts: list[list[int]]
) -> None:
    engine = make_engine(model, tokenizer, structured)
    params = schema_params(1.0, 42, max_tokens=24, logprobs=3)
    engine.add_request("a", prompts[0], params)
    outs = []
    while engine.has_unfinished_requests():
        outs.extend(engine.step())
    lps = [lp for o in outs for lp in o.logprobs]
    assert [lp.token_id for lp in lps] == [t for o in outs for t in o.token_ids]
    assert all(lp.logprob > float("-inf") and len(lp.top) == 3 for lp in lps)
    # Before the mask: the model's favourite first token is prose, not the "{" the grammar forces.
    assert tokenizer.decode([lps[0].top[0][0]]) != "{"
    again = run(engine, [prompts[1], prompts[0]], [schema_params(1.0, 7, 24), params])[1][0]
    assert again == [t for o in outs for t in o.token_ids]


def test_grammars_are_compiled_once_per_constraint(model: Any, tokenizer: Any) -> None:
    fresh = structured_outputs(tokenizer, model.arch.vocab_size, frozenset({tokenizer.eos_token_id}), CPU)
    first = fresh.compile(GuidedDecoding.json_schema(PERSON))
    assert fresh.compile(GuidedDecoding.json_schema(PERSON)) is first
    fresh.compile(GuidedDecoding(GuidedKind.REGEX, "a+"))
    assert fresh.num_compiled == 2 and fresh.compile_seconds > 0
    with pytest.raises(GrammarError, match="Unsupported type"):
        fresh.compile(GuidedDecoding.json_schema({"type": "colour"}))


def test_an_engine_without_a_grammar_engine_refuses_constraints(
    model: Any, tokenizer: Any, prompts: list[list[int]]
) -> None:
    engine = make_engine(model, tokenizer, None)
    with pytest.raises(InvalidRequest, match="structured outputs"):
        engine.add_request("a", prompts[0], schema_params(0.0, 0))
    assert not engine.has_unfinished_requests()
