"""Tokens that are only part of a character (SmolLM2 spells an emoji in three byte tokens) show in logprobs
as OpenAI shows them: ``bytes:\\xf0\\x9f`` as the token, the real bytes in chat's ``bytes``, and completion
text offsets that count characters of the text."""

from __future__ import annotations

import openai

from tests.services.test_openai_api import chat, complete, user

EMOJI_PROMPT = "I am happy 😀 in 東京"
EMOJI_FIRST_BYTES_ID = 10813  # SmolLM2's byte-level token for b"\xf0\x9f", the start of most emoji


def test_echoed_byte_tokens_show_their_bytes_and_place_their_character(
    client: openai.OpenAI, model_id: str
) -> None:
    got = complete(client, model_id, EMOJI_PROMPT, max_tokens=0, logprobs=0, echo=True)
    lp = got.choices[0].logprobs
    assert lp is not None and lp.tokens and lp.text_offset
    assert any(t.startswith("bytes:") for t in lp.tokens), lp.tokens
    spelled = [
        bytes.fromhex(t[len("bytes:") :].replace("\\x", "")) if t.startswith("bytes:") else t.encode()
        for t in lp.tokens
    ]
    assert b"".join(spelled).decode() == EMOJI_PROMPT == got.choices[0].text
    for i, at in enumerate(lp.text_offset):  # the characters complete before the token's first byte
        assert at == len(b"".join(spelled[:i]).decode(errors="ignore")), (lp.tokens, lp.text_offset)


def test_chat_logprobs_carry_a_byte_tokens_bytes(client: openai.OpenAI, model_id: str) -> None:
    got = chat(
        client,
        model_id,
        user("Say something."),
        max_tokens=1,
        logprobs=True,
        top_logprobs=2,
        logit_bias={str(EMOJI_FIRST_BYTES_ID): 100},
    )
    logprobs = got.choices[0].logprobs
    assert logprobs is not None and logprobs.content
    first = logprobs.content[0]
    assert first.token == "bytes:\\xf0\\x9f" and first.bytes == [0xF0, 0x9F]
    assert (first.top_logprobs[0].token, first.top_logprobs[0].bytes) == (first.token, first.bytes)


def test_offsets_after_bytes_that_never_complete_a_character(client: openai.OpenAI, model_id: str) -> None:
    """Two starts of an emoji in a row: each is a U+FFFD of the text, and the offsets after them count it."""
    ids = [22, EMOJI_FIRST_BYTES_ID, EMOJI_FIRST_BYTES_ID, 28]  # "&", b"\xf0\x9f" twice, ","
    got = complete(client, model_id, ids, max_tokens=0, logprobs=0, echo=True).choices[0]
    assert got.text == "&\ufffd\ufffd,"
    assert got.logprobs is not None and got.logprobs.text_offset == [0, 1, 2, 3], got.logprobs


def test_an_answer_cut_inside_a_character_ends_in_a_replacement_character(
    client: openai.OpenAI, model_id: str
) -> None:
    """The first bytes of an emoji as the last token: the text is what decoding the tokens gives, U+FFFD
    for the unfinished character, streamed or not, in chat and completions alike."""
    forced = {str(EMOJI_FIRST_BYTES_ID): 100}
    said = chat(client, model_id, user("Say something."), max_tokens=1, logit_bias=forced).choices[0]
    assert (said.message.content, said.finish_reason) == ("\ufffd", "length")
    got = complete(client, model_id, "Hi", max_tokens=2, logprobs=0, logit_bias=forced).choices[0]
    assert got.text == "\ufffd\ufffd" and got.finish_reason == "length"
    assert got.logprobs is not None and got.logprobs.text_offset == [0, 1], got.logprobs
    streamed = client.completions.create(
        model=model_id, prompt="Hi", max_tokens=2, temperature=0, logit_bias=forced, stream=True
    )
    assert "".join(c.choices[0].text for c in streamed if c.choices) == got.text
