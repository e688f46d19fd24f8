"""``python -m services.commands.topology``: the distributed topology as local processes on loopback — one
gRPC worker per task (or several replicas), then the gateway routed to them — for machines with no
container engine (``make serve-distributed``). Each worker serves Prometheus metrics on a free port of
its own, printed at start (``metrics: chat=http://127.0.0.1:PORT/metrics,...;embedding=...``). Ctrl-C or
SIGTERM stops every process.

With several chat replicas, each is held to cores of its own (``worker --cpus``; services/commands/cpus.py
says why): the machine's cores are split between them. The other workers compute in short bursts and
may use every core."""

from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass

from services.commands.cpus import format_cpu_list, split_cores, usable_cpus
from services.config.settings import REMOTE_TASKS, Settings
from services.gateway.lifecycle import CUT_WAIT_S

BASE_PORT = 50061
DEFAULT_REPLICAS = {"chat": 2}  # two LLM replicas: requests round-robin, and one may fail over
# Tasks whose replicas run long busy stretches side by side, so are given cores of their own.
PARTITIONED_TASKS = ("chat",)


@dataclass(frozen=True)
class Worker:
    task: str
    port: int
    metrics_port: int
    cpus: tuple[int, ...] | None = None  # None: every core

    def command(self) -> list[str]:
        cmd = [sys.executable, "-m", "services.commands.worker", "--task", self.task, "--host", "127.0.0.1"]
        cmd += ["--port", str(self.port), "--metrics-port", str(self.metrics_port)]
        return cmd if self.cpus is None else [*cmd, "--cpus", format_cpu_list(self.cpus)]

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def plan(
    replicas: dict[str, int], base_port: int = BASE_PORT, cpus: tuple[int, ...] | None = None
) -> list[Worker]:
    """Workers per task, their ports (consecutive from ``base_port``, or free ones when it is 0) and, for
    several replicas of a partitioned task, the slice of ``cpus`` (default: this process's) each runs on."""
    cores = usable_cpus() if cpus is None else cpus
    workers: list[Worker] = []
    for task in REMOTE_TASKS:
        count = replicas.get(task, DEFAULT_REPLICAS.get(task, 1))
        slices = split_cores(cores, count) if count > 1 and task in PARTITIONED_TASKS else [None] * count
        for cpu_slice in slices:
            port = base_port + len(workers) if base_port else free_port()
            workers.append(Worker(task, port, free_port(), cpu_slice))
    return workers


def _by_task(workers: list[Worker], address: Callable[[Worker], str]) -> str:
    by_task: dict[str, list[str]] = {}
    for w in workers:
        by_task.setdefault(w.task, []).append(address(w))
    return ";".join(f"{task}={','.join(addresses)}" for task, addresses in by_task.items())


def endpoints(workers: list[Worker]) -> str:
    return _by_task(workers, lambda w: w.address)


def metrics_urls(workers: list[Worker]) -> str:
    return _by_task(workers, lambda w: f"http://127.0.0.1:{w.metrics_port}/metrics")


def parse_replicas(items: list[str]) -> dict[str, int]:
    out: dict[str, int] = {}
    for item in items:
        task, _, count = item.partition("=")
        if task not in REMOTE_TASKS or not count.isdigit() or int(count) < 1:
            raise SystemExit(f"--replicas {item!r}: expected TASK=N with TASK in {', '.join(REMOTE_TASKS)}")
        out[task] = int(count)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument(
        "--replicas", nargs="*", default=[], metavar="TASK=N", help="workers per task (default 1)"
    )
    parser.add_argument("--base-port", type=int, default=BASE_PORT, help="first worker port (0: free ports)")
    args = parser.parse_args(argv)
    workers = plan(parse_replicas(args.replicas), args.base_port)
    procs = [subprocess.Popen(w.command(), env=worker_env(w, workers)) for w in workers]
    env = {**os.environ, "MMSERVE_ENDPOINTS": endpoints(workers)}
    print(f"workers: {env['MMSERVE_ENDPOINTS']}", flush=True)
    print(f"metrics: {metrics_urls(workers)}", flush=True)
    if pinned := [w for w in workers if w.cpus is not None]:
        print("cores: " + ", ".join(f"{w.task}@{w.port}={format_cpu_list(w.cpus or ())}" for w in pinned))
    gateway = subprocess.Popen([sys.executable, "-m", "services.commands.serve"], env=env)
    stopping = False

    def stop(*_: object) -> None:
        nonlocal stopping
        if stopping and gateway.poll() is None:  # a second signal: the gateway cuts what still runs
            gateway.send_signal(signal.SIGTERM)
        stopping = True

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    while not stopping and gateway.poll() is None:
        time.sleep(0.5)
    # The gateway drains first (its requests still need the workers), then the workers stop.
    _stop(gateway, Settings.from_env(dict(os.environ)).shutdown_grace_s + CUT_WAIT_S + 10)
    for p in procs:
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
    for p in procs:
        _stop(p, 30, signal_first=False)
    return gateway.returncode or 0


def worker_env(worker: Worker, workers: list[Worker]) -> dict[str, str]:
    """A worker's environment: the retrieval worker embeds through the embedding and vision workers, as
    compose.yaml has it, instead of loading their models itself."""
    env = dict(os.environ)
    env.pop("MMSERVE_ENDPOINTS", None)
    if worker.task == "retrieval":
        env["MMSERVE_ENDPOINTS"] = endpoints([w for w in workers if w.task in ("embedding", "vision")])
    return env


def _stop(proc: subprocess.Popen[bytes], timeout: float, signal_first: bool = True) -> None:
    if signal_first and proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()


if __name__ == "__main__":
    sys.exit(main())
