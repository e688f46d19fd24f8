"""``python -m services.commands.prepare`` (or ``mmserve models prepare``): convert every configured model
into the local model cache once, so that serving starts without conversion work."""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from pathlib import Path

from pipelines.asr import loader as asr_loader
from pipelines.asr.ct2_convert import is_converted
from pipelines.llm import loader as llm_loader
from pipelines.sources import resolve_source
from services.config.models import ModelSpec, configured_models
from services.config.settings import Settings

logger = logging.getLogger(__name__)
# What ``cache_state`` answers for a model.
PREPARED, NOT_PREPARED, NOT_NEEDED = "yes", "no", "not needed"
# Tasks whose models load as Hugging Face folders, a GGUF converted into one (a chat model as reranker).
FOLDER_TASKS = ("chat", "rerank")


def prepare(spec: ModelSpec, cache_dir: Path) -> Path | None:
    """The folder ``spec`` is served from, converting it into ``cache_dir`` first if needed; None for the
    tasks whose models load straight from their files."""
    if spec.task in FOLDER_TASKS:
        return llm_loader.prepare_model_folder(spec.source, cache_dir)
    if spec.task == "asr":
        return asr_loader.prepare_whisper_folder(spec.source, spec.parts, cache_dir)
    return None


def cache_state(spec: ModelSpec, cache_dir: Path) -> str:
    """Whether ``prepare`` has work left for ``spec``, without doing it: PREPARED (converted into the
    cache), NOT_PREPARED, NOT_NEEDED (the model loads from its files), or why its source is unusable.
    Mirrors the choices of the loaders, whose cache folders are named by their ``_cache_key``."""
    try:
        path = resolve_source(spec.source)
        if spec.task in FOLDER_TASKS:
            if llm_loader.is_hf_folder(path):
                return NOT_NEEDED
            if not llm_loader.is_gguf(path):
                return "unsupported source"
            done = (cache_dir / llm_loader._cache_key(path) / "config.json").is_file()
        elif spec.task == "asr":
            if not spec.parts and any(path.glob("*.safetensors")) and (path / "config.json").is_file():
                return NOT_NEEDED
            weights = [resolve_source(p) for p in spec.parts] or [path / "model.bin"]
            done = is_converted(cache_dir / asr_loader._cache_key([path, *weights]))
        else:
            return NOT_NEEDED
    except OSError as exc:
        return f"source missing ({exc})"
    return PREPARED if done else NOT_PREPARED


def select(specs: Sequence[ModelSpec], names: Iterable[str]) -> list[ModelSpec]:
    """The specs named (every one when ``names`` is empty), in the configuration's order."""
    wanted = set(names)
    unknown = sorted(wanted - {s.name for s in specs})
    if unknown:
        known = ", ".join(s.name for s in specs)
        raise ValueError(f"unknown model(s) {', '.join(unknown)}; configured: {known}")
    return [s for s in specs if not wanted or s.name in wanted]


def main(names: Sequence[str] = ()) -> None:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    settings = Settings.from_env()
    for spec in select(configured_models(settings), names):
        folder = prepare(spec, settings.model_cache_dir)
        if folder is None:  # stdout keeps one "name: folder" line per converted model (benchmarks/server.py)
            logger.info("%s: nothing to prepare, it loads from its files", spec.name)
        else:
            print(f"{spec.name}: {folder}")


if __name__ == "__main__":
    main()
