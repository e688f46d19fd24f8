"""How much CPU other processes took during a run: the noise figure of a benchmark on a shared machine.

Linux only (``/proc``); elsewhere every figure is ``None``."""

from __future__ import annotations

import os
import time
from pathlib import Path


def _system_busy_ticks() -> int:
    fields = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    return sum(fields[:8]) - idle  # user nice system idle iowait irq softirq steal


def process_ticks(pid: int) -> int:
    """User + system time of every thread of ``pid`` (0 once it has exited)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0
    fields = stat.rpartition(")")[2].split()
    return int(fields[11]) + int(fields[12])  # utime, stime


class CpuMeter:
    """Started on creation; ``read()`` gives cores in use on average since then: all, ours, others'."""

    def __init__(self, pids: list[int]) -> None:
        self.pids = pids
        self.available = Path("/proc/stat").exists()
        self.hz = os.sysconf("SC_CLK_TCK") if self.available else 100
        self.start = time.monotonic()
        self.busy0, self.ours0 = self._sample()

    def _sample(self) -> tuple[int, int]:
        if not self.available:
            return 0, 0
        return _system_busy_ticks(), sum(process_ticks(p) for p in self.pids)

    def read(self) -> dict[str, float | None]:
        busy, ours = self._sample()
        elapsed = time.monotonic() - self.start
        if not self.available or elapsed <= 0:
            return {"busy_cores": None, "our_cores": None, "other_cores": None}
        to_cores = 1.0 / (self.hz * elapsed)
        busy_cores = (busy - self.busy0) * to_cores
        our_cores = (ours - self.ours0) * to_cores
        return {
            "busy_cores": round(busy_cores, 2),
            "our_cores": round(our_cores, 2),
            "other_cores": round(max(0.0, busy_cores - our_cores), 2),
        }
