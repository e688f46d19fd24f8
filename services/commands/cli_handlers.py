"""What each ``mmserve`` command does, once services/commands/cli.py has parsed its arguments: export the
setting options into the environment, then serve, ingest, list or prepare models, or hand over to a
benchmark script."""

from __future__ import annotations

import argparse
import os
import signal
import sys
from pathlib import Path

from services.commands import ingest
from services.config.settings import REPO_ROOT, Settings

BENCHMARKS = (
    "serving", "speculative", "chunked_prefill", "roofline", "quantization", "embeddings", "vector_search",
    "asr", "tts", "vision", "distributed", "soak",
)  # fmt: skip
BENCHMARKS_DIR = REPO_ROOT / "benchmarks"
# Option (argparse dest) → the environment variable Settings.from_env reads.
SETTING_VARS = {
    "host": "HOST",
    "port": "PORT",
    "models_config": "MMSERVE_MODELS_CONFIG",
    "data_dir": "MMSERVE_DATA_DIR",
    "log_level": "MMSERVE_LOG_LEVEL",
}


def apply_settings(args: argparse.Namespace, parser: argparse.ArgumentParser) -> Settings:
    """Export the setting options given into the environment (child processes inherit them), then read
    and validate the settings the command will run with."""
    for dest, var in SETTING_VARS.items():
        value = getattr(args, dest, None)
        if value is not None:
            os.environ[var] = str(value.resolve() if isinstance(value, Path) else value)
    try:
        return Settings.from_env()
    except ValueError as exc:
        parser.error(str(exc))


def cmd_serve(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    if args.replicas and not args.distributed:
        parser.error("--replicas needs --distributed")
    settings = apply_settings(args, parser)
    if args.distributed:
        from services.commands import topology

        code = topology.main(["--replicas", *args.replicas])
        # The gateway ends by the signal topology forwards to it on a stop: that is a clean stop.
        return 0 if code in (-signal.SIGTERM, -signal.SIGINT) else 128 - code if code < 0 else code
    # uvicorn shuts down on SIGTERM or Ctrl-C, then raises the signal again for the previous handler: this
    # one, so that a stop asked for (even before uvicorn starts) exits 0, not 143 or with a traceback.
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, _exit_cleanly)
    from services.commands import serve

    serve.run(settings)
    return 0


def _exit_cleanly(signum: int, frame: object) -> None:
    raise SystemExit(0)


def cmd_ingest(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    apply_settings(args, parser)
    return ingest.run(args, parser)


def cmd_models_list(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    settings = apply_settings(args, parser)
    from services.commands.prepare import cache_state
    from services.config.models import configured_models

    try:
        specs = configured_models(settings)
    except (OSError, ValueError) as exc:
        parser.error(str(exc))
    rows = [("NAME", "TASK", "SOURCE", "PREPARED")]
    rows += [(s.name, s.task, s.source, cache_state(s, settings.model_cache_dir)) for s in specs]
    w = [max(len(row[i]) for row in rows) for i in range(3)]
    print("\n".join(f"{a:<{w[0]}}  {b:<{w[1]}}  {c:<{w[2]}}  {d}" for a, b, c, d in rows))
    return 0


def cmd_models_prepare(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    apply_settings(args, parser)
    from services.commands import prepare

    try:
        prepare.main(args.names)
    except (OSError, ValueError) as exc:  # no models file, an unknown name or an unusable source
        parser.error(str(exc))
    return 0


def cmd_bench(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    script = BENCHMARKS_DIR / f"{args.name}.py"
    if not script.is_file():
        parser.error(
            f"{script} not found: the benchmarks are not installed with the package, they run from a "
            "source checkout (git clone, then pip install -e .)"
        )
    sys.stdout.flush()
    # The benchmark takes this process over: it gets the signals and its exit code is the command's.
    os.execv(sys.executable, [sys.executable, str(script), *args.args])
