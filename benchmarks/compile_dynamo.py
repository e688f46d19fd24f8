"""What dynamo did while the compile benchmark ran: graphs, graph breaks and recompiles (each with the
guard that failed), counted per variant; and the dynamo and inductor settings the benchmark runs with."""

from __future__ import annotations

import logging
import os
from collections import Counter
from pathlib import Path
from typing import Any

import torch
import torch._dynamo
import torch._dynamo.utils

REPO_ROOT = Path(__file__).resolve().parent.parent


class RecompileLog(logging.Handler):
    """Collects dynamo's ``recompiles`` log records, each tagged with the variant running then."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.tag = ""
        self.records: list[tuple[str, str]] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append((self.tag, record.getMessage()))

    def count(self, tag: str) -> int:
        return sum(1 for t, _ in self.records if t == tag)

    def reasons(self, *tags: str) -> list[str]:
        """The recompiles logged under any of ``tags``, summarized."""
        return [summarize_recompile(msg) for t, msg in self.records if t in tags]


def capture_recompiles(echo: bool) -> RecompileLog:
    """Turn on dynamo's ``recompiles`` log and collect it; ``echo`` also lets it reach stderr."""
    log = RecompileLog()
    torch._logging.set_logs(recompiles=True)
    recompile_logger = logging.getLogger("torch._dynamo.guards.__recompiles")
    recompile_logger.addHandler(log)
    recompile_logger.propagate = echo
    return log


def configure(recompile_limit: int, freezing: bool) -> None:
    torch._dynamo.config.recompile_limit = recompile_limit
    if freezing:
        import torch._inductor.config as inductor_config

        inductor_config.freezing = True


def summarize_recompile(message: str) -> str:
    """``function file:line: first failed guard`` from a recompile message."""
    lines = [ln.strip() for ln in message.splitlines()]
    head = lines[0].removeprefix("Recompiling function ") if lines else ""
    head = head.replace(str(REPO_ROOT) + os.sep, "")
    guard = next((ln.removeprefix("- ") for ln in lines if ln.startswith("- ") and "/" in ln[:8]), "?")
    return f"{head}: {guard.split(' (user code shown')[0]}"


def dynamo_snapshot() -> dict[str, Any]:
    c = torch._dynamo.utils.counters
    return {
        "graphs": int(c["stats"]["unique_graphs"]),
        "frames": int(c["frames"]["total"]),
        "graph_breaks": Counter({str(k): int(v) for k, v in c["graph_break"].items()}),
    }


def dynamo_delta(before: dict[str, Any], after: dict[str, Any]) -> dict[str, Any]:
    breaks = after["graph_breaks"] - before["graph_breaks"]
    return {
        "graphs": after["graphs"] - before["graphs"],
        "frames": after["frames"] - before["frames"],
        "graph_breaks": sum(breaks.values()),
        "graph_break_reasons": dict(breaks),
    }
