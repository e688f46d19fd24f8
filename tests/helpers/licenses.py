"""Real English text for ranking tests: the licence texts Debian ships in /usr/share/common-licenses,
cut into paragraphs, and questions each answered by one paragraph (which the questions do not quote)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

LICENSES = Path("/usr/share/common-licenses")

# (question, licence, words that occur in the answering paragraph only)
QUESTIONS = (
    ("Is the program provided without any warranty?", "GPL-3", "THERE IS NO WARRANTY FOR THE PROGRAM"),
    (
        "Does a contributor grant me a patent license, and when does it end if I sue for patent "
        "infringement?",
        "Apache-2.0",
        "Grant of Patent License",
    ),
    (
        "Does this license give permission to use the licensor's trademarks or product names?",
        "Apache-2.0",
        "6. Trademarks",
    ),
    (
        "What happens if a court order imposes conditions that contradict this license?",
        "GPL-3",
        "If conditions are imposed on you",
    ),
    (
        "Can I combine the covered software with other code under different terms into a larger work?",
        "MPL-2.0",
        "You may create and distribute a Larger Work",
    ),
)


def paragraphs(name: str, min_words: int = 20) -> list[str]:
    """The paragraphs of a licence (blank-line separated, whitespace folded) of at least ``min_words``."""
    path = LICENSES / name
    if not path.is_file():
        pytest.skip(f"{path} is not on this system")
    text = path.read_text(encoding="utf-8")
    folded = (re.sub(r"\s+", " ", p).strip() for p in re.split(r"\n\s*\n", text))
    return [p for p in folded if len(p.split()) >= min_words]


def answer(name: str, anchor: str) -> str:
    (found,) = [p for p in paragraphs(name) if anchor in p]
    return found
