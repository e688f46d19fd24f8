"""The benchmarks' own logic: Poisson arrivals, goodput against objectives, prompt files, the quality
benchmark's agreement measures, the speech benchmark's saved clips, the device benchmark end to end."""

from __future__ import annotations

import itertools
import json
import math
import statistics
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from benchmarks import asr, decode_ab, device_decode, dynamic_int8_prefill, quality, quantization, step_parts
from benchmarks.chat_model import configured_chat_model
from benchmarks.load import arrival_times, request_body
from benchmarks.metrics import RequestResult, RunResult, summarize
from benchmarks.serving import file_prompts, parse_args, parse_slos, ratio
from benchmarks.workload import Prompt
from shared_engine.sampling_params import SamplingParams
from tests.helpers.tiny_llm import write_tiny_llama


def test_arrivals_are_a_seeded_poisson_process() -> None:
    times = arrival_times(4000, 8.0, seed=3)
    assert times == arrival_times(4000, 8.0, seed=3)
    assert times != arrival_times(4000, 8.0, seed=4)
    gaps = [b - a for a, b in itertools.pairwise(times)]
    assert times[0] == 0.0 and min(gaps) >= 0.0
    assert statistics.fmean(gaps) == pytest.approx(1 / 8.0, rel=0.06)
    # Exponential gaps: the standard deviation equals the mean.
    assert statistics.pstdev(gaps) == pytest.approx(1 / 8.0, rel=0.1)
    assert arrival_times(5, math.inf, seed=0) == [0.0] * 5


def test_goodput_counts_only_requests_within_every_objective() -> None:
    fast = RequestResult(ok=True, ttft=0.1, e2e=1.0, output_tokens=11)  # tpot 90 ms
    slow_start = RequestResult(ok=True, ttft=0.9, e2e=1.8, output_tokens=11)
    failed = RequestResult(ok=False, error="boom")
    run = RunResult("ours c=3", 3, [fast, slow_start, failed], wall=2.0)
    summary = summarize(run, 11, parse_slos(["ttft:500", "tpot:100"]))
    assert summary["completed"] == 2 and summary["failed"] == 1
    assert summary["req_s"] == 1.0
    assert summary["goodput_req_s"] == 0.5
    assert summarize(run, 11)["goodput_req_s"] is None


@pytest.mark.parametrize("bad", ["ttft", "latency:5", "tpot:abc"])
def test_bad_objectives_are_refused(bad: str) -> None:
    with pytest.raises(ValueError):
        parse_slos([bad])


def test_prompt_files_take_json_lines_or_plain_lines_and_cycle(tmp_path: Path) -> None:
    path = tmp_path / "prompts.jsonl"
    path.write_text('{"prompt": "first"}\n\nsecond, as plain text\n')
    prompts = file_prompts(path, 3, seed=10)
    expected = [("first", 10), ("second, as plain text", 11), ("first", 12)]
    assert [(p.text, p.seed) for p in prompts] == expected


def test_the_grpc_worker_is_a_target_compared_with_the_embedded_server_per_level() -> None:
    args = parse_args(["--targets", "ours,ours-grpc", "--concurrency", "1,8"])
    assert args.target_list == ["ours", "ours-grpc"] and args.levels == [1, 8]
    levels = [
        {"target": target, "concurrency": c, "output_tok_s": tok_s}
        for target, c, tok_s in [("ours", 1, 150.0), ("ours-grpc", 1, 120.0), ("ours", 8, 250.0)]
    ]
    assert ratio(levels, "ours-grpc", "ours", 1) == {"concurrency": 1, "ours-grpc": 120.0, "ours": 150.0,
                                                     "ratio": 0.8}  # fmt: skip
    assert ratio(levels, "ours-grpc", "ours", 8) is None  # not run through the worker at that level


def test_peer_overrides_replace_request_fields() -> None:
    body = request_body("m", Prompt(0, "hi", 1), 16, {"model": "other", "n_probs": 0})
    assert body["model"] == "other" and body["n_probs"] == 0 and body["max_tokens"] == 16


def test_teacher_forced_agreement_reads_the_continuation_a_model_itself_generated() -> None:
    """A model agrees with its own greedy continuation at every position; with one made of a token it never
    predicts (<unk>) at none."""
    chat = configured_chat_model(None, "float32")
    model = chat.build(None, torch.float32)
    prompts = [chat.tokenizer.encode("The capital of France is")]
    params = SamplingParams(12, temperature=0.0, ignore_eos=True)
    engine = quantization.make_engine(model, chat.tokenizer, chat.device, torch.float32)
    own = quantization.greedy(engine, prompts, params)
    assert quality.teacher_forced(model, prompts, own, chat.device, torch.float32) == 1.0
    unknown = [[chat.tokenizer.unk_token_id] * len(own[0])]
    assert quality.teacher_forced(model, prompts, unknown, chat.device, torch.float32) == 0.0
    assert quality.free_running(own, own) == 1.0 and quality.free_running(own, unknown) == 0.0


@pytest.fixture()
def fbgemm() -> Iterator[None]:
    before = torch.backends.quantized.engine
    torch.backends.quantized.engine = "fbgemm"
    yield
    torch.backends.quantized.engine = before


@pytest.mark.usefixtures("fbgemm")
@pytest.mark.parametrize(
    ("granularity", "kind"),
    [("tensor", torch.ao.nn.quantized.dynamic.Linear), ("token", dynamic_int8_prefill.PerTokenInt8Linear)],
)
def test_int8_activations_replace_every_linear_but_the_lm_head_and_stay_close(
    granularity: str, kind: type
) -> None:
    model = torch.nn.Sequential()
    model.add_module("proj", torch.nn.Linear(64, 32))
    model.add_module("lm_head", torch.nn.Linear(32, 8, bias=False))
    x = torch.randn(2, 5, 64)
    expected = model(x)
    dynamic_int8_prefill.make_int8(model, granularity)
    assert isinstance(model.proj, kind)
    assert type(model.lm_head) is torch.nn.Linear
    got = model(x)
    assert not torch.equal(got, expected)
    if granularity == "token" and not dynamic_int8_prefill.int_mm_is_exact(10, 64, 32):
        return  # int8 products saturate without VNNI: the benchmark reports it, nothing to compare
    torch.testing.assert_close(got, expected, atol=0.05, rtol=0.05)


def test_speech_clips_are_synthesized_once_then_read_back(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``asr.py --clips-file``: the first run's clips (the voice reads with random variation) are what
    later runs hear, and clips of other passages are refused rather than mixed up."""
    path = tmp_path / "clips.npz"
    texts = ["Rivers carry water to the sea.", "She bought seven apples."]
    first = asr.load_or_synthesize(texts, path)
    assert path.is_file() and len(first) == 2 and all(len(c) > 16_000 // 2 for c in first)

    def no_voice(texts: list[str]) -> list[Any]:
        raise AssertionError("the saved clips should have been read")

    monkeypatch.setattr(asr, "synthesize", no_voice)
    again = asr.load_or_synthesize(texts, path)
    assert all(np.array_equal(a, b) for a, b in zip(first, again, strict=True))
    with pytest.raises(SystemExit, match="other passages"):
        asr.load_or_synthesize([*texts[:1], "Something else entirely."], path)


def test_the_device_benchmark_runs_a_config_with_random_weights(tmp_path: Path) -> None:
    """What a GPU host runs with only a model's config and tokenizer files: here on the CPU, where the
    engine has no CUDA graphs to compare."""
    folder = write_tiny_llama(tmp_path / "tiny")
    for weights in folder.glob("*.safetensors"):
        weights.unlink()
    args = ["--model", str(folder), "--random-weights", "--device", "cpu", "--streams", "1,3"]
    args += ["--tokens", "4", "--baseline-requests", "1", "--results-dir", str(tmp_path)]
    assert device_decode.main(args) == 0
    result = json.loads((tmp_path / "device_decode-latest.json").read_text())
    assert result["cuda_graphs"] is False and result["random_weights"] is True
    assert [level["streams"] for level in result["levels"]] == [1, 3]
    assert all(level["engine_tok_s"] > 0 and "eager_tok_s" not in level for level in result["levels"])


def test_the_interleaved_comparison_times_both_checkouts_in_every_round(tmp_path: Path) -> None:
    """This checkout against itself: each round has both sides' steps, its bandwidth beside them, and a
    share of the memory-bound rate that a step could reach (no more than the rate itself)."""
    args = ["--before", ".", "--after", ".", "--rounds", "2", "--steps", "3", "--bw-mib", "64"]
    assert decode_ab.main([*args, "--results-dir", str(tmp_path)]) == 0
    result = json.loads((tmp_path / "decode-ab-latest.json").read_text())
    assert result["weight_bytes_read"]["before"] == result["weight_bytes_read"]["after"] > 50 * 2**20
    assert len(result["rounds"]) == 2
    assert result["paths"]["after"] == {"cpu_kernels": True, "layer_stack": True}
    for entry in result["rounds"]:
        assert entry["read_gb_s"] > 0
        for side in ("before", "after"):
            assert len(entry[side]["steps_ms"]) == 3 and entry[side]["step_ms"] > 0
            assert 0 < entry[side]["fraction_of_memory_bound"] < 1.5
    assert result["summary"]["after"]["decode_tok_s"] > 0


def test_a_step_splits_into_the_stack_the_head_and_the_rest(tmp_path: Path) -> None:
    """The chat model's steps through the layer stack's call, each part timed: the parts add up to the
    step, and the probe times its calls both right after a step and repeated."""
    args = ["--rounds", "2", "--steps", "3", "--probe", "2", "--results-dir", str(tmp_path)]
    assert step_parts.main(args) == 0
    result = json.loads((tmp_path / "step_parts-latest.json").read_text())
    assert len(result["rounds"]) == len(result["round_means_ms"]) == 2
    for parts in result["rounds"]:
        assert parts["stack"] > 0 and parts["head"] > 0 and parts["rest"] > 0
    for parts in result["round_means_ms"]:
        assert parts["stack"] + parts["head"] + parts["rest"] == pytest.approx(parts["step"], rel=1e-9)
    for probe in result["probe"].values():
        assert probe["after_step_us"] > 0 and probe["repeated_us"] > 0
