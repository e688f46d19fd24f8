"""CPU lists as ``--cpus`` takes them, and how the topology shares a machine's cores between chat
replicas (services/commands/cpus.py, topology.plan)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from services.commands.cpus import format_cpu_list, parse_cpu_list, split_cores
from services.commands.topology import plan, worker_env


@pytest.mark.parametrize(
    ("text", "cpus"),
    [("0", (0,)), ("0-3,6", (0, 1, 2, 3, 6)), ("6,0-1,1", (0, 1, 6)), (" 2 , 4-5", (2, 4, 5))],
)
def test_cpu_lists_parse_as_taskset_writes_them(text: str, cpus: tuple[int, ...]) -> None:
    assert parse_cpu_list(text) == cpus
    assert parse_cpu_list(format_cpu_list(cpus)) == cpus


def test_formatting_collapses_runs() -> None:
    assert format_cpu_list((0, 1, 2, 3, 6, 8, 9)) == "0-3,6,8-9"


@pytest.mark.parametrize("bad", ["", "a", "1-", "-1", "3-1", "0,,1", "1.5"])
def test_bad_cpu_lists_are_refused(bad: str) -> None:
    with pytest.raises(ValueError, match="CPU list"):
        parse_cpu_list(bad)


def test_cores_split_into_contiguous_even_slices() -> None:
    assert split_cores((0, 1), 2) == [(0,), (1,)]
    assert split_cores(tuple(range(8)), 3) == [(0, 1), (2, 3, 4), (5, 6, 7)]
    assert split_cores((4, 5, 6, 7), 1) == [(4, 5, 6, 7)]
    # more parts than cores: one core each, in turn
    assert split_cores((0, 1), 3) == [(0,), (1,), (0,)]
    with pytest.raises(ValueError):
        split_cores((), 2)


def test_the_topology_gives_chat_replicas_cores_of_their_own_and_leaves_other_workers_free() -> None:
    workers = plan({"chat": 2, "vision": 2}, base_port=0, cpus=(0, 1, 2, 3))
    chat = [w for w in workers if w.task == "chat"]
    assert [w.cpus for w in chat] == [(0, 1), (2, 3)]
    assert [w.command()[-2:] for w in chat] == [["--cpus", "0-1"], ["--cpus", "2-3"]]
    others = [w for w in workers if w.task != "chat"]
    assert others and all(w.cpus is None and "--cpus" not in w.command() for w in others)
    # one chat worker keeps every core
    (single,) = [w for w in plan({"chat": 1}, base_port=0, cpus=(0, 1)) if w.task == "chat"]
    assert single.cpus is None


def test_the_topologys_retrieval_worker_embeds_through_the_embedding_and_vision_workers(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """As compose.yaml has it: only the retrieval worker is routed, and only to those two tasks."""
    monkeypatch.setenv("MMSERVE_ENDPOINTS", "chat=elsewhere:1")
    workers = plan({"embedding": 2}, base_port=50_100, cpus=(0, 1))
    by_task = {w.task: w for w in workers}
    embedding = ",".join(w.address for w in workers if w.task == "embedding")
    routed = worker_env(by_task["retrieval"], workers)["MMSERVE_ENDPOINTS"]
    assert routed == f"embedding={embedding};vision={by_task['vision'].address}"
    assert all("MMSERVE_ENDPOINTS" not in worker_env(w, workers) for w in workers if w.task != "retrieval")


def _held(cpus: str, omp_threads: str | None) -> tuple[list[int], int]:
    """The cores and torch threads of a fresh process held to ``cpus``."""
    env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}
    if omp_threads is not None:
        env["OMP_NUM_THREADS"] = omp_threads
    code = (
        "import os, torch; from services.commands.cpus import hold_to, parse_cpu_list; "
        f"hold_to(parse_cpu_list({cpus!r})); print(sorted(os.sched_getaffinity(0)), torch.get_num_threads())"
    )
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    cores, threads = out.stdout.strip().rsplit(" ", 1)
    return json.loads(cores), int(threads)


def test_a_process_held_to_cores_runs_one_thread_per_core_unless_told_fewer() -> None:
    usable = sorted(os.sched_getaffinity(0))
    assert _held(str(usable[-1]), None) == ([usable[-1]], 1)
    every = format_cpu_list(tuple(usable))
    assert _held(every, None) == (usable, len(usable))
    assert _held(every, "1") == (usable, 1)
