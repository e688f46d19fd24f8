"""Where Whisper weights come from: a Hugging Face folder, or CTranslate2 files converted once."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path

from pipelines.asr.ct2_convert import convert_ct2_whisper
from pipelines.sources import resolve_source


def _cache_key(paths: Sequence[Path]) -> str:
    fingerprint = ";".join(f"{p}:{p.stat().st_size}:{p.stat().st_mtime_ns}" for p in paths)
    return f"whisper-{hashlib.sha256(fingerprint.encode()).hexdigest()[:12]}"


def prepare_whisper_folder(source: str, parts: Sequence[str], cache_dir: Path) -> Path:
    """A Hugging Face Whisper folder for ``source``.

    ``source`` is either such a folder (config.json + safetensors) or a CTranslate2 model folder
    (config.json, tokenizer.json, model.bin). ``parts``, when given, are files whose concatenation
    in order is the CTranslate2 ``model.bin`` (models shipped split across packages).
    """
    folder = resolve_source(source)
    if not folder.is_dir():
        raise ValueError(f"speech model source {source!r} must be a folder")
    if not parts and any(folder.glob("*.safetensors")) and (folder / "config.json").is_file():
        return folder
    part_paths = [resolve_source(p) for p in parts]
    weights = part_paths or [folder / "model.bin"]
    if not weights[0].is_file():
        raise ValueError(
            f"speech model source {source!r} holds neither safetensors weights nor a CTranslate2 model.bin"
        )
    return convert_ct2_whisper(folder, cache_dir / _cache_key([folder, *weights]), part_paths)
