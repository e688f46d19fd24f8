"""The roofline benchmark's results as plain text: the matmul and bandwidth figures, the parameter
counts, decode at each batch size against the roofs, and the torch.profiler operator breakdown."""

from __future__ import annotations

from typing import Any

from benchmarks.text_table import right_aligned


def format_profile(rows: list[dict[str, Any]], batch: int) -> str:
    header = f"{'op':<40}{'calls/step':>11}{'ms/step':>10}{'share':>8}"
    lines = [f"torch.profiler, decode at batch {batch}: operators by own time", header]
    lines += [
        f"{r['op'][:39]:<40}{r['calls_per_step']:>11}{r['self_ms_per_step']:>10.2f}{r['share']:>8.1%}"
        for r in rows
    ]
    return "\n".join(lines)


def format_table(payload: dict[str, Any]) -> str:
    m = payload["machine"]
    p = payload["params"]
    bw = payload["bandwidth"]
    lines = [
        f"{payload['model']}  {m['cpu_model']}, {m['cpus_usable']} cores, torch.get_num_threads() = "
        f"{m['torch_threads']}, torch {m['torch_version']}, engine {m['dtype']} on {m['device']}"
        + (f" ({m['gpu']})" if m["gpu"] else ""),
        f"load average before/after: {payload['loadavg_before']} / {payload['loadavg_after']}; other "
        f"processes' CPU: {payload['microbench_other_cores']} cores during matmul/bandwidth, "
        f"{payload['decode_other_cores']} during decode (median)",
        "",
        "matmul (best of runs)                      dtype        ms      GFLOP/s",
    ]
    for r in payload["matmul"]:
        lines.append(
            f"  {r['op']:<8} {r['shape']:<31} {r['dtype']:<9} {r['ms']:>9.3f} {r['gflop_s']:>12,.1f}"
        )
    for r in payload["linears"]:
        label = f"all {r['matrices']} weight matrices, batch {r['batch']}"
        lines.append(f"  {'linears':<8} {label:<31} {r['dtype']:<9} {r['ms']:>9.3f} {r['gflop_s']:>12,.1f}")
    lines += [
        "",
        f"memory bandwidth ({bw['mib']} MiB float32): copy {bw['copy_gb_s']:,.1f} GB/s (read + write), "
        f"sum {bw['read_gb_s']:,.1f} GB/s (read)",
        "",
        f"params: {p['total'] / 1e6:.1f} M unique (tied embedding once), {p['non_embedding'] / 1e6:.1f} M "
        f"non-embedding, LM head {p['lm_head'] / 1e6:.1f} M; a decode token multiplies "
        f"{p['matmul'] / 1e6:.1f} M; weights read per step (quantization {payload['quantization']}): "
        + ", ".join(f"{b / 2**20:.1f} MiB at batch {n}" for n, b in payload["weight_bytes_read"].items()),
        "",
    ]
    lines += right_aligned(_decode_rows(payload["decode"]))
    lines += [
        "",
        f"decode: {payload['prompt_len']}-token prompts, {payload['output_len']} output tokens, greedy, "
        f"median of {payload['runs']} runs; GFLOP/s all = 2 x {p['matmul'] / 1e6:.1f} M x tok/s "
        f"(non-emb: 2 x {p['non_embedding'] / 1e6:.1f} M); attention adds "
        f"~{payload['attention_share'] * 100:.0f}% more at the mean context, not counted.",
        f"% peak: of the best square matmul in {m['dtype']} ({payload['peak_gflop_s']:,.1f} GFLOP/s); "
        "% shape: of [batch x hidden] @ [hidden x intermediate];",
        "% linears: of the model's own linear layers at that batch (a step's matmuls alone); "
        "mem-bound: batch x read bandwidth / weight bytes read at that batch.",
    ]
    return "\n".join(lines)


def _decode_rows(decode: list[dict[str, Any]]) -> list[list[str]]:
    head = [
        "batch", "decode tok/s", "step ms", "GFLOP/s all", "GFLOP/s non-emb", "% peak", "% shape",
        "% linears", "mem-bound tok/s", "% mem",
    ]  # fmt: skip
    rows = [head]
    for d in decode:
        rows.append(
            [
                str(d["batch"]),
                f"{d['decode_tok_s']:,.1f}",
                f"{d['step_ms']:,.1f}",
                f"{d['achieved_gflop_s']:,.1f}",
                f"{d['achieved_gflop_s_non_embedding']:,.1f}",
                f"{d['fraction_of_peak'] * 100:.1f}",
                f"{d['fraction_of_shape_matmul'] * 100:.1f}",
                f"{d['fraction_of_linears'] * 100:.1f}",
                f"{d['memory_bound_tok_s']:,.1f}",
                f"{d['fraction_of_memory_bound'] * 100:.1f}",
            ]
        )
    return rows
