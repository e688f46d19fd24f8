"""Whisper's decoder on the engine (paged self-attention, per-request cross-attention state) gives
exactly transformers' greedy tokens, alone, batched with other audio, across preemptions and with
logits processors; and the engine refuses what an encoder-decoder cannot serve."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
import torch
from transformers import WhisperConfig, WhisperForConditionalGeneration

from shared_engine import cpu_kernels
from shared_engine.config import CacheConfig, EngineConfig, SchedulerConfig
from shared_engine.errors import InvalidRequest
from shared_engine.llm_engine import LLMEngine
from shared_engine.model_runner import ModelRunner, Segment
from shared_engine.models.loader import build_decoder, iter_safetensors
from shared_engine.models.whisper import CrossAttentionState, WhisperDecoder
from shared_engine.outputs import RequestOutput, TokenLogprob
from shared_engine.quantization_config import QuantizationConfig
from shared_engine.sampling_params import SamplingParams

VOCAB, FRAMES, MAX_NEW = 300, 40, 14
PROMPTS = [[250, 251, 252], [250, 253], [250, 251, 252, 254, 7, 8]]


class _NoTokenizer:
    """The engine's detokenizer needs decode/convert calls; these tests only read token ids."""

    def decode(self, ids: Sequence[int], **_: Any) -> str:
        return " ".join(str(i) for i in ids)

    def convert_ids_to_tokens(self, ids: Sequence[int]) -> list[str]:
        return [str(i) for i in ids]

    def convert_tokens_to_string(self, tokens: Sequence[str]) -> str:
        return " ".join(tokens)

    all_special_ids: list[int] = []


@pytest.fixture(scope="module")
def whisper_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    config = WhisperConfig(
        vocab_size=VOCAB,
        d_model=64,
        encoder_layers=2,
        decoder_layers=2,
        encoder_attention_heads=4,
        decoder_attention_heads=4,
        encoder_ffn_dim=128,
        decoder_ffn_dim=128,
        num_mel_bins=8,
        max_source_positions=FRAMES,
        max_target_positions=64,
        decoder_start_token_id=250,
        pad_token_id=0,
        eos_token_id=1,
        bos_token_id=1,
    )
    torch.manual_seed(0)
    model = WhisperForConditionalGeneration(config).eval()
    with torch.no_grad():
        # Larger weights than the default init, so greedy paths depend on audio and history
        # instead of repeating one token.
        for name, p in model.named_parameters():
            if "layer_norm" not in name:
                p.normal_(0, 0.3)
    folder = tmp_path_factory.mktemp("whisper") / "model"
    model.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def hf_model(whisper_folder: Path) -> WhisperForConditionalGeneration:
    return WhisperForConditionalGeneration.from_pretrained(whisper_folder, dtype=torch.float32).eval()


@pytest.fixture(scope="module")
def encoder_hidden(hf_model: WhisperForConditionalGeneration) -> torch.Tensor:
    torch.manual_seed(1)
    features = torch.randn(len(PROMPTS), 8, 2 * FRAMES)
    with torch.no_grad():
        return hf_model.model.encoder(features).last_hidden_state


def _reference(hf: WhisperForConditionalGeneration, hidden: torch.Tensor, prompt: list[int]) -> list[int]:
    ids = list(prompt)
    with torch.no_grad():
        for _ in range(MAX_NEW):
            logits = hf(encoder_outputs=(hidden[None],), decoder_input_ids=torch.tensor([ids])).logits
            ids.append(int(logits[0, -1].argmax()))
    return ids[len(prompt) :]


def _engine(
    folder: Path, num_blocks: int = 64, max_seqs: int = 8, quantization: QuantizationConfig | None = None
) -> tuple[LLMEngine, WhisperDecoder]:
    from transformers import AutoConfig

    model = build_decoder(
        AutoConfig.from_pretrained(folder), iter_safetensors(folder), torch.device("cpu"), torch.float32,
        quantization,
    )  # fmt: skip
    assert isinstance(model, WhisperDecoder)
    config = EngineConfig(
        cache=CacheConfig(block_size=4, num_blocks=num_blocks),
        scheduler=SchedulerConfig(max_num_seqs=max_seqs, max_num_batched_tokens=64),
    )
    engine = LLMEngine(model, _NoTokenizer(), config, torch.device("cpu"), torch.float32, frozenset())
    return engine, model


def _outputs(
    engine: LLMEngine, states: list[CrossAttentionState], params: SamplingParams, tag: str = "r"
) -> list[list[RequestOutput]]:
    """Each prompt's outputs, run to the end with its encoder state."""
    for i, (prompt, state) in enumerate(zip(PROMPTS, states, strict=True)):
        engine.add_request(f"{tag}{i}", prompt, params, encoder_state=state)
    outputs: dict[str, list[RequestOutput]] = {f"{tag}{i}": [] for i in range(len(PROMPTS))}
    while engine.has_unfinished_requests():
        for out in engine.step():
            outputs[out.request_id].append(out)
    return list(outputs.values())


def _run(engine: LLMEngine, states: list[CrossAttentionState], params: SamplingParams) -> list[list[int]]:
    return [[t for out in outs for t in out.token_ids] for outs in _outputs(engine, states, params)]


GREEDY = SamplingParams(max_tokens=MAX_NEW, temperature=0.0, ignore_eos=True)


@pytest.mark.parametrize("kernels", [True, False], ids=["cpu-kernels", "composite"])
def test_batched_greedy_equals_transformers(
    whisper_folder: Path,
    hf_model: WhisperForConditionalGeneration,
    encoder_hidden: torch.Tensor,
    kernels: bool,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Decode rows attend to the encoder through the paged-attention kernel where it is built, through
    # scaled_dot_product_attention elsewhere (and on CUDA): both must give transformers' tokens.
    if not kernels:
        monkeypatch.setattr(cpu_kernels, "usable", lambda device: False)
    expected = [_reference(hf_model, encoder_hidden[i], p) for i, p in enumerate(PROMPTS)]
    assert len({tuple(e) for e in expected}) == len(PROMPTS), "the audio inputs should lead apart"
    assert all(len(set(e)) > 3 for e in expected), "greedy paths should not just repeat a token"
    engine, model = _engine(whisper_folder)
    assert not engine.kv.enable_prefix_caching  # token hashes cannot see the audio
    states = model.cross_attention_kv(encoder_hidden)
    assert _run(engine, states, GREEDY) == expected


# What models.toml configures for the packaged Whisper models: int8 projections and head on torch's
# weight-only kernel, float weights kept for larger steps.
INT8_FLOAT_INPUTS = QuantizationConfig("int8", lm_head=True, keep_float=True, activations="float")


@pytest.mark.parametrize("quantization", [None, INT8_FLOAT_INPUTS], ids=["float32", "int8"])
def test_decode_steps_through_the_layers_kernel_equal_the_modules(
    whisper_folder: Path, encoder_hidden: torch.Tensor, quantization: QuantizationConfig | None
) -> None:
    """The same tokens and log-probabilities with the decode-only steps in one kernel call as through the
    modules; the prompts' steps go through the modules either way."""
    params = SamplingParams(max_tokens=MAX_NEW, temperature=0.0, ignore_eos=True, logprobs=3)
    engine, model = _engine(whisper_folder, quantization=quantization)
    assert model.decode_layers is not None
    layer_calls = []
    model.decoder.layers[0].register_forward_hook(lambda *args: layer_calls.append(1))
    states = model.cross_attention_kv(encoder_hidden)

    def run(fused: bool) -> list[list[TokenLogprob]]:
        model.fused_decode = fused
        outputs = _outputs(engine, states, params, tag=str(fused))
        return [[lp for out in outs for lp in out.logprobs] for outs in outputs]

    fused = run(True)
    prompt_steps = len(layer_calls)
    assert 1 <= prompt_steps < 4  # the prompts' steps only (three prompts of at most 64 tokens together)
    assert run(False) == fused
    assert len(layer_calls) - prompt_steps >= MAX_NEW  # every step, through the modules


@pytest.mark.parametrize("kernels", [True, False], ids=["cpu-kernels", "composite"])
def test_cross_attention_states_in_bfloat16_stay_close_to_float32(
    whisper_folder: Path, encoder_hidden: torch.Tensor, kernels: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What the speech pipeline stores under a float32 model's bfloat16 KV cache: the prompts' and a
    decode step's hidden states within bfloat16 rounding of the float32 states' (this test model's large
    weights turn that rounding into other greedy tokens after a few steps; the pipeline's transcription
    tests check the real models' words)."""
    if not kernels:
        monkeypatch.setattr(cpu_kernels, "usable", lambda device: False)
    _, model = _engine(whisper_folder)
    hidden = {}
    for dtype in (torch.float32, torch.bfloat16):
        states = model.cross_attention_kv(encoder_hidden, dtype)
        assert all(kv.dtype == dtype for kv in states[0].kv)
        runner = ModelRunner(model, 8, 4, torch.device("cpu"), torch.float32)
        pairs = enumerate(zip(PROMPTS, states, strict=True))
        segments = [Segment([2 * i, 2 * i + 1], 0, p[:2], s) for i, (p, s) in pairs]
        prompts, _ = runner.forward(segments)
        decodes, _ = runner.forward([Segment(s.block_ids, 2, [7], s.encoder_state) for s in segments])
        hidden[dtype] = torch.cat([prompts, decodes])
    error = (hidden[torch.bfloat16] - hidden[torch.float32]).norm() / hidden[torch.float32].norm()
    assert 0 < error < 1e-2


def test_preemption_keeps_cross_attention_state(
    whisper_folder: Path, hf_model: WhisperForConditionalGeneration, encoder_hidden: torch.Tensor
) -> None:
    expected = [_reference(hf_model, encoder_hidden[i], p) for i, p in enumerate(PROMPTS)]
    engine, model = _engine(whisper_folder, num_blocks=9)
    assert _run(engine, model.cross_attention_kv(encoder_hidden), GREEDY) == expected
    assert engine.stats().num_preemptions > 0


def test_logits_processor_sees_outputs_and_steers(whisper_folder: Path, encoder_hidden: torch.Tensor) -> None:
    seen: list[list[int]] = []

    def only_even(outputs: Sequence[int], logits: torch.Tensor) -> None:
        seen.append(list(outputs))
        logits[1::2] = float("-inf")

    engine, model = _engine(whisper_folder)
    params = SamplingParams(max_tokens=5, temperature=0.0, ignore_eos=True, logits_processors=(only_even,))
    out = _run(engine, model.cross_attention_kv(encoder_hidden), params)
    assert all(t % 2 == 0 for tokens in out for t in tokens)
    assert [] in seen and any(len(s) == 4 for s in seen)


def test_requests_without_encoder_state_are_refused(whisper_folder: Path) -> None:
    engine, _ = _engine(whisper_folder)
    with pytest.raises(InvalidRequest, match="needs encoder output"):
        engine.add_request("x", [250], GREEDY)
