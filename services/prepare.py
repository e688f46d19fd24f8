"""``python -m services.prepare``: convert every configured model into the local model cache once,
so that serving starts without conversion work."""

from __future__ import annotations

import logging

from pipelines.llm.loader import prepare_model_folder
from services.model_config import load_model_specs
from services.settings import Settings


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    settings = Settings.from_env()
    for spec in load_model_specs(settings.models_config):
        if spec.task != "chat":
            continue  # encoders load straight from their folders
        folder = prepare_model_folder(spec.source, settings.model_cache_dir)
        print(f"{spec.name}: {folder}")


if __name__ == "__main__":
    main()
