"""The compile benchmark's results as a plain-text table: per variant its warm-up and compile cost, what
dynamo did, decode speed against eager's and agreement with eager's tokens; then the recompiles, graph
breaks and errors."""

from __future__ import annotations

from typing import Any

from benchmarks.text_table import right_aligned


def fmt_ratio(x: float | None) -> str:
    return "-" if x is None else f"{x:.2f}x"


def format_table(payload: dict[str, Any]) -> str:
    m = payload["machine"]
    batches = payload["batches"]
    head = ["variant", "warm-up s", "compile s", "graphs", "recompiles", "breaks"]
    for b in batches:
        head += [f"b{b} tok/s", f"b{b} step ms", f"b{b} vs eager"]
    head += [f"{payload['dtype_name']} same", f"{payload['check'].get('dtype', '-')} same"]
    rows = [head] + [_variant_row(v, batches, payload["check"]) for v in payload["variants"]]
    lines = [
        f"{payload['model']}  {m['cpu_model']}, {m['cpus_usable']} cores, torch.get_num_threads() = "
        f"{m['torch_threads']}, torch {m['torch_version']}, {m['dtype']} on {m['device']}",
        f"load average before/after: {payload['loadavg_before']} / {payload['loadavg_after']}; other "
        f"processes' CPU during decode runs: median {payload['other_cores_median']} cores "
        f"(max {payload['other_cores_max']})",
        "",
    ]
    lines += right_aligned(rows)
    lines += [
        "",
        f"decode: {payload['prompt_len']}-token prompts, {payload['output_len']} output tokens, greedy, "
        f"median of {payload['rounds']} interleaved rounds. compile s: warm-up minus eager's "
        f"({'cold' if payload['cold_cache'] else 'warm'} inductor cache).",
        "recompiles: in the warm-up + during the timed rounds; breaks: graph breaks. same: greedy "
        "sequences identical to eager's (per batch size; then the check in its dtype).",
    ]
    return "\n".join(lines + _notes(payload))


def _variant_row(v: dict[str, Any], batches: list[int], check: dict[str, Any]) -> list[str]:
    row = [
        v["name"],
        f"{v['warmup_s']:.1f}" if v.get("warmup_s") is not None else "-",
        f"{v['compile_s']:.1f}" if v.get("compile_s") is not None else "-",
        str(v.get("graphs", "-")),
        f"{v.get('recompiles', '-')}+{v.get('recompiles_after_warmup', '-')}",
        str(v.get("graph_breaks", "-")),
    ]
    for b in batches:
        d = v.get("decode", {}).get(str(b))  # none for a variant that failed to compile
        row += (
            [f"{d['decode_tok_s']:,.1f}", f"{d['step_ms']:,.1f}", fmt_ratio(d.get("speedup"))]
            if d
            else ["-", "-", "-"]
        )
    same = [
        f"{a['identical']}/{a['sequences']}" for a in (v.get("agreement") or {}).values() if "identical" in a
    ]
    row.append(" ".join(same) or "ref")
    chk = check.get("variants", {}).get(v["name"])
    if v["name"] == "eager":
        row.append("ref")
    elif chk is None:
        row.append("-")
    else:
        row.append("error" if "error" in chk else f"{chk['identical']}/{chk['sequences']}")
    return row


def _notes(payload: dict[str, Any]) -> list[str]:
    """The recompiles (first failed guard), graph breaks and errors of every variant, if any."""
    lines: list[str] = []
    reasons = [(v["name"], r) for v in payload["variants"] for r in v.get("recompile_reasons", [])]
    if reasons:
        lines += ["", "recompiles (first failed guard):"]
        lines += [f"  {name}: {r}" for name, r in reasons]
    breaks = [
        (v["name"], k, n) for v in payload["variants"] for k, n in v.get("graph_break_reasons", {}).items()
    ]
    if breaks:
        lines += ["", "graph breaks:"] + [f"  {name}: {n} x {k}" for name, k, n in breaks]
    errors = [(v["name"], v["error"]) for v in payload["variants"] if v.get("error")]
    errors += [
        (f"{k} (check)", c["error"]) for k, c in payload["check"].get("variants", {}).items() if "error" in c
    ]
    if errors:
        lines += ["", "errors:"] + [f"  {name}: {e}" for name, e in errors]
    return lines
