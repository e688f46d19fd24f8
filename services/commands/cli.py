"""``mmserve``: serve, ingest documents, list and prepare models, run benchmarks. An option that names a
setting sets its environment variable (services/config/settings.py), which ``--distributed``'s worker
processes inherit; one left out keeps the variable's value, or its default."""

from __future__ import annotations

import argparse
import sys
import textwrap
from collections.abc import Callable, Sequence
from importlib import metadata
from pathlib import Path

from services.commands import ingest
from services.commands.cli_handlers import (
    BENCHMARKS,
    cmd_bench,
    cmd_ingest,
    cmd_models_list,
    cmd_models_prepare,
    cmd_serve,
)
from services.config.settings import REMOTE_TASKS

LOG_LEVELS = ("debug", "info", "warning", "error", "critical")

Handler = Callable[[argparse.Namespace, argparse.ArgumentParser], int]


class _Formatter(argparse.HelpFormatter):
    """Wraps each paragraph of a description or epilog, but keeps indented lines (examples) as written."""

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        return "\n\n".join(
            textwrap.indent(block, indent)
            if "\n " in block  # a title over indented lines
            else textwrap.fill(
                " ".join(block.split()), width, initial_indent=indent, subsequent_indent=indent
            )
            for block in text.split("\n\n")
        )


def _version() -> str:
    try:
        return metadata.version("mmserve")
    except metadata.PackageNotFoundError:
        return "unknown (not installed)"


def _settings_options() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    group = common.add_argument_group("configuration")
    group.add_argument(
        "--models-config",
        type=Path,
        metavar="PATH",
        help="the models file (sets MMSERVE_MODELS_CONFIG; default: models.toml of the checkout)",
    )
    group.add_argument(
        "--data-dir",
        type=Path,
        metavar="PATH",
        help="all state: model cache and retrieval store (sets MMSERVE_DATA_DIR; default: .data of "
        "the checkout)",
    )
    return common


def _subcommand(
    subparsers: argparse._SubParsersAction[argparse.ArgumentParser],
    name: str,
    summary: str,
    details: str,
    example: str,
    handler: Handler | None,
    parents: Sequence[argparse.ArgumentParser] = (),
) -> argparse.ArgumentParser:
    """``summary`` in the parent's list of commands; ``details`` and ``example`` in its own help too."""
    parser = subparsers.add_parser(
        name,
        help=summary,
        description=f"{summary}. {details}",
        epilog=f"example:\n  {example}",
        formatter_class=_Formatter,
        parents=list(parents),
    )
    parser.set_defaults(handler=handler, command_parser=parser)
    return parser


EXAMPLES = """examples:
  mmserve serve --port 9000
  mmserve serve --distributed --replicas chat=2
  mmserve ingest ./docs --collection notes
  mmserve ingest ./docs --collection handbook --url http://localhost:8000
  mmserve models list
  mmserve models prepare smollm2-135m-instruct
  mmserve bench embeddings --help

'mmserve COMMAND --help' shows a command's options."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mmserve",
        description="The mmserve multimodal inference service: serve it, ingest documents, prepare models, "
        "run benchmarks. Options that name a setting set its environment variable (see README.md), so "
        "the server, its worker processes and every command share one configuration.",
        epilog=EXAMPLES,
        formatter_class=_Formatter,
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    parser.set_defaults(handler=None, command_parser=parser)
    commands = parser.add_subparsers(title="commands", metavar="COMMAND")
    settings_options = _settings_options()

    serve = _subcommand(
        commands,
        "serve",
        "Serve the OpenAI-compatible API",
        "Every model runs in this process, or with --distributed in one gRPC worker process per task. GET "
        "/ready answers 200 once every model is loaded. Ctrl-C or SIGTERM stops it (exit code 0).",
        "mmserve serve --port 9000 --distributed --replicas chat=2 vision=2",
        cmd_serve,
        [settings_options],
    )
    serve.add_argument("--host", help="address the gateway listens on (sets HOST; default: 127.0.0.1)")
    serve.add_argument("--port", type=int, help="port the gateway listens on (sets PORT; default: 8000)")
    serve.add_argument(
        "--distributed",
        action="store_true",
        help="run each task in its own gRPC worker process on loopback (ports 50061 and up)",
    )
    serve.add_argument(
        "--replicas",
        nargs="+",
        default=[],
        metavar="TASK=N",
        help=f"with --distributed: worker processes for a task ({', '.join(REMOTE_TASKS)}; "
        "default: chat=2, others 1)",
    )
    serve.add_argument("--log-level", choices=LOG_LEVELS, help="sets MMSERVE_LOG_LEVEL (default: info)")

    ingest_parser = _subcommand(
        commands,
        "ingest",
        "Load a folder of documents into a collection, or through a running server into a vector store",
        "Each file becomes one document, its id its path relative to PATH; a later run skips unchanged "
        "files and replaces changed ones. Run it while the server is stopped, or give --url to send the "
        "files through a running server's API.",
        "mmserve ingest ./docs --collection notes --data-dir ./.data",
        cmd_ingest,
        [settings_options],
    )
    ingest.add_arguments(ingest_parser)

    models = _subcommand(
        commands,
        "models",
        "List or prepare the configured models",
        "The models are those of the models file (--models-config).",
        "mmserve models list",
        None,
    )
    actions = models.add_subparsers(title="actions", metavar="ACTION")
    _subcommand(
        actions,
        "list",
        "Show the configured models",
        "Name, task, source, and whether it is prepared in the model cache ('not needed': it loads as is).",
        "mmserve models list --models-config ./models.toml",
        cmd_models_list,
        [settings_options],
    )
    prepare = _subcommand(
        actions,
        "prepare",
        "Convert models into the model cache once",
        "GGUF chat models become safetensors, CTranslate2 Whisper files Hugging Face folders, so that "
        "serving starts without conversion work. Prepared models are skipped.",
        "mmserve models prepare smollm2-135m-instruct",
        cmd_models_prepare,
        [settings_options],
    )
    prepare.add_argument("names", nargs="*", metavar="NAME", help="models to prepare (default: all)")

    bench = _subcommand(
        commands,
        "bench",
        "Run a benchmark from the checkout's benchmarks/",
        "The script runs with this interpreter and receives every argument after NAME ('mmserve bench "
        "NAME --help' lists them). Results go to benchmarks/results/.",
        "mmserve bench serving --concurrency 1,8 --output-len 64",
        cmd_bench,
    )
    bench.add_argument("name", choices=BENCHMARKS, metavar="NAME", help=f"one of: {', '.join(BENCHMARKS)}")
    bench.add_argument("args", nargs=argparse.REMAINDER, metavar="ARGS", help="passed to the benchmark")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    handler: Handler | None = args.handler
    if handler is None:  # ``mmserve`` or ``mmserve models`` alone
        args.command_parser.print_help(sys.stderr)
        return 2
    return handler(args, args.command_parser)


if __name__ == "__main__":
    sys.exit(main())
