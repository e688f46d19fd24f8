"""Whether the engine's step would gain from a process of its own (vLLM's EngineCore split): a batch-1
decode step of the configured chat model, timed alone, beside a Python thread of the same process, and
beside another process, the two neighbours doing the same bursts of pure-Python work (``--burst-ms``
of every ``--period-ms``, about what the event loop and a streaming client spend per token).

A neighbour thread competes for the interpreter lock and for the cores; another process competes for
the cores only. If the step slowed more beside the thread, moving the engine core out of the gateway's
process would pay; if it slows as much or more beside the process, the cost is the cores, and only
less work per token (or more cores) helps.

    .venv/bin/python benchmarks/step_contention.py [--cpu-isa avx2] [--rounds 3]
"""

from __future__ import annotations

import argparse
import itertools
import multiprocessing as mp
import statistics
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks import report
from benchmarks.chat_model import configured_chat_model
from benchmarks.cpu_isa import ISAS, reexec_as
from benchmarks.offline_engine import greedy, make_engine
from shared_engine.compute import compute_lane
from shared_engine.llm_engine import LLMEngine

PROMPT = "Once upon a time, in a land far away,"
NEIGHBOURS = ("alone", "thread", "process")


def bursts(stop: Any, burst_s: float, period_s: float) -> None:
    """Pure-Python work for ``burst_s`` of every ``period_s`` until ``stop`` is set."""
    while not stop.is_set():
        start = time.perf_counter()
        while time.perf_counter() - start < burst_s:
            sum(range(50))
        time.sleep(period_s - burst_s)


def decode_step_ms(
    engine: LLMEngine, step: Callable[[], Any], prompt: list[int], tag: str, tokens: int
) -> float:
    """Median wall time of a lone request's decode steps."""
    engine.add_request(tag, prompt, greedy(tokens))
    ends: list[float] = []
    while engine.has_unfinished_requests():
        step()
        ends.append(time.perf_counter())
    # from the end of the step that computed the prompt: decode steps only
    return statistics.median(b - a for a, b in itertools.pairwise(ends)) * 1e3


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--cpu-isa", choices=ISAS, default="native", help="see benchmarks/cpu_isa.py")
    p.add_argument("--rounds", type=int, default=3, help="alone / thread / process, interleaved")
    p.add_argument("--tokens", type=int, default=128)
    p.add_argument("--burst-ms", type=float, default=1.0)
    p.add_argument("--period-ms", type=float, default=9.0)
    args = p.parse_args(argv)
    reexec_as(args.cpu_isa)
    chat = configured_chat_model()
    config = chat.spec.quantization_config
    quantization = config.for_device(chat.device) if config is not None else None
    lane = compute_lane(chat.device)  # as the server steps its engine
    model = lane.run(chat.build, quantization)
    engine = lane.run(make_engine, model, chat.tokenizer, chat.device, chat.dtype, 64)
    prompt = chat.tokenizer.encode(PROMPT)
    burst = (args.burst_ms / 1e3, args.period_ms / 1e3)

    def step() -> Any:
        return lane.run(engine.step)

    decode_step_ms(engine, step, prompt, "warm-up", 16)
    timings: dict[str, list[float]] = {n: [] for n in NEIGHBOURS}
    for r in range(args.rounds):
        for neighbour in NEIGHBOURS:
            stop: Any
            if neighbour == "thread":
                stop = threading.Event()
                worker: Any = threading.Thread(target=bursts, args=(stop, *burst))
            else:
                stop = mp.Event()
                worker = mp.Process(target=bursts, args=(stop, *burst))
            if neighbour != "alone":
                worker.start()
            try:
                tag = f"{neighbour}-{r}"
                timings[neighbour].append(decode_step_ms(engine, step, prompt, tag, args.tokens))
            finally:
                stop.set()
                if neighbour != "alone":
                    worker.join()
        print(", ".join(f"{n} {timings[n][-1]:.2f} ms" for n in NEIGHBOURS), flush=True)
    medians = {n: round(statistics.median(v), 3) for n, v in timings.items()}
    print(
        f"batch-1 decode step p50 (median of {args.rounds}): alone {medians['alone']:.2f} ms, "
        f"beside a thread {medians['thread']:.2f} ms, beside a process {medians['process']:.2f} ms "
        f"(neighbours: {args.burst_ms:g} ms of Python every {args.period_ms:g} ms)"
    )
    payload = {
        "benchmark": "step_contention",
        "machine": report.machine_info(chat.device, chat.dtype),
        "model": chat.spec.name,
        "burst_ms": args.burst_ms,
        "period_ms": args.period_ms,
        "decode_tokens": args.tokens,
        "step_ms": timings,
        "step_ms_median": medians,
    }
    print(f"results: {report.write_results(payload, name='step_contention')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
