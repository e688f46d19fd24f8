"""The benchmark's output: the machine it ran on, a plain-text table, and the JSON results files."""

from __future__ import annotations

import json
import os
import platform
import shutil
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch

from benchmarks.cpu_isa import simulated_isa

RESULTS_DIR = Path(__file__).resolve().parent / "results"
LATENCIES = (("TTFT", "ttft_ms"), ("TPOT", "tpot_ms"), ("ITL", "itl_ms"), ("E2E", "e2e_ms"))


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


# The instruction sets that decide which kernels run (see shared_engine.device.cpu_bf16_native).
KERNEL_FLAGS = ("avx2", "fma", "avx512f", "avx512bw", "avx512vl", "avx512dq", "avx512_vnni", "avx512_bf16",
                "avx_vnni", "avx_ne_convert", "amx_bf16", "amx_int8")  # fmt: skip


def cpu_flags() -> list[str]:
    """Which of ``KERNEL_FLAGS`` this CPU has (from /proc/cpuinfo; empty where there is none)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return []
    line = next((ln for ln in text.splitlines() if ln.startswith("flags")), "")
    present = set(line.partition(":")[2].split())
    return [f for f in KERNEL_FLAGS if f in present]


def machine_info(device: torch.device, dtype: torch.dtype) -> dict[str, Any]:
    return {
        "cpu_model": cpu_model(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "simulated_isa": simulated_isa(),
        "cpu_flags": cpu_flags(),
        "cpu_count": os.cpu_count(),
        "cpus_usable": len(os.sched_getaffinity(0)),
        "torch_version": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "device": str(device),
        "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
        "dtype": str(dtype).removeprefix("torch."),
    }


def run_header(
    benchmark: str, model: str, device: torch.device, dtype: torch.dtype, loadavg_before: tuple[float, ...]
) -> dict[str, Any]:
    """The fields every offline benchmark's results start with: what ran, where, and how busy the
    machine was before and after."""
    return {
        "benchmark": benchmark,
        "model": model,
        "machine": machine_info(device, dtype),
        "loadavg_before": [round(x, 2) for x in loadavg_before],
        "loadavg_after": [round(x, 2) for x in os.getloadavg()],
    }


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:,.1f}" if abs(value) >= 10 else f"{value:.2f}"
    return str(value)


def _rows(runs: list[dict[str, Any]]) -> list[tuple[str, list[str]]]:
    rows = [
        ("requests ok/total", [f"{r['completed']}/{r['num_requests']}" for r in runs]),
        ("wall time (s)", [_fmt(r["wall_s"]) for r in runs]),
        ("mean prompt tokens", [_fmt(r["mean_prompt_tokens"]) for r in runs]),
        ("output tokens", [_fmt(r["total_output_tokens"]) for r in runs]),
        ("output tok/s", [_fmt(r["output_tok_s"]) for r in runs]),
        ("requests/s", [_fmt(r["req_s"]) for r in runs]),
    ]
    for label, key in LATENCIES:
        for stat in ("mean", "p50", "p99"):
            rows.append((f"{label} {stat} (ms)", [_fmt(r[key][stat]) for r in runs]))
    if any(r.get("goodput_req_s") is not None for r in runs):
        rows.append(("goodput (req/s in SLO)", [_fmt(r.get("goodput_req_s")) for r in runs]))
    rows.append(("other procs' CPU (cores)", [_fmt(r["cpu_cores"].get("other_cores")) for r in runs]))
    return rows


def format_table(payload: dict[str, Any]) -> str:
    runs = [*payload["levels"], *([payload["baseline"]] if payload["baseline"] else [])]
    headers = [r["name"] for r in runs]
    rows = _rows(runs)
    label_w = max(len(label) for label, _ in rows)
    col_w = max(12, *(len(h) for h in headers), *(len(c) for _, cells in rows for c in cells))
    m = payload["machine"]
    lines = [
        f"model {payload['model']}  input~{payload['input_len']} tok  output={payload['output_len']} tok  "
        f"seed={payload['seed']}",
        f"{m['cpu_model']}, {m['cpus_usable']} cores, torch {m['torch_version']}, "
        f"{m['dtype']}, {m['device']}",
        "",
        " " * label_w + "".join(h.rjust(col_w + 2) for h in headers),
    ]
    lines += [label.ljust(label_w) + "".join(c.rjust(col_w + 2) for c in cells) for label, cells in rows]
    lines += [
        "",
        "naive HF: transformers generate, one request at a time (same throughput at any concurrency).",
        "other procs' CPU: cores busy outside this benchmark and the server it started (noise).",
    ]
    if (s := payload["speedup"]) is not None:
        lines += [
            "",
            f"ours at c={s['concurrency']}: {s['ours_tok_s']:,.1f} tok/s  vs naive: "
            f"{s['naive_tok_s']:,.1f} tok/s  ->  {s['ratio']:.2f}x "
            f"(target >= {s['target']:.0f}x: {'met' if s['met'] else 'NOT met'})",
        ]
    if (peer := payload.get("ours_over_llama_cpp_at_32")) is not None:
        lines.append(
            f"ours at c={peer['concurrency']}: {peer['ours']:,.1f} tok/s  vs llama.cpp: "
            f"{peer['llama.cpp']:,.1f} tok/s  ->  {peer['ratio']:.2f}x"
        )
    for grpc in payload.get("grpc_over_embedded", []):
        lines.append(
            f"gRPC worker at c={grpc['concurrency']}: {grpc['ours-grpc']:,.1f} tok/s  vs embedded: "
            f"{grpc['ours']:,.1f} tok/s  ->  {grpc['ratio']:.2f}x"
        )
    return "\n".join(lines)


def speedup(levels: list[dict[str, Any]], baseline: dict[str, Any] | None, at: int) -> dict[str, Any] | None:
    """``ours_tok_s_at_<at> / naive_tok_s`` (at the highest level run when ``at`` was not)."""
    if not baseline or not baseline["output_tok_s"] or not levels:
        return None
    level = next(
        (lv for lv in levels if lv["concurrency"] == at), max(levels, key=lambda x: x["concurrency"])
    )
    ratio = level["output_tok_s"] / baseline["output_tok_s"]
    return {
        "concurrency": level["concurrency"],
        "ours_tok_s": level["output_tok_s"],
        "naive_tok_s": baseline["output_tok_s"],
        "ratio": round(ratio, 3),
        "target": 10.0,
        "met": ratio >= 10.0,
    }


def write_results(payload: dict[str, Any], results_dir: Path = RESULTS_DIR, name: str = "serving") -> Path:
    """Write ``<name>-<UTC stamp>.json`` and a copy as ``<name>-latest.json``."""
    results_dir.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    path = results_dir / f"{name}-{stamp}.json"
    path.write_text(json.dumps(payload, indent=2) + "\n")
    copy_latest(path, name)
    return path


def copy_latest(path: Path, name: str) -> Path:
    """Copy a result file to ``<name>-latest<suffix>`` beside it."""
    latest = path.with_name(f"{name}-latest{path.suffix}")
    shutil.copyfile(path, latest)
    return latest
