"""The benchmark's workload: chat prompts built deterministically from a real text corpus.

The body of every prompt is a seeded window of words from the corpus (Python's own LICENSE.txt by
default), so the same seed gives the same workload; each request also starts with a unique random
prefix, so the server's prefix cache cannot reuse one request's prompt for another.
"""

from __future__ import annotations

import random
import sysconfig
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol


class Tokenizer(Protocol):
    def encode(self, text: str, *args: Any, **kwargs: Any) -> Any: ...

    def decode(self, token_ids: Any, *args: Any, **kwargs: Any) -> Any: ...


@dataclass(frozen=True)
class Prompt:
    index: int
    text: str
    seed: int


def default_corpus() -> Path:
    return Path(sysconfig.get_paths()["stdlib"]) / "LICENSE.txt"


def corpus_words(path: Path) -> list[str]:
    """The corpus as words, without ruler lines and other punctuation-only runs."""
    words = path.read_text(encoding="utf-8", errors="replace").split()
    words = [w for w in words if any(c.isalnum() for c in w)]
    if len(words) < 100:
        raise ValueError(f"corpus {path} is too small ({len(words)} words)")
    return words


def build_prompts(
    words: list[str], tokenizer: Tokenizer, count: int, input_len: int, seed: int, prefix_tag: str
) -> list[Prompt]:
    """``count`` prompts of about ``input_len`` tokens (the user message, before the chat template).

    Bodies depend only on ``seed`` (the same for every level and for the baseline); prefixes also on
    ``prefix_tag``, which callers make unique per level and per run."""
    body_rng = random.Random(seed)
    prefix_rng = random.Random(f"{seed}:{prefix_tag}")
    span = min(len(words) - 1, 2 * input_len + 8)  # a word is at most ~2 tokens here, usually fewer
    prompts = []
    for i in range(count):
        start = body_rng.randrange(len(words) - span)
        prefix = f"[{prefix_rng.getrandbits(48):012x}]"
        ids = tokenizer.encode(f"{prefix} " + " ".join(words[start : start + span]), add_special_tokens=False)
        prompts.append(Prompt(index=i, text=tokenizer.decode(ids[:input_len]), seed=seed + i))
    return prompts
