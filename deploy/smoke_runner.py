"""The smoke test's machinery (deploy/compose_smoke.py runs the scenario): steps with their outcomes, and the
compose project's image build, `up` until every service is healthy, logs and `down`."""

from __future__ import annotations

import argparse
import os
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from compose_engine import ROOT, Compose, Container
from smoke_tasks import Session, StepFailed

GATEWAY_PORT = 8000  # compose.yaml publishes the gateway's 8000 on the host's 8000
POLL_S = 5.0
PROGRESS_S = 30.0


@dataclass
class Outcome:
    name: str
    status: str  # PASS, FAIL, SKIP
    seconds: float
    detail: str


@dataclass
class Smoke:
    args: argparse.Namespace
    compose: Compose
    session: Session
    log_dir: Path
    outcomes: list[Outcome] = field(default_factory=list)
    aborted: bool = False

    def step(self, name: str, run: Callable[[], str], *, fatal: bool = False) -> bool:
        """Runs one step and prints its outcome; after a failed fatal step every later one is skipped."""
        if self.aborted:
            self.record(Outcome(name, "SKIP", 0.0, "an earlier step failed"))
            return False
        print(f"--- {name}", flush=True)
        start = time.monotonic()
        try:
            outcome = Outcome(name, "PASS", 0.0, run())
        except Exception as error:  # any failure is the step's outcome, reported with the others
            outcome = Outcome(name, "FAIL", 0.0, f"{type(error).__name__}: {error}")
            self.aborted = fatal
        except BaseException as stop:  # Ctrl-C or SIGTERM: reported, then on to the `finally` that cleans up
            seconds = time.monotonic() - start
            self.record(Outcome(name, "FAIL", seconds, f"interrupted ({type(stop).__name__})"))
            raise
        outcome.seconds = time.monotonic() - start
        self.record(outcome)
        return outcome.status == "PASS"

    def record(self, outcome: Outcome) -> None:
        self.outcomes.append(outcome)
        print(f"[{outcome.status}] {outcome.name} ({outcome.seconds:.1f} s): {outcome.detail}", flush=True)


# --------------------------------------------------------------------------------------------------
# Build, up, health


def run_logged(argv: list[str], env: dict[str, str], log: Path, timeout: float, label: str) -> None:
    """A long command with its output in `log`, a progress line every minute, its tail on failure."""
    start = time.monotonic()
    with log.open("w") as out:
        process = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, cwd=ROOT, env=env)
        while process.poll() is None:
            if time.monotonic() - start > timeout:
                process.kill()
                raise StepFailed(f"{label} ran past {timeout:.0f} s (log: {log})")
            time.sleep(POLL_S)
            if int(time.monotonic() - start) % 60 < POLL_S:
                print(f"    {label}: {time.monotonic() - start:.0f} s, {last_line(log)}", flush=True)
    if process.returncode != 0:
        tail = "\n".join(log.read_text(errors="replace").splitlines()[-30:])
        raise StepFailed(f"{label} exited {process.returncode} (log: {log})\n{tail}")


def last_line(log: Path) -> str:
    lines = log.read_text(errors="replace").strip().splitlines()
    return lines[-1][:100] if lines else ""


def build(smoke: Smoke) -> str:
    engine, args = smoke.compose.engine, smoke.args
    argv = [engine.docker, "build", "-t", "mmserve:latest", "--progress", "plain"]
    argv += ["--network", args.build_network] if args.build_network != "default" else []
    argv += ["--build-arg", f"TORCH_INDEX={args.torch_index}"] if args.torch_index else []
    run_logged([*argv, "."], {**os.environ, **engine.build_env}, smoke.log_dir / "build.log",
               args.build_timeout, "docker build")  # fmt: skip
    size = subprocess.run([engine.docker, "image", "inspect", "-f", "{{.Size}}", "mmserve:latest"],
                          capture_output=True, text=True, check=True).stdout  # fmt: skip
    return f"mmserve:latest, {int(size) / 1e9:.1f} GB ({' '.join(argv[1:])} .)"


def ready(containers: list[Container], replicas: dict[str, int]) -> bool:
    """prepare exited 0, every container with a healthcheck healthy, the gateway among them, and as
    many healthy replicas of each service as asked for."""
    healthy = [c.service for c in containers if c.health == "healthy"]
    settled = all(c.health == "healthy" or (c.status, c.exit_code) == ("exited", 0) for c in containers)
    enough = all(healthy.count(service) >= n for service, n in replicas.items())
    return settled and enough and "gateway" in healthy


def failed_one_shot(containers: list[Container]) -> Container | None:
    failed = (c for c in containers if c.health is None and c.status == "exited" and c.exit_code != 0)
    return next(failed, None)


def status_line(containers: list[Container]) -> str:
    return " · ".join(f"{c.service}: {c.summary()}" for c in containers) or "no containers yet"


def up_until_ready(smoke: Smoke, replicas: dict[str, int], *up_args: str) -> str:
    """`up -d` in the background (it blocks while it waits on the health conditions of depends_on) while
    the containers' states are polled; if `up` gives up on a dependency that is still loading, it runs
    again, up to 3 times, once nothing is starting any more."""
    compose, log = smoke.compose, smoke.log_dir / "up.log"
    start, shown, attempts = time.monotonic(), -PROGRESS_S, 1
    process = compose.start("up", "-d", "--no-build", *up_args, log=log)
    try:
        while True:
            elapsed = time.monotonic() - start
            containers = compose.containers()
            if (broken := failed_one_shot(containers)) is not None:
                raise StepFailed(f"{broken.service} exited {broken.exit_code}\n{logs_tail(smoke, broken)}")
            if process.poll() is not None and ready(containers, replicas):
                note = f", `up` run {attempts} times (see {log})" if attempts > 1 else ""
                return f"ready after {elapsed:.0f} s{note}: {status_line(containers)}"
            if elapsed > smoke.args.ready_timeout:
                stuck = [c for c in containers if c.health not in ("healthy", None)]
                tails = "\n".join(logs_tail(smoke, c) for c in stuck)
                raise StepFailed(f"not ready after {elapsed:.0f} s: {status_line(containers)}\n{tails}")
            if process.poll() not in (None, 0) and not any(c.health == "starting" for c in containers):
                if attempts == 3:
                    raise StepFailed(f"`up` failed 3 times: {last_line(log)}")
                print(f"    `up` exited {process.returncode}: {last_line(log)}; running it again", flush=True)
                attempts += 1
                process = compose.start("up", "-d", "--no-build", *up_args, log=log)
            if elapsed - shown >= PROGRESS_S:
                print(f"    [{elapsed:5.0f} s] {status_line(containers)}", flush=True)
                shown = elapsed
            time.sleep(POLL_S)
    finally:
        if process.poll() is None:
            process.terminate()


def logs_tail(smoke: Smoke, container: Container, lines: int = 15) -> str:
    answer = subprocess.run([smoke.compose.engine.docker, "logs", "--tail", str(lines), container.id],
                            capture_output=True, text=True, check=False)  # fmt: skip
    body = (answer.stdout + answer.stderr).rstrip()
    indented = "\n".join(f"    {line}" for line in body.splitlines())
    return f"  {container.service} ({container.id}), last lines:\n{indented}"


def down(smoke: Smoke) -> str:
    answer = smoke.compose.run("down", "--volumes", "--remove-orphans", "-t", "30", timeout=600)
    left = smoke.compose.containers()
    if answer.returncode != 0 or left:
        raise StepFailed(f"down exited {answer.returncode}: {answer.stderr.strip()[-300:]}; left: {left}")
    return "containers, network and volumes removed"


def save_logs(smoke: Smoke) -> None:
    answer = smoke.compose.run("logs", "--no-color", "-t", timeout=120)
    (smoke.log_dir / "compose.log").write_text(answer.stdout + answer.stderr)
    print(f"    services' logs saved to {smoke.log_dir / 'compose.log'}", flush=True)
