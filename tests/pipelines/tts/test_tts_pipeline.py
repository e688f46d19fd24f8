"""The TTS pipeline on the packaged voice: plausible speech, speed, long texts cut at sentences and joined
with Piper's silence, concurrent callers sharing forwards, and every bad input a 400."""

from __future__ import annotations

import asyncio
import math

import numpy as np
import pytest

from pipelines.tts import MAX_INPUT_CHARS, TTSPipeline, TTSPipelineConfig
from shared_engine.errors import InvalidRequest
from shared_engine.micro_batcher import MicroBatchConfig
from tests.pipelines.tts.conftest import SAMPLE_RATE, SOURCE, VOICE, license_sentences

FOX = "The quick brown fox jumps over the lazy dog."


def rms(samples: np.ndarray) -> float:
    return float(np.sqrt(np.mean(np.square(samples, dtype=np.float64))))


def test_model_facts(pipeline: TTSPipeline) -> None:
    assert pipeline.task == "tts"
    assert pipeline.sample_rate == SAMPLE_RATE
    assert pipeline.voices == [VOICE]
    assert pipeline.noise_scale == pytest.approx(0.667)
    assert pipeline.noise_w == pytest.approx(0.8)


def test_config_is_validated() -> None:
    with pytest.raises(ValueError, match="name and a source"):
        TTSPipelineConfig(name="", source=SOURCE)
    with pytest.raises(ValueError, match="intra_op_threads"):
        TTSPipelineConfig(name="x", source=SOURCE, intra_op_threads=-1)
    with pytest.raises(ValueError, match="noise_w"):
        TTSPipelineConfig(name="x", source=SOURCE, noise_w=-0.1)
    with pytest.raises(ValueError, match="sentence_silence"):
        TTSPipelineConfig(name="x", source=SOURCE, sentence_silence=-1.0)


async def test_a_sentence_sounds_like_speech(pipeline: TTSPipeline) -> None:
    audio = await pipeline.synthesize(FOX)
    assert audio.dtype == np.float32 and audio.ndim == 1
    assert 1.0 < len(audio) / SAMPLE_RATE < 6.0
    assert np.isfinite(audio).all()
    assert float(np.abs(audio).max()) <= 1.0
    assert rms(audio) > 0.02
    # speech has pauses and loud parts: the loudest 50 ms is far above the quietest
    frames = [rms(audio[i : i + 1102]) for i in range(0, len(audio) - 1102, 1102)]
    assert max(frames) > 20 * min(frames)


async def test_voice_by_name_or_default(exact: TTSPipeline) -> None:
    default = await exact.synthesize("Hello there.")
    named = await exact.synthesize("Hello there.", voice=VOICE, speed=1.0)
    assert 0.3 < len(default) / SAMPLE_RATE < 3.0
    np.testing.assert_allclose(named, default, atol=1e-5)


async def test_speed(exact: TTSPipeline) -> None:
    normal = len(await exact.synthesize(FOX, speed=1.0))
    fast = len(await exact.synthesize(FOX, speed=2.0))
    slow = len(await exact.synthesize(FOX, speed=0.5))
    assert fast < 0.7 * normal
    assert slow > 1.5 * normal


async def test_long_text_is_cut_at_sentences_and_joined(exact: TTSPipeline) -> None:
    sentences = [license_sentences(7)[i] for i in (1, 3, 4, 6)]  # the ones without a web address
    text = " ".join(sentences)
    assert len(exact.sentence_ids(text)) == len(sentences)
    whole = await exact.synthesize(text)
    parts = [await exact.synthesize(s) for s in sentences]
    silence = round(0.2 * SAMPLE_RATE)
    expected = sum(len(p) for p in parts) + silence * (len(parts) - 1)
    assert abs(len(whole) - expected) <= exact.voice.hop_length * len(parts)
    start = len(parts[0])
    assert not whole[start : start + silence].any()  # Piper's pause between sentences
    first_two = await exact.synthesize(" ".join(sentences[:2]))
    assert len(parts[0]) < len(first_two) < len(whole)
    assert len(whole) / SAMPLE_RATE > 20


async def test_concurrent_callers_share_forwards(exact: TTSPipeline) -> None:
    texts = ["Hello there.", FOX, *(license_sentences(7)[i] for i in (1, 3, 4, 6)), "One. Two, three."]
    alone = [await exact.synthesize(t) for t in texts]
    before = exact.stats()
    together = await asyncio.wait_for(asyncio.gather(*(exact.synthesize(t) for t in texts)), 120)
    after = exact.stats()
    for text, a, b in zip(texts, alone, together, strict=True):
        assert len(a) == len(b), text
        assert np.corrcoef(a, b)[0, 1] >= 0.999, text
    items = after.items - before.items
    batches = after.batches - before.batches
    assert items == len(texts) + 1  # the last text has two sentences
    assert batches < items, f"{items} sentences in {batches} batches: nothing was batched"
    assert after.queue_depth == 0


async def test_different_speeds_in_one_batch(exact: TTSPipeline) -> None:
    normal, fast = await asyncio.gather(exact.synthesize(FOX, speed=1.0), exact.synthesize(FOX, speed=2.0))
    assert len(fast) < 0.7 * len(normal)
    assert len(normal) == len(await exact.synthesize(FOX))


@pytest.mark.parametrize(
    ("text", "voice", "speed", "param", "words"),
    [
        ("", None, 1.0, "input", ["empty"]),
        (" \n\t ", None, 1.0, "input", ["empty"]),
        ("a" * (MAX_INPUT_CHARS + 1), None, 1.0, "input", [str(MAX_INPUT_CHARS), str(MAX_INPUT_CHARS + 1)]),
        ("...", None, 1.0, "input", ["nothing"]),
        ("hello", None, 0.2, "speed", ["0.25", "4.0"]),
        ("hello", None, 4.5, "speed", ["0.25", "4.0"]),
        ("hello", None, math.nan, "speed", ["0.25", "4.0"]),
        ("hello", "alloy", 1.0, "voice", ["alloy", VOICE]),
    ],
)
async def test_bad_input_is_a_400(
    pipeline: TTSPipeline, text: str, voice: str | None, speed: float, param: str, words: list[str]
) -> None:
    before = pipeline.stats().items
    with pytest.raises(InvalidRequest) as raised:
        await pipeline.synthesize(text, voice=voice, speed=speed)
    assert raised.value.param == param
    for word in words:
        assert word in str(raised.value)
    assert pipeline.stats().items == before  # nothing reached the model


async def test_longest_input_is_accepted(exact: TTSPipeline) -> None:
    text = ("Yes. " * (MAX_INPUT_CHARS // 5 + 1))[:MAX_INPUT_CHARS]
    assert len(text) == MAX_INPUT_CHARS
    ids = exact.sentence_ids(text)
    assert len(ids) > 800
    audio = await exact.synthesize(text[:100])
    assert len(audio) > 0


async def test_a_long_text_takes_turns_with_a_short_one() -> None:
    """One sentence per forward (as on a CPU): a long text's sentences go to the queue a batch at a time,
    so a short request that comes while it is spoken is served between them, not after them all."""
    started = asyncio.Event()
    loop = asyncio.get_running_loop()
    config = TTSPipelineConfig(
        name="turns", source=SOURCE, intra_op_threads=1,
        batching=MicroBatchConfig(max_batch_tokens=4096, max_batch_size=1, max_wait_ms=0.0),
    )  # fmt: skip
    pipe = TTSPipeline(config, on_batch=lambda run: loop.call_soon_threadsafe(started.set))
    finished: list[str] = []

    async def say(label: str, text: str) -> None:
        await pipe.synthesize(text)
        finished.append(label)

    try:
        long = asyncio.create_task(say("long", " ".join(license_sentences(12))))
        await asyncio.wait_for(started.wait(), 120)  # its first sentence is spoken; eleven wait
        await say("short", "Hello there.")
        await long
    finally:
        pipe.shutdown()
    assert finished == ["short", "long"]


async def test_speed_scales_the_pause_between_sentences(exact: TTSPipeline) -> None:
    one = await exact.synthesize(FOX)
    two = await exact.synthesize(f"{FOX} {FOX}")
    fast_one = await exact.synthesize(FOX, speed=2.0)
    fast_two = await exact.synthesize(f"{FOX} {FOX}", speed=2.0)
    pause = exact.config.sentence_silence * SAMPLE_RATE
    assert len(two) - 2 * len(one) == round(pause)
    assert len(fast_two) - 2 * len(fast_one) == round(pause / 2)
