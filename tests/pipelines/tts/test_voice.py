"""The Piper voice on onnxruntime: Piper's phoneme ids, a padded batch giving each sentence the same
samples as synthesizing it alone, and a user's own voice folder or file loading through the same code."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from pipelines.sources import resolve_source
from pipelines.tts import PiperVoice, TTSPipeline
from pipelines.tts.voice import voice_files
from tests.pipelines.tts.conftest import SAMPLE_RATE, SOURCE, VOICE, license_sentences

BOS, PAD, EOS = 1, 0, 2


def test_voice_facts(exact: TTSPipeline) -> None:
    voice = exact.voice
    assert voice.name == VOICE
    assert voice.sample_rate == SAMPLE_RATE
    assert voice.speakers == {VOICE: 0}
    assert not voice.has_speaker_input
    assert voice.config.espeak_voice == "en-us"
    assert (voice.config.noise_scale, voice.config.length_scale, voice.config.noise_w) == (0.667, 1.0, 0.8)
    assert voice.supports_batching and voice.hop_length == 256


def test_phoneme_ids(exact: TTSPipeline) -> None:
    voice = exact.voice
    id_map = voice.config.phoneme_id_map
    ids = voice.phoneme_ids("hə,")
    assert ids == [BOS, PAD, *id_map["h"], PAD, *id_map["ə"], PAD, *id_map[","], PAD, EOS]
    assert voice.phoneme_ids("h\U0001f600ə") == voice.phoneme_ids("hə")  # unknown phonemes skipped
    assert voice.phoneme_ids("") == [BOS, PAD, EOS]


def test_batch_matches_one_by_one(exact: TTSPipeline) -> None:
    voice = exact.voice
    sentences = [license_sentences(7)[i] for i in (1, 3, 4, 6)]  # the ones without a web address
    ids = [exact.sentence_ids(s)[0] for s in sentences]
    assert len({len(x) for x in ids}) == len(ids), "want padding: sentences of different lengths"
    alone = [voice.synthesize_ids([x], 1.0, 0.0, 0.0)[0] for x in ids]
    together = voice.synthesize_ids(ids, 1.0, 0.0, 0.0)
    for sentence, a, b in zip(sentences, alone, together, strict=True):
        assert a.dtype == b.dtype == np.float32
        assert abs(len(a) - len(b)) <= voice.hop_length, sentence
        n = min(len(a), len(b))
        assert np.corrcoef(a[:n], b[:n])[0, 1] >= 0.9999, sentence
        assert float(np.abs(a[:n] - b[:n]).max()) < 1e-2, sentence
    longest = max(range(len(ids)), key=lambda i: len(together[i]))
    assert min(len(x) for x in together) < len(together[longest])  # the padding was cut off


def test_length_scale_stretches(exact: TTSPipeline) -> None:
    ids = exact.sentence_ids("The quick brown fox jumps over the lazy dog.")[0]
    normal, slow = (exact.voice.synthesize_ids([ids], scale, 0.0, 0.0)[0] for scale in (1.0, 2.0))
    assert 1.5 < len(slow) / len(normal) < 2.2  # durations are rounded up per phoneme


@pytest.fixture(scope="module")
def own_voice(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A user's voice folder: the packaged files linked under another name."""
    model, config = voice_files(resolve_source(SOURCE))
    folder = tmp_path_factory.mktemp("my-voice")
    (folder / "en_US-mine-medium.onnx").symlink_to(model)
    (folder / "en_US-mine-medium.onnx.json").symlink_to(config)
    return folder


def test_own_voice_folder_and_file(own_voice: Path, exact: TTSPipeline) -> None:
    ids = exact.sentence_ids("Hello there.")[0]
    reference = exact.voice.synthesize_ids([ids], 1.0, 0.0, 0.0)[0]
    for path in (own_voice, own_voice / "en_US-mine-medium.onnx"):
        voice = PiperVoice(path, device="cpu", intra_op_threads=1)
        assert voice.name == VOICE and voice.sample_rate == SAMPLE_RATE
        audio = voice.synthesize_ids([ids], 1.0, 0.0, 0.0)[0]
        assert len(audio) == len(reference)
        assert np.corrcoef(audio, reference)[0, 1] >= 0.9999


def test_not_a_voice(tmp_path: Path, own_voice: Path) -> None:
    with pytest.raises(ValueError, match=r"exactly one \.onnx"):
        voice_files(tmp_path)
    lone = tmp_path / "lone.onnx"
    lone.symlink_to(own_voice / "en_US-mine-medium.onnx")
    with pytest.raises(ValueError, match="not a Piper voice"):
        voice_files(lone)
    with pytest.raises(ValueError, match="not a Piper voice"):
        voice_files(own_voice / "en_US-mine-medium.onnx.json")
