"""Which cores a worker process computes on: the CPU lists ``--cpus`` takes (as ``taskset -c`` writes
them), how the topology shares a machine's cores between chat replicas, and holding a process to its own.

Two processes whose OpenMP teams run on the same cores at once slow each other far more than by half:
a team waits at every barrier of a parallel region for a thread the other process has preempted, and a
decode step is hundreds of short regions. Measured on 2 cores, 8 and 32 streams spread over two chat
replicas ran at 0.12x and 0.11x the tokens/s of one engine (``benchmarks/serving.py --targets
ours,ours-grpc``). Replicas on cores of their own do not meet.
"""

from __future__ import annotations

import os


def parse_cpu_list(text: str) -> tuple[int, ...]:
    """``"0-3,6"`` → ``(0, 1, 2, 3, 6)``; ValueError for anything else, empty lists included."""
    cpus: set[int] = set()
    for part in text.split(","):
        first, dash, last = part.strip().partition("-")
        if not first.isdigit() or (dash and not last.isdigit()):
            raise ValueError(f"not a CPU list: {text!r} (expected e.g. 0-3,6)")
        low, high = int(first), int(last) if dash else int(first)
        if high < low:
            raise ValueError(f"not a CPU list: {text!r} ({part.strip()} runs backwards)")
        cpus.update(range(low, high + 1))
    return tuple(sorted(cpus))


def format_cpu_list(cpus: tuple[int, ...]) -> str:
    """The inverse of :func:`parse_cpu_list`, ranges collapsed."""
    runs: list[list[int]] = []
    for cpu in sorted(cpus):
        if runs and cpu == runs[-1][1] + 1:
            runs[-1][1] = cpu
        else:
            runs.append([cpu, cpu])
    return ",".join(str(a) if a == b else f"{a}-{b}" for a, b in runs)


def split_cores(cpus: tuple[int, ...], parts: int) -> list[tuple[int, ...]]:
    """``cpus`` in ``parts`` contiguous slices as even as they go; with fewer cores than parts, one core
    each, in turn (parts that share a core then take turns on it rather than wait on each other)."""
    if parts < 1 or not cpus:
        raise ValueError(f"cannot split {len(cpus)} cores in {parts}")
    if len(cpus) < parts:
        return [(cpus[i % len(cpus)],) for i in range(parts)]
    bounds = [len(cpus) * i // parts for i in range(parts + 1)]
    return [cpus[bounds[i] : bounds[i + 1]] for i in range(parts)]


def usable_cpus() -> tuple[int, ...]:
    return tuple(sorted(os.sched_getaffinity(0)))


def hold_to(cpus: tuple[int, ...]) -> None:
    """Run this process on ``cpus`` only (each of its threads, and those it starts later), with one OpenMP
    thread per core (fewer where ``OMP_NUM_THREADS`` says so). Call it before any model is loaded."""
    if unusable := set(cpus) - set(usable_cpus()):
        raise ValueError(f"CPUs {format_cpu_list(tuple(sorted(unusable)))} are not available to this process")
    os.sched_setaffinity(0, cpus)  # this thread, and so every thread started from now on
    for tid in os.listdir("/proc/self/task"):  # threads imports started already (Linux names them here)
        try:
            os.sched_setaffinity(int(tid), cpus)
        except ProcessLookupError:  # it ended meanwhile
            continue
    import torch  # here, not at the top: the topology uses this module and never loads torch

    asked = os.environ.get("OMP_NUM_THREADS", "")
    torch.set_num_threads(min(len(cpus), int(asked)) if asked.isdigit() and int(asked) > 0 else len(cpus))
