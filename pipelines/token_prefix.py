"""Tokenizing no more of a text than a model's window can use.

An encoder reads a few hundred tokens of each input, but a request may carry megabytes of text:
tokenizing all of it to keep (or refuse past) the first few hundred took a minute and gigabytes for a
20 MB input. No token spans more characters than the vocabulary's longest entry (its byte-level or
``##`` spelling is at least as long as the text it covers), so a prefix of ``(n + MARGIN_TOKENS)`` times
that many characters holds at least ``n + MARGIN_TOKENS`` tokens — unless the tokenizer drops characters
(accents, control characters) or folds a long word into one ``[UNK]``. So the prefix is tokenized, and
kept when it does hold that many; otherwise a prefix four times as long is tried, up to the whole text
(at most a third more work than tokenizing the whole text at once).

A prefix ends before a space or punctuation where its second half has one, so that it cuts no word: a
WordPiece word cut short spells itself in pieces where the whole word is one ``[UNK]`` (past 100
characters, or with a character the vocabulary lacks). A prefix with none there ends inside a run of
thousands of letters, which WordPiece reads as one ``[UNK]`` cut or not; byte-level BPE changes at most
the last few tokens of a cut word or run, which the margin keeps clear of the ``n`` that count.

``trailing_ids`` is the same for a decoder that reads only a text's last ``n`` tokens (Whisper's prompt):
a suffix that starts at a space or punctuation of its first half. Where it has none, it starts inside a run
of tens of thousands of letters, whose tokens byte-level BPE spells by the run's length: the suffix's may
differ from the whole text's there.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

MARGIN_TOKENS = 16


def longest_token_chars(tokenizer: Any) -> int:
    """Characters in the vocabulary's longest entry (added tokens included)."""
    return max(len(token) for token in tokenizer.get_vocab())


@dataclass(frozen=True)
class Leading:
    """The ids of ``text``: all of its ids when ``whole``, else the ids of a prefix of it whose first
    ``n`` are the whole text's first ``n`` and which holds more than ``n`` (so the whole text does too)."""

    ids: list[int]
    text: str
    whole: bool


def leading_ids(
    encode: Callable[[list[str]], list[list[int]]], texts: Sequence[str], n: int, longest_token: int
) -> list[Leading]:
    """For each of ``texts``, at least its first ``n`` ids as ``encode`` gives them for the whole text
    (``encode`` tokenizes a batch; what it adds around each text, such as ``[CLS]``, counts in ``n``)."""
    span = 2 * (n + MARGIN_TOKENS) * max(longest_token, 1)
    found: dict[int, Leading] = {}
    pending = list(range(len(texts)))
    while pending:
        prefixes = [_prefix(texts[i], span) for i in pending]
        still = []
        for i, prefix, ids in zip(pending, prefixes, encode(prefixes), strict=True):
            whole = len(prefix) == len(texts[i])
            if whole or len(ids) >= n + MARGIN_TOKENS:
                found[i] = Leading(ids, prefix, whole)
            else:
                still.append(i)
        pending, span = still, 4 * span
    return [found[i] for i in range(len(texts))]


def _prefix(text: str, span: int) -> str:
    """``text`` up to ``span`` characters, ending before the last space or punctuation of its second half
    (where it has one), so that no word is cut."""
    if len(text) <= span:
        return text
    for at in range(span, span // 2, -1):
        if not text[at].isalnum():
            return text[:at]
    return text[:span]


def trailing_ids(encode: Callable[[str], list[int]], text: str, n: int, longest_token: int) -> list[int]:
    """The last ``n`` (≥ 1) ids of ``text`` as ``encode`` gives them for the whole text, from a suffix."""
    span = 2 * (n + MARGIN_TOKENS) * max(longest_token, 1)
    while True:
        suffix = _suffix(text, span)
        ids = encode(suffix)
        if len(suffix) == len(text) or len(ids) >= n + MARGIN_TOKENS:
            return ids[-n:]
        span *= 4


def _suffix(text: str, span: int) -> str:
    """``text``'s last ``span`` characters at most, starting at the first space or punctuation of their
    first half (where they have one), so that no word is cut."""
    if len(text) <= span:
        return text
    start = len(text) - span
    for at in range(start, start + span // 2):
        if not text[at].isalnum():
            return text[at:]
    return text[start:]
