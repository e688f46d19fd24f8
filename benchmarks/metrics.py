"""Per-request measurements and their per-level summaries (latencies in milliseconds)."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

MAX_ERRORS_KEPT = 5


@dataclass
class RequestResult:
    ok: bool
    ttft: float = 0.0  # seconds from send to the first token
    e2e: float = 0.0  # seconds from send to the end of the response
    itl: list[float] = field(default_factory=list)  # seconds between consecutive token-bearing chunks
    output_tokens: int = 0
    prompt_tokens: int = 0
    error: str = ""

    @property
    def tpot(self) -> float | None:
        if self.output_tokens < 2:
            return None
        return (self.e2e - self.ttft) / (self.output_tokens - 1)


@dataclass
class RunResult:
    """One workload: a concurrency level against the server, or the naive baseline."""

    name: str
    concurrency: int
    results: list[RequestResult]
    wall: float  # seconds from the first send to the last response
    load_before: float = 0.0  # 1-minute load average when the run started (noise indicator)
    cpu: dict[str, float | None] = field(default_factory=dict)  # see benchmarks.noise.CpuMeter
    request_rate: float = math.inf  # requests/s sent (Poisson arrivals); inf: all at once
    target: str = ""  # what served the run: "ours", "llama.cpp", "naive"


# Service-level objectives for goodput, by the names ``vllm bench serve --goodput`` uses (milliseconds).
SLO_METRICS = ("ttft", "tpot", "e2el")


def meets_slos(r: RequestResult, slos: Mapping[str, float]) -> bool:
    values = {"ttft": r.ttft, "tpot": r.tpot or 0.0, "e2el": r.e2e}
    return all(values[name] * 1000.0 <= limit for name, limit in slos.items())


def stats_ms(values: list[float]) -> dict[str, float | None]:
    if not values:
        return {"mean": None, "p50": None, "p99": None}
    ms = np.asarray(values, dtype=np.float64) * 1000.0
    return {
        "mean": round(float(ms.mean()), 3),
        "p50": round(float(np.percentile(ms, 50)), 3),
        "p99": round(float(np.percentile(ms, 99)), 3),
    }


def summarize(run: RunResult, output_len: int, slos: Mapping[str, float] | None = None) -> dict[str, Any]:
    """The run's figures; with ``slos`` also goodput: requests/s that met every objective."""
    ok = [r for r in run.results if r.ok]
    failed = [r for r in run.results if not r.ok]
    total_out = sum(r.output_tokens for r in ok)
    tpots = [t for r in ok if (t := r.tpot) is not None]
    return {
        "name": run.name,
        "concurrency": run.concurrency,
        "num_requests": len(run.results),
        "completed": len(ok),
        "failed": len(failed),
        "errors": [r.error for r in failed[:MAX_ERRORS_KEPT]],
        "wrong_output_len": sum(1 for r in ok if r.output_tokens != output_len),
        "wall_s": round(run.wall, 3),
        "load_avg_1m_before": round(run.load_before, 2),
        "cpu_cores": run.cpu,
        "total_output_tokens": total_out,
        "mean_prompt_tokens": round(sum(r.prompt_tokens for r in ok) / len(ok), 1) if ok else None,
        "output_tok_s": round(total_out / run.wall, 2) if run.wall > 0 else None,
        "req_s": round(len(ok) / run.wall, 3) if run.wall > 0 else None,
        "request_rate": None if math.isinf(run.request_rate) else run.request_rate,
        "slos_ms": dict(slos) if slos else None,
        "goodput_req_s": (
            round(sum(meets_slos(r, slos) for r in ok) / run.wall, 3) if slos and run.wall > 0 else None
        ),
        "ttft_ms": stats_ms([r.ttft for r in ok]),
        "tpot_ms": stats_ms(tpots),
        "itl_ms": stats_ms([gap for r in ok for gap in r.itl]),
        "e2e_ms": stats_ms([r.e2e for r in ok]),
    }
