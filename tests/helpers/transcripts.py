"""Word error rates of transcripts: the words a transcript should hold, compared word by word."""

from __future__ import annotations

import re
from collections.abc import Sequence

_CONTRACTIONS = (
    (r"\bwon't\b", "will not"),
    (r"\bcan't\b", "can not"),
    (r"n't\b", " not"),
    (r"'re\b", " are"),
    (r"'ll\b", " will"),
    (r"'ve\b", " have"),
    (r"\bi'm\b", "i am"),
    (r"\blet's\b", "let us"),
    (r"\b(it|that|there|what|here|he|she)'s\b", r"\1 is"),
)


def words(text: str) -> list[str]:
    """Lower case, contractions spelled out, hyphens and slashes as spaces, other punctuation dropped
    (a possessive 's stays part of its word)."""
    text = text.lower().replace("\u2019", "'")
    for pattern, spelled in _CONTRACTIONS:
        text = re.sub(pattern, spelled, text)
    text = re.sub(r"[-\u2013\u2014/]", " ", text)
    return re.findall(r"[a-z0-9]+(?:'[a-z]+)*", text)


def edit_distance(ref: Sequence[str], hyp: Sequence[str]) -> int:
    """Levenshtein distance between two word sequences (substitutions, insertions, deletions)."""
    row = list(range(len(hyp) + 1))
    for i, r in enumerate(ref, start=1):
        diagonal, row[0] = row[0], i
        for j, h in enumerate(hyp, start=1):
            diagonal, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, diagonal + (r != h))
    return row[-1]


def wer(reference: str, hypothesis: str) -> float:
    ref = words(reference)
    return edit_distance(ref, words(hypothesis)) / max(1, len(ref))
