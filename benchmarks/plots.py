"""PNG plots of the serving benchmark: latency against throughput as concurrency grows, one line per
server, the naive baseline as a single point."""

from __future__ import annotations

from pathlib import Path
from typing import Any

PANELS = (("ttft_ms", "TTFT"), ("tpot_ms", "TPOT"), ("e2e_ms", "E2E latency"))


def latency_vs_throughput(payload: dict[str, Any], path: Path) -> Path | None:
    """Write the plot to ``path``; None (nothing written) when matplotlib is not installed."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    fig, axes = plt.subplots(1, len(PANELS), figsize=(5.2 * len(PANELS), 4.4), constrained_layout=True)
    targets: dict[str, list[dict[str, Any]]] = {}
    for level in payload["levels"]:
        targets.setdefault(level.get("target") or "ours", []).append(level)
    for ax, (key, label) in zip(axes, PANELS, strict=True):
        for i, (target, levels) in enumerate(targets.items()):
            levels = sorted(levels, key=lambda lv: lv["output_tok_s"] or 0.0)
            xs = [lv["output_tok_s"] for lv in levels]
            color = f"C{i}"
            ax.plot(xs, [lv[key]["p50"] for lv in levels], "o-", color=color, label=f"{target} p50")
            ax.plot(
                xs, [lv[key]["p99"] for lv in levels], "o--", color=color, alpha=0.5, label=f"{target} p99"
            )
            for lv in levels:
                ax.annotate(f"c={lv['concurrency']}", (lv["output_tok_s"], lv[key]["p50"]), fontsize=7,
                            textcoords="offset points", xytext=(4, 4))  # fmt: skip
        if (naive := payload.get("baseline")) and naive[key]["p50"] is not None:
            ax.plot([naive["output_tok_s"]], [naive[key]["p50"]], "kx", markersize=9, label="naive HF p50")
        ax.set_xlabel("output tokens/s (all requests)")
        ax.set_ylabel(f"{label} (ms)")
        ax.set_yscale("log")
        ax.grid(True, which="both", alpha=0.3)
        ax.set_title(label)
    axes[0].legend(fontsize=7)
    m = payload["machine"]
    fig.suptitle(
        f"{payload['model']}: {payload['input_len']} in / {payload['output_len']} out tokens, "
        f"{m['cpu_model']} ({m['cpus_usable']} cores), {m['dtype']}, {m['device']}",
        fontsize=9,
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
