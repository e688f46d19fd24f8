"""Transcription options of a real server, end to end with the real models: `timestamp_granularities`
(word timestamps, as the openai SDK sends them, and its refusals), `no_speech_prob` in verbose_json,
and translation without `model` (the first multilingual speech model)."""

from __future__ import annotations

from typing import Any

import httpx
import numpy as np
import openai
import pytest

from tests.helpers.api import error_of
from tests.services.test_audio_api import (
    BASE,
    MAX_CLIP_WER,
    TINY,
    Clip,
    edit_distance,
    join,
    post_audio,
    synthesize,
    wer,
    words,
)

FIRST = "The quick brown fox jumps over the lazy dog."
SECOND = "Please call the office before noon tomorrow."
GAP_S = 2.0
# How far a word's time may stray into the silence between the sentences: Piper's audio has a little
# silence of its own around a sentence, and alignment is to a frame or two.
SLACK_S = 0.6


@pytest.fixture(scope="module")
def sentences(client: openai.OpenAI) -> tuple[Clip, Clip]:
    return synthesize(client, FIRST), synthesize(client, SECOND)


@pytest.fixture(scope="module")
def two(sentences: tuple[Clip, Clip]) -> Clip:
    """FIRST, two seconds of silence, SECOND."""
    return join(sentences, GAP_S)


def _check_words(body: dict[str, Any], first: Clip) -> None:
    """Every word of the transcript once and in time, each on its sentence's side of the silence."""
    found = body["words"]
    assert [w["word"] for w in found] == body["text"].split(), found
    assert set(found[0]) == {"word", "start", "end"}
    end = 0.0
    for w in found:
        assert end - 1e-6 <= w["start"] <= w["end"] <= body["duration"] + 1e-6, found
        end = w["end"]
    before = [w["word"] for w in found if w["end"] <= first.duration + SLACK_S]
    after = [w["word"] for w in found if w["start"] >= first.duration + GAP_S - SLACK_S]
    assert len(before) + len(after) == len(found), found
    assert len(before) in _best_splits([w["word"] for w in found]), found


def _best_splits(heard: list[str]) -> set[int]:
    """Where the transcript's words split best into FIRST and SECOND: the split the timestamps make must
    be one of these, whatever words the model misheard (tiny.en hears "noon" as "and in" on some CPUs)."""
    errors = [
        edit_distance(words(FIRST), words(" ".join(heard[:k])))
        + edit_distance(words(SECOND), words(" ".join(heard[k:])))
        for k in range(len(heard) + 1)
    ]
    return {k for k, e in enumerate(errors) if e == min(errors)}


@pytest.mark.parametrize("model", [TINY, BASE])
def test_word_timestamps_through_the_sdk(
    client: openai.OpenAI, two: Clip, sentences: tuple[Clip, Clip], model: str
) -> None:
    result = client.audio.transcriptions.create(
        model=model,
        file=("two.wav", two.wav),
        response_format="verbose_json",
        timestamp_granularities=["word"],
    )
    body = result.model_dump()
    assert body["segments"] is None  # only words were asked for, as OpenAI answers
    assert wer(two.text, body["text"]) <= MAX_CLIP_WER, body["text"]
    _check_words(body, sentences[0])


def test_word_and_segment_granularities_together(http: httpx.Client, two: Clip) -> None:
    form = {
        "model": TINY,
        "response_format": "verbose_json",
        "timestamp_granularities[]": ["word", "segment"],
    }
    response = post_audio(http, two.wav, **form)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["words"] and body["segments"]
    assert body["words"][0]["start"] >= body["segments"][0]["start"] - 0.02
    # The unbracketed name (curl users) is read as well.
    plain = post_audio(
        http, two.wav, model=TINY, response_format="verbose_json", timestamp_granularities="word"
    )
    assert plain.status_code == 200, plain.text
    assert [w["word"] for w in plain.json()["words"]] == [w["word"] for w in body["words"]]


def test_segment_granularity_is_the_default_and_reports_no_speech(http: httpx.Client, two: Clip) -> None:
    for form in ({}, {"timestamp_granularities[]": "segment"}):
        response = post_audio(http, two.wav, model=TINY, response_format="verbose_json", **form)
        assert response.status_code == 200, response.text
        body = response.json()
        assert "words" not in body and body["segments"], body
        for segment in body["segments"]:
            assert 0.0 <= segment["no_speech_prob"] < 0.2, segment


@pytest.mark.parametrize("response_format", ["json", "srt"])
def test_segment_granularity_goes_with_any_format(
    http: httpx.Client, two: Clip, response_format: str
) -> None:
    """``["segment"]`` is OpenAI's default, which clients send as it is: it suits every format."""
    plain = post_audio(http, two.wav, model=TINY, response_format=response_format)
    named = post_audio(
        http, two.wav, model=TINY, response_format=response_format, **{"timestamp_granularities[]": "segment"}
    )
    assert plain.status_code == named.status_code == 200, named.text
    assert named.text == plain.text


def test_javanese_by_its_iso_639_1_code(http: httpx.Client, two: Clip) -> None:
    """Whisper's tokenizer spells Javanese "jw"; OpenAI's ``language`` is ISO-639-1: "jv"."""
    bodies = [
        post_audio(http, two.wav, model=BASE, language=code, response_format="verbose_json")
        for code in ("jv", "jw")
    ]
    assert [b.status_code for b in bodies] == [200, 200], bodies[0].text
    assert bodies[0].json()["language"] == bodies[1].json()["language"] == "javanese"
    assert bodies[0].json()["text"] == bodies[1].json()["text"]
    english_only = error_of(post_audio(http, two.wav, model=TINY, language="jv"), 400)
    assert "'jv'" in english_only["message"] and "jw" not in english_only["message"], english_only
    unknown = error_of(post_audio(http, two.wav, model=BASE, language="xx"), 400)
    assert "jv" in unknown["message"].split("known: ")[1].split(", "), unknown


@pytest.mark.parametrize("model", [TINY, BASE])
def test_silence_is_probably_not_speech(http: httpx.Client, model: str) -> None:
    """Whisper often imagines a word in silence: its segments say how unlikely that is speech."""
    silence = Clip("", np.zeros(3 * 16_000, dtype=np.float32), 16_000)
    response = post_audio(http, silence.wav, model=model, language="en", response_format="verbose_json")
    assert response.status_code == 200, response.text
    for segment in response.json()["segments"]:
        assert segment["no_speech_prob"] > 0.5, segment


BAD_GRANULARITIES = {
    "unknown-value": ({"timestamp_granularities[]": "foo"}, "transcriptions", ("foo", "segment, word")),
    "one-of-two-unknown": ({"timestamp_granularities[]": ["word", "char"]}, "transcriptions", ("char",)),
    "unknown-unbracketed": ({"timestamp_granularities": "sentence"}, "transcriptions", ("sentence",)),
    "word-with-json": (
        {"timestamp_granularities[]": "word", "response_format": "json"},
        "transcriptions",
        ("verbose_json",),
    ),
    "word-on-translations": ({"timestamp_granularities[]": "word"}, "translations", ("transcriptions",)),
}


@pytest.mark.parametrize("case", list(BAD_GRANULARITIES))
def test_bad_timestamp_granularities_are_400(http: httpx.Client, two: Clip, case: str) -> None:
    extra, endpoint, message_has = BAD_GRANULARITIES[case]
    form = {"model": BASE, "response_format": "verbose_json", **extra}
    error = error_of(post_audio(http, two.wav, f"/v1/audio/{endpoint}", **form), 400)
    assert error["param"] == "timestamp_granularities" and error["type"] == "invalid_request_error", error
    for part in message_has:
        assert part in error["message"], error


def test_sdk_raises_bad_request_for_a_bad_granularity(client: openai.OpenAI, two: Clip) -> None:
    with pytest.raises(openai.BadRequestError) as raised:
        client.audio.transcriptions.create(
            model=TINY,
            file=("two.wav", two.wav),
            response_format="json",
            timestamp_granularities=["word"],
        )
    assert raised.value.param == "timestamp_granularities"


def test_translation_without_model_uses_a_multilingual_one(
    http: httpx.Client, sentences: tuple[Clip, Clip]
) -> None:
    """The first speech model served (whisper-tiny.en) is English-only; whisper-base translates. The
    pangram, as whisper-base too hears "noon" as "and in" in some of Piper's renderings of the other."""
    clip = sentences[0]
    response = http.post("/v1/audio/translations", files={"file": ("s.wav", clip.wav)}, data={})
    assert response.status_code == 200, response.text
    assert wer(clip.text, response.json()["text"]) <= MAX_CLIP_WER, response.text
    verbose = post_audio(http, clip.wav, "/v1/audio/translations", response_format="verbose_json")
    assert verbose.status_code == 200, verbose.text
    assert verbose.json()["task"] == "translate"
    assert words(verbose.json()["text"]) == words(response.json()["text"])
