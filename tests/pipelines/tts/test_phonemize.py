"""espeak-ng through ctypes: IPA phonemes per sentence, clause punctuation kept the way Piper keeps it."""

from __future__ import annotations

import threading

import pytest

from pipelines.tts.phonemize import phonemize, split_long, terminator

FOX = "The quick brown fox jumps over the lazy dog."
IPA_LETTERS = set("ðəɪɹʌæɑɔɛʊŋθʃʒɡɜɚː")
STRESS = set("ˈˌ")


def test_known_sentence_is_ipa() -> None:
    (sentence,) = phonemize(FOX, "en-us")
    assert sentence.endswith(".")
    assert sentence.startswith("ðə kwˈɪk bɹˈaʊn fˈɑːks")
    assert set(sentence) & IPA_LETTERS, sentence
    assert set(sentence) & STRESS, sentence
    assert not set(sentence) & set("ABCDEFGHIJKLMNOPQRSTUVWXYZ"), sentence
    assert len(sentence.split()) == 9  # one phoneme word per word


def test_deterministic_also_across_threads() -> None:
    first = phonemize(FOX, "en-us")
    results: list[list[str]] = []
    threads = [threading.Thread(target=lambda: results.append(phonemize(FOX, "en-us"))) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert results == [first] * 4


def test_sentences_and_clause_punctuation() -> None:
    sentences = phonemize("Hello, world. How are you today? I am fine! Yes; no: maybe", "en-us")
    assert len(sentences) == 4
    hello, how, fine, rest = sentences
    assert hello.startswith("həlˈoʊ, w") and hello.endswith(".")
    assert how.endswith("?")
    assert fine.endswith("!")
    assert "; " in rest and ": " in rest and rest[-1] not in ".,;:!?"


def test_blank_line_ends_a_sentence_and_ellipsis_keeps_words_apart() -> None:
    assert len(phonemize("First line\n\nSecond line", "en-us")) == 2
    (sentence,) = phonemize("Well... maybe", "en-us")
    assert len(sentence.split()) == 2, sentence


def test_decomposed_unicode() -> None:
    (sentence,) = phonemize("Garçon", "en-us")
    assert sentence == sentence.encode().decode()  # valid text
    assert all(len(ch) == 1 for ch in sentence)


def test_nothing_to_say() -> None:
    assert phonemize("", "en-us") == []
    assert phonemize("   \n ", "en-us") == []


def test_unknown_espeak_voice() -> None:
    with pytest.raises(ValueError, match="no-such-voice"):
        phonemize("hello", "no-such-voice")
    assert phonemize("hello", "en-us")  # the engine still works afterwards


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("Hello, ", (", ", False)),
        ("done. ", (".", True)),
        ('he said "yes." ', (".", True)),
        ("why?! ", ("!", True)),
        ("wait... ", (" ", False)),
        ("line\n\n", (" ", True)),
        ("a long clause cut by espeak ", (" ", False)),
    ],
)
def test_terminator(source: str, expected: tuple[str, bool]) -> None:
    assert terminator(source) == expected


def test_split_long_prefers_clause_breaks() -> None:
    clause = "ðə kwˈɪk bɹˈaʊn fˈɑːks, "
    text = clause * 30
    pieces = split_long(text, 100)
    assert "".join(pieces) == text
    assert all(len(p) <= 100 for p in pieces)
    assert all(p.endswith(", ") for p in pieces)
    assert split_long("short", 100) == ["short"]
    words = split_long("wˈɜːd " * 50, 40)
    assert "".join(words) == "wˈɜːd " * 50 and all(len(p) <= 40 and p.endswith(" ") for p in words)
    assert split_long("x" * 25, 10) == ["x" * 10, "x" * 10, "x" * 5]
