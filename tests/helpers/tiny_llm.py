"""A small Llama with random weights and a byte-level BPE tokenizer, written as a Hugging Face folder.

For tests that must run where the packaged model is not installed (a GPU host with only the project's
code): the engine's machinery does not care what the weights mean. The tokenizer is trained, in a
second, on the source of Python's own ``argparse`` and ``json`` modules, which every Python ships.
"""

from __future__ import annotations

import argparse
import json
import json.decoder
import json.encoder
import json.scanner
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from shared_engine.config import EngineConfig
from shared_engine.llm_engine import LLMEngine
from shared_engine.models import MODEL_REGISTRY
from shared_engine.models.loader import arch_from_hf_config

SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def _corpus() -> list[str]:
    lines: list[str] = []
    for module in (argparse, json, json.decoder, json.encoder, json.scanner):
        assert module.__file__ is not None
        lines.extend(Path(module.__file__).read_text(encoding="utf-8").splitlines())
    return lines


def tiny_tokenizer(vocab_size: int = 2048) -> PreTrainedTokenizerFast:
    """Byte-level BPE (any text encodes), ChatML special tokens and chat template."""
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    bpe.train_from_iterator(_corpus(), trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=bpe, bos_token="<|im_start|>", eos_token="<|im_end|>", pad_token="<|endoftext|>"
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def write_tiny_llama(folder: Path, *, layers: int = 4, seed: int = 0) -> Path:
    """A random LlamaForCausalLM (GQA, tied embeddings) with :func:`tiny_tokenizer`, saved to ``folder``.

    ``initializer_range`` is wide so that greedy choices are clear-cut: float32 rounding differences
    between two correct implementations then never flip an argmax.
    """
    tokenizer = tiny_tokenizer()
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=128, intermediate_size=256, num_hidden_layers=layers,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024, tie_word_embeddings=True,
        initializer_range=0.1, bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )  # fmt: skip
    torch.manual_seed(seed)
    LlamaForCausalLM(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    (folder / "generation_config.json").write_text(json.dumps({"eos_token_id": tokenizer.eos_token_id}))
    return folder


def tiny_engine(tokenizer_folder: Path, config: EngineConfig) -> LLMEngine:
    """A 2-layer random Llama with the folder's tokenizer, on the CPU: the real engine, fast steps."""
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_folder)
    cfg = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
    )  # fmt: skip
    cfg.architectures = ["LlamaForCausalLM"]
    torch.manual_seed(0)
    arch = arch_from_hf_config(cfg)
    model = MODEL_REGISTRY.get(arch.architecture)(arch).eval()
    return LLMEngine(model, tokenizer, config, torch.device("cpu"), torch.float32, frozenset())
