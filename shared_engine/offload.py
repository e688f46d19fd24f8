"""Tokenizing a huge input takes seconds; on the event loop that would stall every other request, health
checks included. Inputs past a size are tokenized on a worker thread instead (small ones stay inline:
the hop costs more than they do)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")

LARGE_INPUT_CHARS = 1 << 16


def text_size(value: object) -> int:
    """Characters of text in ``value`` (a string, or lists and dicts holding strings)."""
    if isinstance(value, str):
        return len(value)
    if isinstance(value, list | tuple):
        return sum(text_size(v) for v in value)
    if isinstance(value, dict):
        return sum(text_size(v) for v in value.values())
    return 0


async def off_the_loop_if_large(size: int, work: Callable[[], T]) -> T:
    return work() if size < LARGE_INPUT_CHARS else await asyncio.to_thread(work)
