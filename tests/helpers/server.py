"""Start a real server process on loopback for API tests, and stop it again.

Used by every test suite that talks HTTP to ``python -m <module>``: pick a free port, launch the module
as a subprocess (stdout and stderr go to temporary files, so a chatty server can never block on a full
pipe), poll a readiness URL with a deadline, and on failure report the tail of what the server wrote.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import httpx

REPO_ROOT = Path(__file__).resolve().parents[2]
LOOPBACK = "127.0.0.1"
DEFAULT_MODELS_CONFIG = REPO_ROOT / "models.toml"
DEFAULT_DATA_DIR = REPO_ROOT / ".data"


class ServerStartError(RuntimeError):
    """The server exited, or did not become ready before the deadline."""


def free_port(host: str = LOOPBACK) -> int:
    """A TCP port that nothing listens on right now (the OS picks it; a small race remains)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


def default_server_env(port: int, host: str = LOOPBACK, log_level: str = "warning") -> dict[str, str]:
    """The environment for ``services.commands.serve``: this process's, plus host/port/log level, plus the
    repository's models.toml, data dir and model cache unless the caller's environment already names others.
    A test that gives a server its own data dir still shares the converted models (prepared once)."""
    env = dict(os.environ)
    env["HOST"] = host
    env["PORT"] = str(port)
    env["MMSERVE_LOG_LEVEL"] = log_level
    env.setdefault("MMSERVE_MODELS_CONFIG", str(DEFAULT_MODELS_CONFIG))
    env.setdefault("MMSERVE_DATA_DIR", str(DEFAULT_DATA_DIR))
    env.setdefault("MMSERVE_MODEL_CACHE_DIR", str(DEFAULT_DATA_DIR / "models"))
    env.setdefault("PYTHONUNBUFFERED", "1")
    return env


def _tail(path: Path, max_chars: int) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError as exc:
        return f"<could not read {path}: {exc}>"
    return text[-max_chars:]


@dataclass
class ServerProcess:
    """A running server subprocess and where its output goes."""

    proc: subprocess.Popen[bytes]
    host: str
    port: int
    stdout_path: Path
    stderr_path: Path
    _files: list[IO[bytes]] = field(default_factory=list, repr=False)

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def stderr_tail(self, max_chars: int = 4000) -> str:
        return _tail(self.stderr_path, max_chars)

    def stdout_tail(self, max_chars: int = 2000) -> str:
        return _tail(self.stdout_path, max_chars)

    def describe_failure(self, reason: str) -> str:
        code = self.proc.poll()
        status = "still running" if code is None else f"exit code {code}"
        return (
            f"{reason} ({self.base_url}, {status})\n"
            f"--- server stderr (tail) ---\n{self.stderr_tail()}\n"
            f"--- server stdout (tail) ---\n{self.stdout_tail()}"
        )

    def wait_ready(self, path: str = "/ready", timeout: float = 180.0, poll_interval: float = 0.25) -> None:
        """Poll ``GET path`` until it answers 200; raise ``ServerStartError`` if the process exits or the
        deadline passes first."""
        deadline = time.monotonic() + timeout
        last = "no answer yet"
        with httpx.Client(base_url=self.base_url, timeout=5.0) as client:
            while True:
                if self.proc.poll() is not None:
                    raise ServerStartError(self.describe_failure("server exited before it was ready"))
                try:
                    response = client.get(path)
                    if response.status_code == 200:
                        return
                    last = f"{response.status_code} {response.text[:200]}"
                except httpx.TransportError as exc:
                    last = f"{type(exc).__name__}: {exc}"
                if time.monotonic() >= deadline:
                    raise ServerStartError(
                        self.describe_failure(f"GET {path} was not 200 after {timeout:.0f} s (last: {last})")
                    )
                time.sleep(poll_interval)

    def stop(self, timeout: float = 20.0, remove_logs: bool = False) -> int | None:
        """SIGTERM, then SIGKILL after ``timeout`` seconds; returns the exit code. The output files are
        kept for a post-mortem unless ``remove_logs``."""
        try:
            if self.proc.poll() is None:
                self.proc.send_signal(signal.SIGTERM)
                try:
                    self.proc.wait(timeout)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                    self.proc.wait(timeout)
            return self.proc.returncode
        finally:
            for f in self._files:
                f.close()
            self._files.clear()
            if remove_logs:
                for path in (self.stdout_path, self.stderr_path):
                    path.unlink(missing_ok=True)


def launch(
    module: str,
    env: Mapping[str, str],
    port: int,
    host: str = LOOPBACK,
    cwd: Path = REPO_ROOT,
    args: tuple[str, ...] = (),
) -> ServerProcess:
    """Start ``sys.executable -m module`` without waiting for it."""
    stdout = tempfile.NamedTemporaryFile(prefix=f"{module}-{port}-", suffix=".out", delete=False)  # noqa: SIM115
    stderr = tempfile.NamedTemporaryFile(prefix=f"{module}-{port}-", suffix=".err", delete=False)  # noqa: SIM115
    proc = subprocess.Popen(
        [sys.executable, "-m", module, *args],
        cwd=cwd,
        env=dict(env),
        stdin=subprocess.DEVNULL,
        stdout=stdout,
        stderr=stderr,
    )
    return ServerProcess(proc, host, port, Path(stdout.name), Path(stderr.name), [stdout, stderr])


def _port_clash(server: ServerProcess) -> bool:
    text = server.stderr_tail().lower()
    return "address already in use" in text or "errno 98" in text


def start_server(
    module: str = "services.commands.serve",
    env: Mapping[str, str] | None = None,
    ready_path: str = "/ready",
    timeout: float = 180.0,
    host: str = LOOPBACK,
    attempts: int = 3,
    args: tuple[str, ...] = (),
) -> ServerProcess:
    """Start ``module`` on a free loopback port and wait until ``ready_path`` answers 200.

    ``env`` overrides entries of ``default_server_env``. HOST and PORT are always this function's. If
    another process grabbed the port between picking and binding it, tries again on a new port."""
    for attempt in range(1, attempts + 1):
        port = free_port(host)
        full_env = default_server_env(port, host)
        full_env.update(env or {})
        full_env["HOST"], full_env["PORT"] = host, str(port)
        server = launch(module, full_env, port, host, args=args)
        try:
            server.wait_ready(ready_path, timeout)
        except ServerStartError:
            server.stop()
            if attempt < attempts and _port_clash(server):
                continue
            raise
        except BaseException:
            server.stop()
            raise
        return server
    raise AssertionError("unreachable")


@contextlib.contextmanager
def running_server(
    module: str = "services.commands.serve",
    env: Mapping[str, str] | None = None,
    ready_path: str = "/ready",
    timeout: float = 180.0,
    args: tuple[str, ...] = (),
) -> Iterator[ServerProcess]:
    """``start_server`` as a context manager: the process is stopped on exit, whatever happens."""
    server = start_server(module, env, ready_path, timeout, args=args)
    try:
        yield server
    finally:
        server.stop(remove_logs=True)
