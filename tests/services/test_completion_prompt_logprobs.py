"""Scoring a prompt through /v1/completions as evaluation harnesses do: ``echo`` with ``logprobs`` gives the
log-probability of every prompt token after the first, and ``max_tokens: 0`` gives only those."""

from __future__ import annotations

import math
from typing import Any

import httpx
import openai
import pytest

from tests.helpers.api import error_of
from tests.services.test_openai_api import FRANCE_PROMPT, FRANCE_PROMPT_IDS, complete

# A decode step runs the default's int4 kernels, a prefill its float weights; and in bfloat16 a prefill of a
# few rows rounds otherwise than one of many (the GEMM kernels differ by shape): SmolLM2 in bfloat16 scores
# " lazy" after "The quick brown fox jumps over the" -2.68 in a prompt of 9 tokens and -2.14 in one of 17.
SCORE_TOLERANCE = 0.6


@pytest.fixture(scope="module")
def answer(client: openai.OpenAI, model_id: str) -> Any:
    """FRANCE_PROMPT's greedy first token and its log-probability, as generated."""
    got = complete(client, model_id, FRANCE_PROMPT_IDS, max_tokens=1, logprobs=1)
    lp = got.choices[0].logprobs
    assert lp is not None and lp.tokens and lp.token_logprobs
    return lp.tokens[0], lp.token_logprobs[0]


def test_echo_scores_every_prompt_token_after_the_first(
    client: openai.OpenAI, model_id: str, answer: Any
) -> None:
    token, generated_logprob = answer
    got = complete(client, model_id, FRANCE_PROMPT_IDS, max_tokens=1, logprobs=1, echo=True)
    choice = got.choices[0]
    lp = choice.logprobs
    assert lp is not None and lp.tokens and lp.token_logprobs and lp.top_logprobs and lp.text_offset
    n = len(FRANCE_PROMPT_IDS)
    assert len(lp.tokens) == len(lp.token_logprobs) == len(lp.top_logprobs) == len(lp.text_offset) == n + 1
    assert "".join(lp.tokens) == choice.text == FRANCE_PROMPT + token
    assert lp.token_logprobs[0] is None and lp.top_logprobs[0] is None  # nothing predicts the first token
    assert all(v is not None and v < 0 for v in lp.token_logprobs[1:])
    offsets = [0]
    for t in lp.tokens[:-1]:
        offsets.append(offsets[-1] + len(t))
    assert lp.text_offset == offsets
    for t, v, top in zip(lp.tokens[1:], lp.token_logprobs[1:], lp.top_logprobs[1:], strict=True):
        assert top is not None and t in top and top[t] == v and 1 <= len(top) <= 2
        assert v <= max(top.values())
    assert lp.token_logprobs[-1] == pytest.approx(generated_logprob, abs=1e-4)  # the generated one


def test_a_prompt_scores_its_tokens_as_generating_them_would(
    client: openai.OpenAI, model_id: str, answer: Any
) -> None:
    """The answer appended to the prompt scores as it did when it was generated; a wrong one far lower."""
    token, generated_logprob = answer
    right = complete(client, model_id, FRANCE_PROMPT + token, max_tokens=0, logprobs=0, echo=True)
    wrong = complete(client, model_id, FRANCE_PROMPT + " Berlin", max_tokens=0, logprobs=0, echo=True)
    right_lp, wrong_lp = right.choices[0].logprobs, wrong.choices[0].logprobs
    assert right_lp is not None and right_lp.token_logprobs and right_lp.tokens
    assert wrong_lp is not None and wrong_lp.token_logprobs and wrong_lp.tokens
    assert right_lp.tokens[-1] == token
    assert right_lp.token_logprobs[-1] == pytest.approx(generated_logprob, abs=SCORE_TOLERANCE)
    assert wrong_lp.token_logprobs[-1] < right_lp.token_logprobs[-1] - 1
    assert right_lp.token_logprobs[:-1] == pytest.approx(
        wrong_lp.token_logprobs[:-1], abs=1e-4
    )  # same prefix


def test_max_tokens_zero_returns_the_prompt_alone(client: openai.OpenAI, model_id: str) -> None:
    got = complete(client, model_id, FRANCE_PROMPT, max_tokens=0, logprobs=2, echo=True)
    choice = got.choices[0]
    assert choice.text == FRANCE_PROMPT and choice.finish_reason == "length"
    assert got.usage is not None and got.usage.completion_tokens == 0
    assert got.usage.total_tokens == got.usage.prompt_tokens == len(FRANCE_PROMPT_IDS)
    lp = choice.logprobs
    assert lp is not None and lp.tokens is not None and lp.top_logprobs is not None
    assert "".join(lp.tokens) == FRANCE_PROMPT and len(lp.tokens) == len(FRANCE_PROMPT_IDS)
    assert all(top is not None and 2 <= len(top) <= 3 for top in lp.top_logprobs[1:])
    plain = complete(client, model_id, FRANCE_PROMPT, max_tokens=0, echo=True)
    assert plain.choices[0].text == FRANCE_PROMPT and plain.choices[0].logprobs is None


def test_streamed_prompt_scores_equal_the_whole_answers(client: openai.OpenAI, model_id: str) -> None:
    for max_tokens in (0, 3):
        asked: dict[str, Any] = {"max_tokens": max_tokens, "logprobs": 1, "echo": True}
        whole = complete(client, model_id, FRANCE_PROMPT, **asked).choices[0]
        chunks = [
            c
            for chunk in complete(client, model_id, FRANCE_PROMPT, stream=True, **asked)
            for c in chunk.choices
        ]
        assert chunks[0].text == FRANCE_PROMPT and chunks[0].logprobs is not None
        pieces = [c.logprobs for c in chunks if c.logprobs]
        assert whole.logprobs is not None
        assert [t for lp in pieces for t in lp.tokens or []] == whole.logprobs.tokens
        assert [o for lp in pieces for o in lp.text_offset or []] == whole.logprobs.text_offset
        streamed = [v for lp in pieces for v in lp.token_logprobs or []]
        assert streamed[0] is None and whole.logprobs.token_logprobs
        assert streamed[1:] == pytest.approx(whole.logprobs.token_logprobs[1:], abs=1e-4)
        assert "".join(c.text for c in chunks) == whole.text
        assert [c.finish_reason for c in chunks if c.finish_reason] == [whole.finish_reason]


def test_every_choice_and_prompt_is_scored(client: openai.OpenAI, model_id: str) -> None:
    got = complete(
        client, model_id, [FRANCE_PROMPT, "Once upon a time"], n=2, max_tokens=0, logprobs=0, echo=True
    )
    assert [c.text for c in got.choices] == [FRANCE_PROMPT] * 2 + ["Once upon a time"] * 2
    scores = [c.logprobs.token_logprobs for c in got.choices if c.logprobs and c.logprobs.token_logprobs]
    assert len(scores) == 4 and scores[0] == pytest.approx(scores[1], abs=1e-4)
    assert all(s[0] is None and all(v is not None and math.isfinite(v) for v in s[1:]) for s in scores)


def test_max_tokens_zero_needs_echo(http: httpx.Client, model_id: str) -> None:
    body = {"model": model_id, "prompt": FRANCE_PROMPT, "max_tokens": 0}
    error = error_of(http.post("/v1/completions", json=body), 400)
    assert error["param"] == "max_tokens" and "echo" in error["message"]
    error = error_of(
        http.post("/v1/chat/completions", json={**body, "messages": [{"role": "user", "content": "hi"}]}), 400
    )
    assert "max_tokens" in error["message"]


def test_a_tokens_score_does_not_depend_on_what_follows_it(client: openai.OpenAI, model_id: str) -> None:
    """Prefixes of one text score their shared tokens alike, however many positions are scored together
    to bfloat16's rounding (the quantized head's part: tests/pipelines/llm/test_prompt_logprobs.py): a token
    scored at the wrong position would be nats away."""
    text = (
        "The quick brown fox jumps over the lazy dog while the farmer sleeps in the warm afternoon sun, "
        "dreaming of rain and of the harvest that the autumn will bring to the valley."
    )
    words = text.split(" ")
    scored = []
    for n in (4, 9, 17, len(words)):
        lp = (
            complete(client, model_id, " ".join(words[:n]), max_tokens=0, logprobs=0, echo=True)
            .choices[0]
            .logprobs
        )
        assert lp is not None and lp.token_logprobs is not None
        scored.append(lp.token_logprobs)
    longest = scored[-1]
    for shorter in scored[:-1]:
        gaps = [abs(a - b) for a, b in zip(shorter[1:], longest[1 : len(shorter)], strict=True)]
        assert max(gaps) <= 2 * SCORE_TOLERANCE and sum(gaps) / len(gaps) <= SCORE_TOLERANCE / 2, (
            shorter,
            longest,
        )


def test_a_prompt_alone_finishes_by_length_whatever_would_follow(
    client: openai.OpenAI, model_id: str
) -> None:
    """What the model would say next is not asked for: neither a stop token nor a stop string ends it."""
    for extra in (
        {},
        {"stop": [" Paris"]},
        {"logit_bias": {"2": 100}},
        {"extra_body": {"stop_token_ids": [7042]}},
    ):
        for stream in (False, True):
            got = complete(client, model_id, FRANCE_PROMPT, max_tokens=0, echo=True, stream=stream, **extra)
            chunks = list(got) if stream else [got]
            reasons = [c.finish_reason for chunk in chunks for c in chunk.choices if c.finish_reason]
            assert reasons == ["length"], (extra, stream, reasons)


def test_top_logprobs_hold_the_scored_token_too(client: openai.OpenAI, model_id: str) -> None:
    """Up to logprobs + 1 entries, as OpenAI's API gives: the most likely tokens and the token itself."""
    lp = complete(client, model_id, FRANCE_PROMPT, max_tokens=2, logprobs=1, echo=True).choices[0].logprobs
    assert lp is not None and lp.tokens and lp.token_logprobs and lp.top_logprobs
    for token, value, top in zip(lp.tokens[1:], lp.token_logprobs[1:], lp.top_logprobs[1:], strict=True):
        assert top is not None and token in top and top[token] == value and 1 <= len(top) <= 2


def test_a_prompt_alone_fits_in_one_token_less_than_the_context(http: httpx.Client, model_id: str) -> None:
    max_model_len = http.get(f"/v1/models/{model_id}").json()["max_model_len"]
    body = {"model": model_id, "prompt": [504] * max_model_len, "max_tokens": 0, "echo": True}
    error = error_of(http.post("/v1/completions", json=body), 400)
    assert error["code"] == "context_length_exceeded" and error["param"] == "prompt"
    assert f"may hold {max_model_len - 1}" in error["message"], error


def test_vllms_prompt_logprobs_on_completions_and_chat(client: openai.OpenAI, model_id: str) -> None:
    """vLLM's extra: ``prompt_logprobs`` keyed by token id with rank and decoded token, the same scores as
    echo gives; on chat, for the templated prompt, once for all choices."""
    echoed = (
        complete(client, model_id, FRANCE_PROMPT, max_tokens=1, logprobs=2, echo=True).choices[0].logprobs
    )
    got = complete(
        client, model_id, FRANCE_PROMPT, max_tokens=1, extra_body={"prompt_logprobs": 2}
    ).model_dump()
    choice = got["choices"][0]
    assert echoed is not None and echoed.token_logprobs and not choice["text"].startswith(FRANCE_PROMPT)
    view = choice["prompt_logprobs"]
    assert view[0] is None and len(view) == len(FRANCE_PROMPT_IDS)
    for token_id, entries, value in zip(
        FRANCE_PROMPT_IDS[1:], view[1:], echoed.token_logprobs[1 : len(view)], strict=True
    ):
        mine = entries[str(token_id)]
        assert mine["logprob"] == pytest.approx(value, abs=1e-4) and mine["rank"] >= 1
        assert 1 <= len(entries) <= 3 and (mine["rank"] <= 2) == (len(entries) == 2)
        ranked = sorted(entries.values(), key=lambda e: -e["logprob"])
        assert ranked[0]["rank"] == 1 and all(e["logprob"] <= 0 for e in ranked)
    assert view[-1][str(FRANCE_PROMPT_IDS[-1])]["decoded_token"] == " is"

    answer = client.chat.completions.create(
        model=model_id,
        messages=[{"role": "user", "content": "Hi"}],
        max_tokens=1,
        n=2,
        extra_body={"prompt_logprobs": 0},
    ).model_dump()
    chat_view = answer["prompt_logprobs"]
    assert len(chat_view) == answer["usage"]["prompt_tokens"] and chat_view[0] is None
    assert all(len(entries) == 1 and next(iter(entries.values()))["rank"] >= 1 for entries in chat_view[1:])


def test_prompt_logprobs_are_refused_with_stream(http: httpx.Client, model_id: str) -> None:
    body = {"model": model_id, "prompt": FRANCE_PROMPT, "stream": True, "prompt_logprobs": 1}
    error = error_of(http.post("/v1/completions", json=body), 400)
    assert error["param"] == "prompt_logprobs"
    chat = {
        "model": model_id,
        "messages": [{"role": "user", "content": "Hi"}],
        "stream": True,
        "prompt_logprobs": 1,
    }
    assert error_of(http.post("/v1/chat/completions", json=chat), 400)["param"] == "prompt_logprobs"


def test_echo_and_prompt_logprobs_each_show_their_own_alternatives(
    client: openai.OpenAI, model_id: str
) -> None:
    asked: dict[str, Any] = {
        "max_tokens": 0,
        "logprobs": 0,
        "echo": True,
        "extra_body": {"prompt_logprobs": 3},
    }
    choice = complete(client, model_id, FRANCE_PROMPT, **asked).model_dump()["choices"][0]
    assert all(top is None or len(top) == 1 for top in choice["logprobs"]["top_logprobs"])
    assert all(3 <= len(entries) <= 4 for entries in choice["prompt_logprobs"][1:])
