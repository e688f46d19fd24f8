"""The chunked-prefill benchmark's figures: each configuration's runs pooled into percentiles of the
streams' inter-token gaps and the long request's TTFT, and the plain-text table of them."""

from __future__ import annotations

import statistics
from typing import Any

import numpy as np

from benchmarks.text_table import right_aligned


def pct(values: list[float], q: float) -> float | None:
    return round(float(np.percentile(values, q)), 3) if values else None


def summarize(runs: list[dict[str, Any]]) -> dict[str, Any]:
    gaps = [g for r in runs for g in r["itl_ms"]]
    steady = [g for r in runs for g in r["steady_itl_ms"]]
    ttfts = [r["long_ttft_ms"] for r in runs]
    others = [r["other_cores"] for r in runs if r["other_cores"] is not None]
    return {
        "itl_samples": len(gaps),
        "itl_p50_ms": pct(gaps, 50),
        "itl_p99_ms": pct(gaps, 99),
        "itl_max_ms": round(max(gaps), 3) if gaps else None,
        "itl_mean_ms": round(statistics.fmean(gaps), 3) if gaps else None,
        "steady_itl_p50_ms": pct(steady, 50),
        "long_ttft_ms_median": round(statistics.median(ttfts), 3),
        "long_ttft_ms_runs": ttfts,
        "prefill_steps_runs": [r["prefill_steps"] for r in runs],
        "max_step_tokens": max(max(r["window_step_tokens"]) for r in runs),
        "other_cores": round(statistics.median(others), 2) if others else None,
    }


def format_table(payload: dict[str, Any]) -> str:
    head = [
        "config", "budget", "prefill steps", "max step tok", "long TTFT ms", "ITL p50", "ITL p99",
        "ITL max", "steady p50", "gaps",
    ]  # fmt: skip
    rows = [head]
    for name, res in payload["configs"].items():
        s = res["summary"]
        steps = "/".join(str(x) for x in sorted(set(s["prefill_steps_runs"])))
        rows.append(
            [
                name,
                str(res["max_num_batched_tokens"]),
                steps,
                str(s["max_step_tokens"]),
                f"{s['long_ttft_ms_median']:,.1f}",
                *(f"{s[k]:,.1f}" for k in ("itl_p50_ms", "itl_p99_ms", "itl_max_ms", "steady_itl_p50_ms")),
                str(s["itl_samples"]),
            ]
        )
    lines = right_aligned(rows)
    m = payload["machine"]
    w = payload["workload"]
    return "\n".join(
        [
            f"{payload['model']}  {m['cpu_model']}, {m['cpus_usable']} cores, {m['torch_threads']} torch "
            f"threads, torch {m['torch_version']}, {m['dtype']}, {m['device']}"
            + (f" ({m['gpu']})" if m["gpu"] else ""),
            f"{w['streams']} streams (prompts ~{w['stream_prompt_len']} tok, greedy) decoding; after "
            f"{w['warmup_tokens']} tokens each a {w['long_prompt_len']}-token prompt arrives "
            f"(max_tokens {w['after_tokens'] + 1}); {payload['repeats']} runs per config",
            f"load average before/after: {payload['loadavg_before']} / {payload['loadavg_after']}",
            "",
            *lines,
            "",
            "ITL (ms): the streams' gaps between consecutive tokens from the long prompt's arrival to its "
            "last token, all runs pooled;",
            "steady p50: their gaps before it arrived. long TTFT: median over runs, arrival to first token.",
        ]
    )
