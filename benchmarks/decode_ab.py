"""Two checkouts' decode step, interleaved in time: each runs the configured chat model's offline engine in
its own process (its own kernel build), and they take turns of ``--steps`` decode steps, ``--rounds``
times (which goes first alternates), with the read bandwidth measured between their turns.

A machine whose memory bandwidth drifts (this VM's reads swing between ~50 and ~90 GB/s from one minute to
the next) makes runs of one checkout after the other compare the machine, not the code: here every turn of
one has a turn of the other beside it. Per round, each turn's share of the memory-bound rate uses the
bandwidth measured next to it: the weight bytes a step reads at ``--batch`` rows (as
``benchmarks/roofline.py`` counts them) over that bandwidth, against the turn's median step.

    .venv/bin/python benchmarks/decode_ab.py --before ../older-checkout --after . [--batch 1] [--rounds 30]

Each checkout runs with this interpreter and its folder first on ``sys.path``; another checkout than
this script's builds its kernels in its own ``TORCH_EXTENSIONS_DIR`` (``<checkout>/.torch_ext``). Both
read the model from ``MMSERVE_MODEL_CACHE`` (default: each checkout's ``.data/models``). Steps are pure
decode: ``--batch`` greedy requests of 128 prompt tokens and 256 output tokens, replaced when they
finish (their prefill is not timed).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

OUTPUT_TOKENS = 256
PROMPT_TOKENS = 128


def worker(batch: int) -> None:
    """One checkout's side: reports the weight bytes a step reads, then answers each line ``N`` on stdin
    with the wall times of N decode steps (ms), as JSON lines on stdout."""
    sys.path.insert(0, os.getcwd())
    # The replies keep the original stdout; anything else written there, from Python or native code or
    # a compiler the kernel build starts, goes to stderr.
    protocol = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)
    import torch

    from benchmarks.chat_model import configured_chat_model
    from benchmarks.offline_engine import corpus_ids, decode_prompts, greedy, kv_blocks, make_engine
    from benchmarks.roofline_model import weight_bytes_read
    from shared_engine import cpu_kernels

    chat = configured_chat_model()
    config = chat.spec.quantization_config
    model = chat.build(config.for_device(chat.device) if config is not None else None)
    prompts = decode_prompts(corpus_ids(chat.tokenizer), batch, PROMPT_TOKENS)
    blocks = kv_blocks(batch, PROMPT_TOKENS, OUTPUT_TOKENS)
    engine = make_engine(model, chat.tokenizer, chat.device, chat.dtype, blocks)
    engine.generate(prompts, greedy(4))
    reply = {
        "bytes": weight_bytes_read(model, batch, chat.dtype),
        "threads": torch.get_num_threads(),
        "dtype": str(chat.dtype),
        "cpu_kernels": cpu_kernels.usable(chat.device),
        "layer_stack": getattr(model, "decode_layers", None) is not None,
    }
    print(json.dumps(reply), file=protocol, flush=True)
    added = 0
    for line in sys.stdin:
        times: list[float] = []
        while len(times) < int(line):
            if not engine.has_unfinished_requests():
                rids = [f"r{added + i}" for i in range(len(prompts))]
                for rid, prompt in zip(rids, prompts, strict=True):
                    engine.add_request(rid, prompt, greedy(OUTPUT_TOKENS))
                added, waiting = added + len(rids), set(rids)
                while waiting:  # prefill steps (a long batch's may be several) are not timed
                    waiting -= {o.request_id for o in engine.step() if o.token_ids}
                continue
            start = time.perf_counter()
            engine.step()
            times.append((time.perf_counter() - start) * 1e3)
        print(json.dumps({"steps_ms": times}), file=protocol, flush=True)


class Checkout:
    def __init__(self, name: str, folder: Path, batch: int) -> None:
        self.name, self.folder = name, folder
        env = dict(os.environ)
        if folder != Path(__file__).resolve().parent.parent:  # the same sources would share a build folder
            env["TORCH_EXTENSIONS_DIR"] = str(folder / ".torch_ext")
        command = [sys.executable, str(Path(__file__).resolve()), "--worker", "--batch", str(batch)]
        self.process = subprocess.Popen(
            command, cwd=folder, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
        )
        self.info = self._read()

    def _read(self) -> dict[str, Any]:
        assert self.process.stdout is not None
        line = self.process.stdout.readline()
        if not line:
            raise RuntimeError(f"{self.name} ({self.folder}) exited: {self.process.wait()}")
        try:
            reply: dict[str, Any] = json.loads(line)
        except json.JSONDecodeError:
            raise RuntimeError(f"{self.name} ({self.folder}) answered {line[:200]!r}, not JSON") from None
        return reply

    def steps(self, count: int) -> list[float]:
        assert self.process.stdin is not None
        self.process.stdin.write(f"{count}\n")
        self.process.stdin.flush()
        times: list[float] = self._read()["steps_ms"]
        return times

    def close(self) -> None:
        if self.process.stdin is not None:
            self.process.stdin.close()
        try:
            self.process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def summary(name: str, rounds: list[dict[str, Any]], batch: int) -> dict[str, Any]:
    steps = [t for r in rounds for t in r[name]["steps_ms"]]
    fractions = [r[name]["fraction_of_memory_bound"] for r in rounds]
    step = statistics.median(steps)
    return {
        "step_ms_median": round(step, 3),
        "decode_tok_s": round(batch * 1e3 / step, 1),
        "fraction_of_memory_bound_median": round(statistics.median(fractions), 4),
        "fraction_of_memory_bound_range": [round(min(fractions), 4), round(max(fractions), 4)],
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--before", type=Path, help="the checkout to compare against")
    p.add_argument("--after", type=Path, default=Path("."), help="the checkout compared (default: this one)")
    p.add_argument("--batch", type=int, default=1, help="decode requests at once")
    p.add_argument("--rounds", type=int, default=30)
    p.add_argument("--steps", type=int, default=32, help="decode steps per turn")
    p.add_argument("--bw-mib", type=int, default=256, help="size of the bandwidth test tensor")
    p.add_argument("--results-dir", type=Path, default=None, help="default: benchmarks/results")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        worker(args.batch)
        return 0
    if args.before is None:
        p.error("--before is required")

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    import torch

    from benchmarks import report
    from benchmarks.roofline_microbench import bandwidth

    loadavg = os.getloadavg()
    cpu = torch.device("cpu")
    sides = {"before": args.before.resolve(), "after": args.after.resolve()}
    print(f"starting both checkouts (kernels build on first use): {sides}", flush=True)
    checkouts: dict[str, Checkout] = {}
    rounds: list[dict[str, Any]] = []
    try:
        for name, folder in sides.items():
            checkouts[name] = Checkout(name, folder, args.batch)
            info = checkouts[name].info
            print(f"{name}: CPU kernels {info['cpu_kernels']}, layer stack {info['layer_stack']}", flush=True)
        for index in range(args.rounds):
            order = ["before", "after"] if index % 2 == 0 else ["after", "before"]
            times = {order[0]: checkouts[order[0]].steps(args.steps)}
            read_gb_s = bandwidth(args.bw_mib, cpu, reps=3, min_time=0.02)["read_gb_s"]
            times[order[1]] = checkouts[order[1]].steps(args.steps)
            entry: dict[str, Any] = {"read_gb_s": read_gb_s}
            for name in sides:
                step = statistics.median(times[name])
                bound_ms = checkouts[name].info["bytes"] / (read_gb_s * 1e9) * 1e3
                entry[name] = {"steps_ms": [round(t, 3) for t in times[name]], "step_ms": round(step, 3)}
                entry[name]["fraction_of_memory_bound"] = round(bound_ms / step, 4)
            rounds.append(entry)
            print(
                f"round {index + 1}/{args.rounds}: {read_gb_s:.1f} GB/s, step before "
                f"{entry['before']['step_ms']:.3f} ms, after {entry['after']['step_ms']:.3f} ms",
                flush=True,
            )
    finally:
        for checkout in checkouts.values():
            checkout.close()
    result = {name: summary(name, rounds, args.batch) for name in sides}
    faster = sum(r["after"]["step_ms"] < r["before"]["step_ms"] for r in rounds)
    ratios = [r["before"]["step_ms"] / r["after"]["step_ms"] for r in rounds]
    dtype = getattr(torch, checkouts["after"].info["dtype"].removeprefix("torch."))
    payload = report.run_header("decode_ab", "the configured chat model", cpu, dtype, loadavg)
    payload.update(
        checkouts={name: str(folder) for name, folder in sides.items()},
        weight_bytes_read={name: c.info["bytes"] for name, c in checkouts.items()},
        paths={name: {k: c.info[k] for k in ("cpu_kernels", "layer_stack")} for name, c in checkouts.items()},
        threads=checkouts["after"].info["threads"],
        batch=args.batch,
        steps_per_turn=args.steps,
        summary=result,
        speedup_median=round(statistics.median(ratios), 4),
        rounds_after_faster=faster,
        rounds=rounds,
    )
    for name in sides:
        r = result[name]
        low, high = r["fraction_of_memory_bound_range"]
        print(
            f"{name}: step {r['step_ms_median']:.3f} ms ({r['decode_tok_s']:.1f} tok/s), "
            f"{100 * r['fraction_of_memory_bound_median']:.1f}% of the memory-bound rate "
            f"(rounds {100 * low:.1f}-{100 * high:.1f}%)"
        )
    speedup = payload["speedup_median"]
    print(f"after / before: {speedup:.3f}x (median of rounds); after faster in {faster} of {len(rounds)}")
    results_dir = args.results_dir or report.RESULTS_DIR
    print(f"results: {report.write_results(payload, results_dir, name='decode-ab')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
