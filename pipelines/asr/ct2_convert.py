"""Convert a CTranslate2 Whisper model folder into a Hugging Face ``WhisperForConditionalGeneration`` folder.

The source is what ctranslate2's converter writes: ``model.bin`` (possibly split into parts that
concatenate to it), ``config.json`` (suppressed tokens, language ids, alignment heads),
``tokenizer.json`` and ``vocabulary.txt``. The output loads offline with ``from_pretrained`` and
``WhisperProcessor.from_pretrained``.
"""

from __future__ import annotations

import argparse
import json
import logging
import re
import shutil
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from safetensors.numpy import save_file
from tokenizers import AddedToken, Tokenizer
from transformers import GenerationConfig, WhisperFeatureExtractor, WhisperTokenizer

from pipelines.asr.ct2_format import CT2Model, read_ct2_model
from pipelines.asr.ct2_whisper import num_layers, whisper_config, whisper_state_dict

__all__ = ["CT2Model", "convert_ct2_whisper", "main", "read_ct2_model"]

logger = logging.getLogger(__name__)

MARKER = "ct2_conversion.json"  # written last: its presence means the folder is complete
SAMPLING_RATE = 16_000
HOP_LENGTH = 160
EOT, SOT, NO_TIMESTAMPS = "<|endoftext|>", "<|startoftranscript|>", "<|notimestamps|>"
TASKS = ("translate", "transcribe")
NO_SPEECH = ("<|nocaptions|>", "<|nospeech|>")  # the name changed in later Whisper releases
_REQUIRED = (EOT, SOT, NO_TIMESTAMPS, "<|startofprev|>", "<|translate|>", "<|transcribe|>")
_TIMESTAMP = re.compile(r"<\|\d+\.\d\d\|>")


def _read_vocabulary(src_dir: Path) -> list[str]:
    """CTranslate2's id -> token table (``vocabulary.json`` or one token per line of ``vocabulary.txt``)."""
    if (src_dir / "vocabulary.json").is_file():
        tokens: list[str] = json.loads((src_dir / "vocabulary.json").read_text(encoding="utf-8"))
        return tokens
    # Split on "\n" only, as CTranslate2 reads it; an empty line is a token (multilingual Whisper has "").
    lines = (src_dir / "vocabulary.txt").read_text(encoding="utf-8").split("\n")
    return lines[:-1] if lines and lines[-1] == "" else lines


def _check_special_layout(vocab: list[str], specials: list[str]) -> None:
    """Whisper's runtimes find tokens by position: no-speech just before ``<|notimestamps|>`` and
    timestamps just after it (and after every special token, for Hugging Face's decoding)."""
    if missing := [t for t in _REQUIRED if t not in specials]:
        raise ValueError(f"tokenizer.json lacks Whisper's special tokens {missing}")
    no_ts = vocab.index(NO_TIMESTAMPS)
    if vocab[no_ts - 1] not in NO_SPEECH or specials[-1] != NO_TIMESTAMPS:
        raise ValueError(f"expected {' or '.join(NO_SPEECH)}, then {NO_TIMESTAMPS} as the last special token")
    if vocab[no_ts + 1 : no_ts + 2] not in ([], ["<|0.00|>"]):
        raise ValueError(f"expected <|0.00|> right after {NO_TIMESTAMPS}, got {vocab[no_ts + 1]!r}")


def build_tokenizer(src_dir: Path, vocab_size: int) -> WhisperTokenizer:
    """A ``WhisperTokenizer`` from ``tokenizer.json`` whose ids match CTranslate2's vocabulary.

    The added tokens flagged special there (``<|endoftext|>`` ... ``<|notimestamps|>``) become special
    tokens; the vocabulary's remaining entries (``<|0.00|>`` ... ``<|30.00|>``) become plain added tokens,
    after the specials, where Whisper's tokenizer looks for timestamps.
    """
    vocab = _read_vocabulary(src_dir)
    if len(vocab) != vocab_size:
        raise ValueError(f"the vocabulary has {len(vocab)} tokens but the model's embedding {vocab_size}")
    backend = Tokenizer.from_file(str(src_dir / "tokenizer.json"))
    known = sorted(backend.get_vocab(with_added_tokens=True).items(), key=lambda item: item[1])
    if [token for token, _ in known] != vocab[: len(known)]:
        raise ValueError("tokenizer.json and the CTranslate2 vocabulary disagree on token ids")
    added = sorted(backend.get_added_tokens_decoder().items())
    specials = [t.content for _, t in added if t.special and not _TIMESTAMP.fullmatch(t.content)]
    _check_special_layout(vocab, specials)
    backend.add_tokens([AddedToken(t, special=False, normalized=False) for t in vocab[len(known) :]])
    return WhisperTokenizer(
        tokenizer_object=backend,
        unk_token=EOT,
        bos_token=EOT,
        eos_token=EOT,
        pad_token=EOT,
        extra_special_tokens=[t for t in specials if t != EOT],
        model_max_length=1024,
    )


def _token_ids(tokenizer: WhisperTokenizer, ct2_config: dict[str, Any]) -> dict[str, Any]:
    """Token-id settings shared by the model config and the generation config."""
    vocab = tokenizer.get_vocab()
    eot, sot = vocab[EOT], vocab[SOT]
    return {
        "bos_token_id": eot,
        "eos_token_id": eot,
        "pad_token_id": eot,
        "decoder_start_token_id": sot,
        "suppress_tokens": list(ct2_config.get("suppress_ids") or []),
        "begin_suppress_tokens": list(ct2_config.get("suppress_ids_begin") or []),
    }


def _language_settings(tokenizer: WhisperTokenizer, ct2_config: dict[str, Any]) -> dict[str, Any]:
    """``is_multilingual`` and, for multilingual models only, ``lang_to_id``/``task_to_id``.

    CTranslate2 calls a model multilingual when its vocabulary has the empty token. English-only
    models get no ``lang_to_id``: its presence makes ``generate`` detect a language.
    """
    vocab = tokenizer.get_vocab()
    if "" not in vocab:
        return {"is_multilingual": False}
    sot, translate = vocab[SOT], vocab["<|translate|>"]
    # Language tokens sit between <|startoftranscript|> and <|translate|>.
    lang_ids = list(ct2_config.get("lang_ids") or range(sot + 1, translate))
    if any(not (sot < i < translate) for i in lang_ids):
        raise ValueError(f"config.json lang_ids {lang_ids} are not all language tokens")
    return {
        "is_multilingual": True,
        "lang_to_id": dict(zip(tokenizer.convert_ids_to_tokens(lang_ids), lang_ids, strict=True)),
        "task_to_id": {task: vocab[f"<|{task}|>"] for task in TASKS},
    }


def generation_config(
    model: CT2Model, tokenizer: WhisperTokenizer, ct2_config: dict[str, Any]
) -> GenerationConfig:
    """Whisper's decoding settings: CTranslate2's ``config.json`` plus ids looked up in the tokenizer."""
    heads = ct2_config.get("alignment_heads")
    if not heads:  # ctranslate2's converter default: every head of the second half of the decoder
        layers, n_heads = num_layers(model, "decoder"), int(model.scalar("decoder/num_heads"))
        heads = [[layer, head] for layer in range(layers // 2, layers) for head in range(n_heads)]
    vocab = tokenizer.get_vocab()
    return GenerationConfig(
        **_token_ids(tokenizer, ct2_config),
        **_language_settings(tokenizer, ct2_config),
        alignment_heads=[list(pair) for pair in heads],
        no_timestamps_token_id=vocab[NO_TIMESTAMPS],
        prev_sot_token_id=vocab["<|startofprev|>"],
        max_initial_timestamp_index=50,
        max_length=model.get("decoder/position_encodings/encodings").shape[0],
        return_timestamps=False,
    )


def _read_weights(paths: Sequence[Path]) -> bytearray:
    """The files' bytes, concatenated into one buffer without an intermediate copy per part."""
    sizes = [p.stat().st_size for p in paths]
    data = bytearray(sum(sizes))
    view, start = memoryview(data), 0
    for path, size in zip(paths, sizes, strict=True):
        with path.open("rb") as f:
            if f.readinto(view[start : start + size]) != size:
                raise ValueError(f"{path} changed size while being read")
        start += size
    return data


def _write_folder(src_dir: Path, out: Path, weight_parts: Sequence[Path]) -> None:
    model = read_ct2_model(_read_weights(weight_parts or [src_dir / "model.bin"]))
    tensors = whisper_state_dict(model)
    ct2_config = json.loads((src_dir / "config.json").read_text(encoding="utf-8"))
    tokenizer = build_tokenizer(src_dir, model.get("decoder/embeddings/weight").shape[0])
    config = whisper_config(model, _token_ids(tokenizer, ct2_config))
    # float32 is what the model runs in on CPU (dtype="auto" reads it from here); the file keeps
    # the source precision, usually float16: upcasting at load time is exact, and storing float32
    # would double the folder without adding information. Dequantized int8/int16 weights are float32.
    dtype = np.result_type(*tensors.values())
    config.dtype = "float32"
    config.save_pretrained(out)
    weights = out / "model.safetensors"
    save_file({k: np.ascontiguousarray(v, dtype) for k, v in tensors.items()}, weights, {"format": "pt"})
    weights.chmod((out / "config.json").stat().st_mode)  # safetensors creates it owner-only
    generation_config(model, tokenizer, ct2_config).save_pretrained(out)
    tokenizer.save_pretrained(out)
    frames = 2 * config.max_source_positions  # conv2 has stride 2
    WhisperFeatureExtractor(
        feature_size=config.num_mel_bins,
        sampling_rate=SAMPLING_RATE,
        hop_length=HOP_LENGTH,
        chunk_length=frames * HOP_LENGTH // SAMPLING_RATE,
    ).save_pretrained(out)
    marker = {
        "source": str(src_dir.resolve()),
        "weight_parts": [str(p.resolve()) for p in weight_parts],
        "spec": f"{model.spec_name} revision {model.spec_revision}",
        "binary_version": model.binary_version,
        "stored_dtype": str(dtype),
    }
    (out / MARKER).write_text(json.dumps(marker, indent=2) + "\n", encoding="utf-8")


def is_converted(folder: Path) -> bool:
    """Whether ``folder`` holds a completed conversion."""
    return (folder / MARKER).is_file()


def convert_ct2_whisper(src_dir: Path, dst_dir: Path, weight_parts: Sequence[Path] = ()) -> Path:
    """Convert the CTranslate2 Whisper folder ``src_dir`` into ``dst_dir`` (once) and return ``dst_dir``.

    ``weight_parts``, if given, are files whose concatenation is ``model.bin``. The folder is written
    next to ``dst_dir`` and renamed into place, so it appears complete or not at all.
    """
    src_dir, dst_dir, parts = Path(src_dir), Path(dst_dir), [Path(p) for p in weight_parts]
    if is_converted(dst_dir):
        return dst_dir
    if dst_dir.exists() and any(dst_dir.iterdir()):
        raise FileExistsError(f"{dst_dir} exists and is not a finished conversion; remove it first")
    logger.info("converting CTranslate2 Whisper %s into %s", src_dir, dst_dir)
    dst_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst_dir.with_name(f".{dst_dir.name}.{uuid.uuid4().hex[:8]}.partial")
    tmp.mkdir()
    try:
        _write_folder(src_dir, tmp, parts)
        try:
            tmp.rename(dst_dir)  # replaces an empty dst_dir, fails on a non-empty one
        except OSError:
            if not is_converted(dst_dir):  # else a concurrent conversion finished first
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return dst_dir


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m pipelines.asr.ct2_convert SRC DST [--parts P1 P2 ...]``."""
    parser = argparse.ArgumentParser(
        prog="python -m pipelines.asr.ct2_convert",
        description="Convert a CTranslate2 Whisper folder into a Hugging Face folder.",
    )
    parser.add_argument("src", type=Path, help="folder with config.json, tokenizer.json, vocabulary.txt")
    parser.add_argument("dst", type=Path, help="output folder (left as is if already converted)")
    parser.add_argument(
        "--parts", type=Path, nargs="+", default=[], help="files that concatenate to model.bin, in order"
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    print(convert_ct2_whisper(args.src, args.dst, args.parts))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
