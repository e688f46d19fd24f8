"""Progress lines of the llama.cpp peer (its build and its server) on stderr, and the tails of their logs
that a failure shows."""

from __future__ import annotations

import sys
from pathlib import Path

LOG_TAIL_LINES = 40


def log(message: str) -> None:
    print(f"[llama.cpp] {message}", file=sys.stderr, flush=True)


def tail(path: Path, lines: int = LOG_TAIL_LINES) -> str:
    """The last ``lines`` lines of the log at ``path`` (or why it cannot be read)."""
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError as exc:
        return f"(cannot read {path}: {exc})"
