"""The engine and the LLM pipeline on every device this host has: the CPU always, CUDA where present.

One code path serves both; these tests run it on each device with a small random Llama (so they need
nothing but the project's code, as on a GPU host without the model wheels): greedy output equals
transformers' on the same device through batching and the prefix cache, log-probabilities are the
model's, seeded sampling reproduces whatever shares the batch (the tail of the vocabulary included),
speculative decoding keeps greedy output, grammars hold, quantized layers run, and ``auto`` picks
bfloat16 and float weights on CUDA. On CUDA, decode steps are replayed CUDA graphs (the default) in all
of these, and one test checks them against eager steps.
"""

from __future__ import annotations

import asyncio
import re
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

from pipelines.llm import LLMPipeline, LLMPipelineConfig
from pipelines.llm.pipeline import structured_outputs
from shared_engine.async_engine import GenerationRequest
from shared_engine.config import CacheConfig, EngineConfig, SchedulerConfig, SpeculativeConfig
from shared_engine.device import resolve_dtype
from shared_engine.guided import GuidedDecoding, GuidedKind
from shared_engine.llm_engine import LLMEngine
from shared_engine.models.loader import build_decoder, iter_safetensors
from shared_engine.quantization import QuantizedLinear
from shared_engine.quantization_config import QuantizationConfig
from shared_engine.sampler import RequestSampler, sample
from shared_engine.sampling_params import SamplingParams
from tests.helpers.tiny_llm import write_tiny_llama

DEVICES = [
    pytest.param("cpu"),
    pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")),
]
PROMPTS = [
    "def parse_args(self, args=None, namespace=None):",
    "import json",
    "class ArgumentParser(_AttributeHolder, _ActionsContainer):",
    "The quick brown fox jumps over the lazy dog. The quick brown fox jumps over the",
    "1, 2, 3, 4,",
    "return self._decoder.decode(s)",
]
MAX_TOKENS = 16
GREEDY = SamplingParams(max_tokens=MAX_TOKENS, temperature=0.0, ignore_eos=True)
F32 = torch.float32


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_llama(tmp_path_factory.mktemp("tiny-llama"))


@pytest.fixture(scope="module")
def tokenizer(folder: Path) -> Any:
    return AutoTokenizer.from_pretrained(folder)


@pytest.fixture(scope="module")
def prompt_ids(tokenizer: Any) -> list[list[int]]:
    return [tokenizer(p)["input_ids"] for p in PROMPTS]


def build(folder: Path, device: str, quantization: QuantizationConfig | None = None) -> Any:
    return build_decoder(
        AutoConfig.from_pretrained(folder), iter_safetensors(folder), torch.device(device), F32, quantization
    )


def make_engine(
    model: Any,
    tokenizer: Any,
    device: str,
    *,
    spec: SpeculativeConfig | None = None,
    cuda_graphs: bool = True,
    **kw: Any,
) -> LLMEngine:
    # float32 keys and values: token-for-token comparisons, as in the other parity tests.
    config = EngineConfig(
        cache=CacheConfig(block_size=4, num_blocks=256, dtype="float32"),
        scheduler=SchedulerConfig(max_num_seqs=64, max_num_batched_tokens=512),
        speculative=spec,
        cuda_graphs=cuda_graphs,
    )
    eos = frozenset({tokenizer.eos_token_id})
    return LLMEngine(model, tokenizer, config, torch.device(device), F32, eos, **kw)


def run(engine: LLMEngine, prompts: list[list[int]], params: list[SamplingParams]) -> list[list[int]]:
    """Each request's tokens, all added before the first step (one batch)."""
    tokens: dict[str, list[int]] = {f"r{i}": [] for i in range(len(prompts))}
    for (rid, _), prompt, p in zip(tokens.items(), prompts, params, strict=True):
        engine.add_request(rid, prompt, p)
    while engine.has_unfinished_requests():
        for out in engine.step():
            tokens[out.request_id].extend(out.token_ids)
    return list(tokens.values())


@pytest.fixture(scope="module")
def reference() -> dict[str, list[list[int]]]:
    """transformers' greedy continuations, one prompt at a time, per device (filled on first use)."""
    return {}


def transformers_greedy(
    folder: Path, device: str, prompt_ids: list[list[int]], cache: dict[str, list[list[int]]]
) -> list[list[int]]:
    if device not in cache:
        hf = AutoModelForCausalLM.from_pretrained(folder, dtype=F32).to(device).eval()
        with torch.inference_mode():
            cache[device] = [
                hf.generate(
                    torch.tensor([ids], device=device),
                    max_new_tokens=MAX_TOKENS,
                    min_new_tokens=MAX_TOKENS,
                    do_sample=False,
                )[0, len(ids) :].tolist()
                for ids in prompt_ids
            ]
    return cache[device]


@pytest.mark.parametrize("device", DEVICES)
def test_greedy_batch_matches_transformers_then_hits_the_prefix_cache(
    folder: Path, tokenizer: Any, prompt_ids: list[list[int]], reference: Any, device: str
) -> None:
    expected = transformers_greedy(folder, device, prompt_ids, reference)
    model = build(folder, device)
    assert {p.device.type for p in model.parameters()} == {device}
    engine = make_engine(model, tokenizer, device)
    assert all(kv.device.type == device for kv in engine.runner.kv_caches)
    assert engine.generate(prompt_ids, GREEDY) == expected
    assert engine.stats().last_batch_size == len(PROMPTS)
    assert engine.generate(prompt_ids, GREEDY) == expected
    assert engine.kv.prefix_hits > 0


@pytest.mark.parametrize("device", DEVICES)
def test_logprobs_are_the_models(
    folder: Path, tokenizer: Any, prompt_ids: list[list[int]], device: str
) -> None:
    engine = make_engine(build(folder, device), tokenizer, device)
    params = SamplingParams(max_tokens=1, temperature=0.0, logprobs=3)
    engine.add_request("r", prompt_ids[0], params)
    outputs = [out for _ in range(8) if engine.has_unfinished_requests() for out in engine.step()]
    (chosen,) = [lp for out in outputs for lp in out.logprobs]
    hf = AutoModelForCausalLM.from_pretrained(folder, dtype=F32).to(device).eval()
    with torch.inference_mode():
        logits = hf(torch.tensor([prompt_ids[0]], device=device)).logits[0, -1]
    expected = torch.log_softmax(logits, dim=-1).cpu()
    top = expected.topk(3)
    assert chosen.token_id == int(top.indices[0])
    assert chosen.logprob == pytest.approx(float(top.values[0]), abs=1e-4)
    assert [t for t, _ in chosen.top] == top.indices.tolist()
    assert [lp for _, lp in chosen.top] == pytest.approx(top.values.tolist(), abs=1e-4)


@pytest.mark.parametrize("device", DEVICES)
def test_seeded_sampling_reproduces_whatever_shares_the_batch(
    folder: Path, tokenizer: Any, prompt_ids: list[list[int]], device: str
) -> None:
    engine = make_engine(build(folder, device), tokenizer, device)
    seeded = SamplingParams(max_tokens=MAX_TOKENS, temperature=1.5, seed=7, ignore_eos=True)
    others = [
        SamplingParams(max_tokens=MAX_TOKENS, temperature=0.8, top_k=50, top_p=0.9, seed=1, ignore_eos=True),
        SamplingParams(max_tokens=MAX_TOKENS, temperature=1.0, seed=2, ignore_eos=True),
        GREEDY,
    ]
    alone = run(engine, prompt_ids[:1], [seeded])[0]
    batched = run(engine, prompt_ids[:4], [seeded, *others])
    assert batched[0] == alone
    assert run(engine, prompt_ids[:1], [replace(seeded, seed=8)])[0] != alone
    assert all(len(tokens) == MAX_TOKENS for tokens in batched)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_cuda_graphs_replay_what_eager_steps_compute(
    folder: Path, tokenizer: Any, prompt_ids: list[list[int]]
) -> None:
    """Requests of different lengths, so the batch shrinks through several graph buckets as they finish;
    greedy and seeded draws alike are the eager engine's."""
    model = build(folder, "cuda")
    params = [
        replace(GREEDY, max_tokens=4 + 4 * i, temperature=0.0 if i % 2 else 0.9, seed=i)
        for i in range(len(prompt_ids))
    ]
    eager = make_engine(model, tokenizer, "cuda", cuda_graphs=False)
    assert eager.runner.decode_graphs is None
    graphed = make_engine(model, tokenizer, "cuda")
    assert run(graphed, prompt_ids, params) == run(eager, prompt_ids, params)
    graphs = graphed.runner.decode_graphs
    assert graphs is not None and graphs.num_graphs == len(graphs.shapes) >= 3


@pytest.mark.parametrize("device", DEVICES)
def test_sampling_draws_from_the_tail_of_a_flat_distribution(device: str) -> None:
    """Equal logits over 8,192 tokens: seven draws in eight come from past the sampler's head of 1,024
    most likely tokens, so this exercises the tail's inverse CDF on the device. Half the draws must land
    in the lower half of the vocabulary, and a second sampler with the same seed draws the same."""
    logits = torch.zeros(1, 8192, device=device)
    params = SamplingParams(max_tokens=1, temperature=1.0, seed=3)
    draws = []
    for _ in range(2):
        sampler = RequestSampler(params, torch.device(device))
        draws.append([sample(logits, [sampler], with_logprobs=False)[0][0] for _ in range(400)])
    assert draws[0] == draws[1]
    assert len(set(draws[0])) > 350
    assert 0.4 < sum(t < 4096 for t in draws[0]) / 400 < 0.6


@pytest.mark.parametrize("method", ["ngram", "draft_model"])
@pytest.mark.parametrize("device", DEVICES)
def test_speculative_decoding_keeps_greedy_output(
    folder: Path, tokenizer: Any, prompt_ids: list[list[int]], reference: Any, device: str, method: str
) -> None:
    expected = transformers_greedy(folder, device, prompt_ids, reference)
    spec = SpeculativeConfig(
        method=method, num_speculative_tokens=3, prompt_lookup_min=1, prompt_lookup_max=3
    )
    draft = build(folder, device) if method == "draft_model" else None
    engine = make_engine(build(folder, device), tokenizer, device, spec=spec, draft_model=draft)
    assert engine.generate(prompt_ids, GREEDY) == expected
    stats = engine.stats()
    assert 0 < stats.spec_num_accepted_tokens <= stats.spec_num_draft_tokens
    # Sampled guesses go through rejection sampling on the device; a seed still decides the draws.
    sampled = SamplingParams(max_tokens=MAX_TOKENS, temperature=1.0, seed=5, ignore_eos=True)
    first, second = (run(engine, prompt_ids[:2], [GREEDY, sampled]) for _ in range(2))
    assert first == second and first[0] == expected[0] and len(first[1]) == MAX_TOKENS


@pytest.mark.parametrize("device", DEVICES)
def test_grammars_hold_on_the_device(
    folder: Path, tokenizer: Any, prompt_ids: list[list[int]], device: str
) -> None:
    model = build(folder, device)
    eos = frozenset({tokenizer.eos_token_id})
    structured = structured_outputs(tokenizer, model.arch.vocab_size, eos, torch.device(device))
    try:
        engine = make_engine(model, tokenizer, device, structured=structured)
        pattern = r"(yes|no), [0-9]{1,3}\."
        choices = ["argparse", "json", "neither"]
        params = [
            SamplingParams(max_tokens=32, temperature=t, seed=i, guided=guided)
            for i, (t, guided) in enumerate(
                [
                    (0.0, GuidedDecoding(GuidedKind.REGEX, pattern)),
                    (1.0, GuidedDecoding(GuidedKind.REGEX, pattern)),
                    (0.0, GuidedDecoding.choice(choices)),
                    (1.0, GuidedDecoding.choice(choices)),
                ]
            )
        ]
        answers = [tokenizer.decode(t, skip_special_tokens=True) for t in run(engine, prompt_ids[:4], params)]
        assert all(re.fullmatch(pattern, a) for a in answers[:2]), answers
        assert all(a in choices for a in answers[2:]), answers
    finally:
        structured.shutdown()


@pytest.mark.parametrize(("mode", "tolerance"), [("int8", 0.02), ("int4", 0.15)])
@pytest.mark.parametrize("device", DEVICES)
def test_quantized_layers_run_on_the_device(
    folder: Path, tokenizer: Any, prompt_ids: list[list[int]], device: str, mode: str, tolerance: float
) -> None:
    """Weight-only int8 / int4 wherever they are asked for (on CUDA: dequantize, then matmul): each layer
    computes what its float weights do, within the rounding of its mode, and the model generates. (This
    random model's greedy choices are too close to survive int4 rounding token for token.)"""
    float_model = build(folder, device)
    model = build(folder, device, QuantizationConfig(mode, activations="float"))
    quantized = {n: m for n, m in model.named_modules() if isinstance(m, QuantizedLinear)}
    assert quantized and all(b.device.type == device for m in quantized.values() for b in m.buffers())
    torch.manual_seed(0)
    for name, layer in quantized.items():
        weight = float_model.get_submodule(name).weight
        x = torch.randn(5, weight.shape[1], device=device)
        expected = x @ weight.T
        with torch.inference_mode():
            error = (layer(x) - expected).norm() / expected.norm()
        assert error < tolerance, name
    got = make_engine(model, tokenizer, device).generate(prompt_ids, GREEDY)
    assert all(len(g) == MAX_TOKENS for g in got)


@pytest.mark.parametrize("device", DEVICES)
def test_the_pipeline_picks_dtype_and_quantization_by_device(
    folder: Path, tmp_path: Path, device: str
) -> None:
    """``auto`` everywhere, as models.toml ships: bfloat16 and float weights on CUDA; on a CPU, the CPU's
    choice (int4 layers)."""
    config = LLMPipelineConfig(
        "tiny", str(folder), engine=EngineConfig(cache=CacheConfig(num_blocks=64)),
        quantization=QuantizationConfig("auto"), device=device,
    )  # fmt: skip
    pipeline = LLMPipeline(config, tmp_path)
    try:
        assert pipeline.device.type == device
        assert pipeline.dtype == resolve_dtype("auto", torch.device(device))
        if device == "cuda":
            assert pipeline.dtype == torch.bfloat16
        model: Any = pipeline.engine.engine.runner.model
        quantized = any(isinstance(m, QuantizedLinear) for m in model.modules())
        assert quantized == (device == "cpu")
        prompt = pipeline.encode_chat([{"role": "user", "content": "Which module parses arguments?"}])

        async def generate() -> list[int]:
            request = GenerationRequest("r", prompt, GREEDY)
            return [t async for _, out in pipeline.generate([request]) for t in out.token_ids]

        assert len(asyncio.run(generate())) == MAX_TOKENS
    finally:
        pipeline.shutdown()
