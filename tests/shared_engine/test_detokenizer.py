"""IncrementalDetokenizer: streaming text deltas, split UTF-8 characters and stop strings.

The tokenizer is a small fake whose tokens are raw byte strings; ``decode`` joins them and decodes with
``errors="replace"``, so an incomplete UTF-8 sequence shows up as U+FFFD, exactly like byte-level BPE
tokenizers do.
"""

from __future__ import annotations

import pytest

from shared_engine.detokenizer import CONTEXT_TOKENS, IncrementalDetokenizer
from shared_engine.outputs import FinishReason

Piece = str | bytes


class ByteTokenizer:
    """Token id -> bytes. Ids are handed out on first use by ``ids``; ``calls`` records every decode."""

    def __init__(self, special: dict[int, bytes] | None = None) -> None:
        self.vocab: dict[int, bytes] = dict(special or {})
        self.special = frozenset(self.vocab)
        self.calls: list[list[int]] = []

    def ids(self, *pieces: Piece) -> list[int]:
        out: list[int] = []
        for piece in pieces:
            data = piece.encode() if isinstance(piece, str) else piece
            found = next((i for i, b in self.vocab.items() if b == data and i not in self.special), None)
            if found is None:
                found = max(self.vocab, default=-1) + 1
                self.vocab[found] = data
            out.append(found)
        return out

    def decode(self, token_ids: list[int], skip_special_tokens: bool = True) -> str:
        self.calls.append(list(token_ids))
        data = b"".join(self.vocab[i] for i in token_ids if not (skip_special_tokens and i in self.special))
        return data.decode("utf-8", errors="replace")


EOS = 900


def _tokenizer() -> ByteTokenizer:
    return ByteTokenizer(special={EOS: b"</s>"})


def stream(
    detok: IncrementalDetokenizer, token_ids: list[int], max_tokens: int | None = None
) -> tuple[list[str], FinishReason | None]:
    """Feed tokens one step at a time like ``LLMEngine.step``; the last token (or ``max_tokens``)
    finishes the request by length unless a stop string finishes it first."""
    limit = len(token_ids) if max_tokens is None else max_tokens
    pieces: list[str] = []
    for n, tok in enumerate(token_ids[:limit], start=1):
        reason = detok.add_tokens([tok])
        if reason is None and n == limit:
            reason = FinishReason.LENGTH
        pieces.append(detok.take_new_text(finished=reason is not None))
        if reason is not None:
            return pieces, reason
    return pieces, None


def _detok(
    tok: ByteTokenizer, stop: tuple[str, ...] = (), prompt: list[int] | None = None
) -> IncrementalDetokenizer:
    return IncrementalDetokenizer(tok, prompt if prompt is not None else tok.ids("Q", ":"), stop)


# -- plain text --------------------------------------------------------------------------------------


def test_text_streams_token_by_token_without_stop_strings() -> None:
    tok = _tokenizer()
    detok = _detok(tok)
    pieces, reason = stream(detok, tok.ids("Hello", ",", " world", "!"))
    assert pieces == ["Hello", ",", " world", "!"]
    assert reason is FinishReason.LENGTH


def test_prompt_text_is_never_part_of_the_output() -> None:
    tok = _tokenizer()
    detok = _detok(tok, prompt=tok.ids("You", " are", " a", " bot", ".", " Say", " hi", ":"))
    pieces, _ = stream(detok, tok.ids(" hi", " there"))
    assert pieces == [" hi", " there"]


def test_only_the_last_prompt_tokens_are_decoded_for_context() -> None:
    tok = _tokenizer()
    long_prompt = tok.ids(*(f"p{i} " for i in range(50)))
    detok = _detok(tok, prompt=long_prompt)
    pieces, _ = stream(detok, tok.ids("a", "b", "c"))
    assert "".join(pieces) == "abc"
    early = set(long_prompt[:-CONTEXT_TOKENS])
    assert tok.calls
    assert all(not early.intersection(call) for call in tok.calls)


def test_take_new_text_hands_out_each_character_once() -> None:
    tok = _tokenizer()
    detok = _detok(tok)
    assert detok.add_tokens(tok.ids("ab")) is None
    assert detok.take_new_text(finished=False) == "ab"
    assert detok.take_new_text(finished=False) == ""
    assert detok.take_new_text(finished=True) == ""


def test_several_tokens_in_one_call() -> None:
    tok = _tokenizer()
    detok = _detok(tok)
    assert detok.add_tokens(tok.ids("one", " two", " three")) is None
    assert detok.take_new_text(finished=True) == "one two three"


def test_special_tokens_are_skipped_or_kept() -> None:
    tok = _tokenizer()
    skipping = IncrementalDetokenizer(tok, tok.ids("Q"), skip_special_tokens=True)
    pieces, _ = stream(skipping, [*tok.ids("Hi"), EOS])
    assert pieces == ["Hi", ""]
    keeping = IncrementalDetokenizer(tok, tok.ids("Q"), skip_special_tokens=False)
    pieces, _ = stream(keeping, [*tok.ids("Hi"), EOS])
    assert pieces == ["Hi", "</s>"]
    assert all(call for call in tok.calls)


# -- split UTF-8 characters ------------------------------------------------------------------------------


def test_multibyte_character_split_across_two_tokens_is_emitted_once_complete() -> None:
    tok = _tokenizer()
    euro = "€".encode()
    assert len(euro) == 3
    detok = _detok(tok)
    pieces, _ = stream(detok, tok.ids("Price:", " 5", euro[:2], euro[2:], "."))
    assert pieces == ["Price:", " 5", "", "€", "."]
    assert all("\ufffd" not in p for p in pieces)


def test_four_byte_character_split_across_three_tokens_with_text_around_it() -> None:
    tok = _tokenizer()
    smile = "😀".encode()
    detok = _detok(tok)
    pieces, _ = stream(detok, tok.ids(b"a" + smile[:1], smile[1:3], smile[3:] + b"b", "c"))
    assert "".join(pieces) == "a😀bc"
    assert all("\ufffd" not in p for p in pieces)
    # Nothing of the pending token is emitted before the character is complete.
    assert pieces[:2] == ["", ""]


def test_split_characters_back_to_back() -> None:
    tok = _tokenizer()
    text = "日本語"
    data = text.encode()
    chunks = [data[i : i + 2] for i in range(0, len(data), 2)]  # 2-byte tokens straddle every char
    detok = _detok(tok)
    pieces, _ = stream(detok, tok.ids(*chunks))
    assert "".join(pieces) == text
    assert all("\ufffd" not in p for p in pieces)


def test_invalid_bytes_do_not_block_the_stream_forever() -> None:
    tok = _tokenizer()
    detok = _detok(tok)
    pieces, _ = stream(detok, tok.ids(b"\xe2", "x", "y"))
    assert pieces[0] == ""
    assert "".join(pieces) == "\ufffdxy"


def test_a_character_cut_off_by_the_end_comes_out_as_a_replacement_character() -> None:
    """Finishing by length inside a character: the text is what decoding every token at once gives."""
    tok = _tokenizer()
    detok = _detok(tok)
    emoji = "🎉".encode()
    pieces, reason = stream(detok, tok.ids("ok ", emoji[:2], emoji[2:3]))
    assert reason is FinishReason.LENGTH
    assert pieces == ["ok ", "", "\ufffd"]
    assert "".join(pieces) == tok.decode(tok.ids("ok ", emoji[:2], emoji[2:3]))


def test_a_stop_string_before_an_unfinished_character_drops_it() -> None:
    tok = _tokenizer()
    detok = _detok(tok, ("END",))
    pieces, reason = stream(detok, tok.ids("a", "EN", b"D\xf0\x9f"))
    assert reason is FinishReason.STOP
    assert "".join(pieces) == "a"
    assert detok.take_new_text(finished=True) == ""


# -- stop strings ------------------------------------------------------------------------------------------


def _check_never_leaks(pieces: list[str], final: str, stop: tuple[str, ...]) -> None:
    """The streamed text only ever grows into the final text, and holds no stop string."""
    so_far = ""
    for piece in pieces:
        so_far += piece
        assert final.startswith(so_far), f"emitted {so_far!r} is not a prefix of {final!r}"
    assert so_far == final
    assert not any(s in final for s in stop)


def test_stop_string_spanning_two_tokens_is_never_emitted() -> None:
    tok = _tokenizer()
    stop = ("STOP",)
    detok = _detok(tok, stop)
    pieces, reason = stream(detok, tok.ids("Hi ", "ST", "OP", " more"))
    assert reason is FinishReason.STOP
    assert pieces == ["", "Hi", " "]
    assert all("S" not in p for p in pieces)
    _check_never_leaks(pieces, "Hi ", stop)


def test_stop_string_spanning_three_tokens() -> None:
    tok = _tokenizer()
    stop = ("<|end|>",)
    detok = _detok(tok, stop)
    pieces, reason = stream(detok, tok.ids("The answer is 42", "<|", "end", "|>", "junk"))
    assert reason is FinishReason.STOP
    _check_never_leaks(pieces, "The answer is 42", stop)
    assert len(pieces) == 4  # finished on the token that completed the stop string


def test_stop_string_inside_one_token_truncates_the_rest() -> None:
    tok = _tokenizer()
    stop = ("END",)
    detok = _detok(tok, stop)
    pieces, reason = stream(detok, tok.ids("Hello", " wor", "ld. END here", " ignored"))
    assert reason is FinishReason.STOP
    _check_never_leaks(pieces, "Hello world. ", stop)


def test_stop_string_at_the_very_start() -> None:
    tok = _tokenizer()
    detok = _detok(tok, ("STOP",))
    pieces, reason = stream(detok, tok.ids("STOP", "x"))
    assert reason is FinishReason.STOP
    assert pieces == [""]


def test_partial_stop_match_is_released_when_it_turns_out_not_to_be_one() -> None:
    tok = _tokenizer()
    stop = ("abc",)
    detok = _detok(tok, stop)
    pieces, reason = stream(detok, tok.ids("x", "a", "b", "d", "e"))
    assert reason is FinishReason.LENGTH
    _check_never_leaks(pieces, "xabde", stop)
    # "ab" could have started the stop string: it is only released once "d" rules that out.
    assert "".join(pieces[:3]) == "x"
    assert "".join(pieces[:4]) == "xa"


def test_held_back_text_is_flushed_when_finishing_by_length() -> None:
    tok = _tokenizer()
    detok = _detok(tok, ("STOP",))
    pieces, reason = stream(detok, tok.ids("go ", "ST"))
    assert reason is FinishReason.LENGTH
    assert pieces == ["", "go ST"]


def test_earliest_of_several_stop_strings_wins() -> None:
    tok = _tokenizer()
    stop = ("User:", "\n\n")
    detok = _detok(tok, stop)
    pieces, reason = stream(detok, tok.ids("Answer", ":", " 42", "\n", "\nUser:", " more"))
    assert reason is FinishReason.STOP
    _check_never_leaks(pieces, "Answer: 42", stop)


def test_shorter_stop_string_inside_the_holdback_of_a_longer_one() -> None:
    tok = _tokenizer()
    stop = ("###", "#")
    detok = _detok(tok, stop)
    pieces, reason = stream(detok, tok.ids("ab", "c", "#", "##"))
    assert reason is FinishReason.STOP
    _check_never_leaks(pieces, "abc", stop)


def test_stop_string_with_a_multibyte_character_split_across_tokens() -> None:
    tok = _tokenizer()
    arrow = "→".encode()
    stop = ("→",)
    detok = _detok(tok, stop)
    pieces, reason = stream(detok, tok.ids("a ", arrow[:2], arrow[2:] + b" b", "c"))
    assert reason is FinishReason.STOP
    assert all("\ufffd" not in p for p in pieces)
    _check_never_leaks(pieces, "a ", stop)


def test_stop_string_after_multibyte_text() -> None:
    tok = _tokenizer()
    stop = ("。", "終わり")
    detok = _detok(tok, stop)
    data = "これは終わり".encode()
    chunks = [data[i : i + 4] for i in range(0, len(data), 4)]
    pieces, reason = stream(detok, [*tok.ids(*chunks), *tok.ids("x")])
    assert reason is FinishReason.STOP
    _check_never_leaks(pieces, "これは", stop)
    assert all("\ufffd" not in p for p in pieces)


@pytest.mark.parametrize("split", range(1, 9))
def test_stop_string_split_at_every_position(split: int) -> None:
    tok = _tokenizer()
    stop = ("</answer>",)
    text = "ok</answer>tail"
    at = text.index("</answer>") + split
    detok = _detok(tok, stop)
    pieces, reason = stream(detok, tok.ids(text[:at], text[at:], "more"))
    assert reason is FinishReason.STOP
    _check_never_leaks(pieces, "ok", stop)


def test_stop_strings_count_only_after_min_tokens() -> None:
    """As vLLM: a stop string completed by one of the first ``min_tokens`` tokens is ordinary text."""
    tok = _tokenizer()
    ids = tok.ids("a", "END", "b", "END", "c")
    early = IncrementalDetokenizer(tok, tok.ids("Q"), ("END",), min_tokens=2)
    pieces, reason = stream(early, ids)
    assert (reason, "".join(pieces)) == (FinishReason.STOP, "aENDb")
    assert stream(IncrementalDetokenizer(tok, tok.ids("Q"), ("END",), min_tokens=1), ids)[0] == ["", "a"]


def test_the_stop_string_can_be_kept_at_the_end() -> None:
    tok = _tokenizer()
    keeping = IncrementalDetokenizer(tok, tok.ids("Q"), ("END", "ENDING"), include_stop=True)
    pieces, reason = stream(keeping, tok.ids("a", "EN", "Db", "c"))
    assert (reason, "".join(pieces)) == (FinishReason.STOP, "aEND")
    _check_never_leaks(pieces, "aEND", ())


def test_a_stop_tokens_text_only_where_the_stop_is_to_be_included() -> None:
    tok = _tokenizer()
    for include, text in ((False, "a"), (True, "a;")):
        detok = IncrementalDetokenizer(tok, tok.ids("Q"), include_stop=include)
        detok.add_tokens(tok.ids("a"))
        assert detok.add_tokens(tok.ids(";"), ends=True) is None
        assert detok.take_new_text(finished=True) == text


def test_stop_string_is_not_searched_in_the_prompt() -> None:
    tok = _tokenizer()
    detok = _detok(tok, ("STOP",), prompt=tok.ids("say ", "ST"))
    pieces, reason = stream(detok, tok.ids("OP", " now"))
    assert reason is FinishReason.LENGTH
    assert "".join(pieces) == "OP now"


def test_stop_reported_only_once_text_contains_it() -> None:
    tok = _tokenizer()
    detok = _detok(tok, ("!!",))
    assert detok.add_tokens(tok.ids("a!")) is None
    assert detok.take_new_text(finished=False) == "a"
    assert detok.add_tokens(tok.ids("!b")) is FinishReason.STOP
    assert detok.text == "a"
    assert detok.take_new_text(finished=True) == ""


def test_stop_string_completed_by_a_token_ending_in_a_partial_character() -> None:
    tok = _tokenizer()
    stop = ("STOP",)
    detok = _detok(tok, stop)
    euro = "€".encode()
    assert detok.add_tokens(tok.ids("Hi ")) is None
    assert detok.add_tokens(tok.ids("ST")) is None
    assert detok.take_new_text(finished=False) == "Hi"
    # "OP" completes the stop string; the trailing bytes are the start of "€".
    assert detok.add_tokens(tok.ids(b"OP" + euro[:2])) is FinishReason.STOP
    assert detok.take_new_text(finished=True) == " "
