"""``python -m services.prepare``: convert every configured model into the local model cache once,
so that serving starts without conversion work."""

from __future__ import annotations

import logging

from pipelines.asr.loader import prepare_whisper_folder
from pipelines.llm.loader import prepare_model_folder
from services.model_config import load_model_specs
from services.settings import Settings


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    settings = Settings.from_env()
    for spec in load_model_specs(settings.models_config):
        if spec.task == "chat":
            folder = prepare_model_folder(spec.source, settings.model_cache_dir)
        elif spec.task == "asr":
            folder = prepare_whisper_folder(spec.source, spec.parts, settings.model_cache_dir)
        else:
            continue  # the other models load straight from their files
        print(f"{spec.name}: {folder}")


if __name__ == "__main__":
    main()
