"""Our server as a subprocess of the benchmark: started on a free port, awaited, and stopped."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx

REPO_ROOT = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class Server:
    url: str
    pid: int | None  # None for a server this benchmark did not start


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_ready(base_url: str, proc: subprocess.Popen[bytes] | None, timeout: float) -> None:
    """Poll GET /ready until it answers 200; fail early if the server process exits."""
    deadline = time.monotonic() + timeout
    with httpx.Client(timeout=5.0) as client:
        while time.monotonic() < deadline:
            if proc is not None and proc.poll() is not None:
                raise RuntimeError(f"server exited with code {proc.returncode} before it was ready")
            try:
                if client.get(f"{base_url}/ready").status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.5)
    raise TimeoutError(f"{base_url}/ready did not answer 200 within {timeout:.0f}s")


def stop(proc: subprocess.Popen[bytes], grace: float = 20.0) -> None:
    if proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


@contextmanager
def local_server(
    ready_timeout: float,
    module: str = "services.commands.serve",
    args: tuple[str, ...] = (),
    extra_env: dict[str, str] | None = None,
) -> Iterator[Server]:
    """Start ``python -m <module>`` (the gateway, or the whole distributed topology) and yield it;
    stop it on exit."""
    port = free_port()
    env = {**os.environ, "HOST": "127.0.0.1", "PORT": str(port), "MMSERVE_LOG_LEVEL": "warning"}
    env.update(extra_env or {})
    proc = subprocess.Popen([sys.executable, "-m", module, *args], cwd=REPO_ROOT, env=env)
    base_url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(base_url, proc, ready_timeout)
        yield Server(base_url, proc.pid)
    finally:
        stop(proc)


@contextmanager
def remote_server(base_url: str, ready_timeout: float) -> Iterator[Server]:
    wait_ready(base_url, None, ready_timeout)
    yield Server(base_url, None)


def resolve_model_folder(model: str) -> Path:
    """The converted Hugging Face folder of ``model``, as ``services.commands.prepare`` prints it."""
    out = subprocess.run(
        [sys.executable, "-m", "services.commands.prepare"],
        cwd=REPO_ROOT,
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    for line in out.splitlines():
        name, sep, path = line.partition(": ")
        if sep and name.strip() == model:
            return Path(path.strip())
    raise LookupError(f"services.commands.prepare printed no folder for model {model!r}:\n{out}")
