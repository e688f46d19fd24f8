"""Where model files are: a file or folder inside an installed package, or a local path."""

from __future__ import annotations

import importlib.util
from collections.abc import Sequence
from pathlib import Path

PACKAGE_SCHEME = "pkg:"


def resolve_source(source: str) -> Path:
    """``pkg:<module>/<path>`` names a file or folder inside an installed package, located without
    importing it (a model wheel's ``__init__`` may pull in other runtimes); anything else is a
    filesystem path."""
    if source.startswith(PACKAGE_SCHEME):
        module, _, rel = source[len(PACKAGE_SCHEME) :].partition("/")
        spec = importlib.util.find_spec(module)
        if spec is None or not spec.submodule_search_locations:
            raise FileNotFoundError(
                f"package {module!r} is not installed (needed for model source {source!r})"
            )
        package = Path(next(iter(spec.submodule_search_locations))).resolve()
        path = package / rel
        if not path.resolve().is_relative_to(package):
            raise ValueError(f"model source {source!r} points outside its package {module!r}")
    else:
        path = Path(source).expanduser()
    if not path.exists():
        raise FileNotFoundError(f"model source {source!r} does not exist ({path})")
    return path.resolve()


def check_source_allowed(source: str, allowed_dirs: Sequence[Path]) -> None:
    """A local model source must lie inside one of ``allowed_dirs`` once links and ``..`` are resolved
    (package sources are confined to their package by ``resolve_source``)."""
    if source.startswith(PACKAGE_SCHEME):
        return
    path = Path(source).expanduser().resolve()
    roots = [Path(d).expanduser().resolve() for d in allowed_dirs]
    if not any(path.is_relative_to(root) for root in roots):
        allowed = ", ".join(str(r) for r in roots) or "(none)"
        raise ValueError(
            f"model source {source!r} is outside the allowed model directories ({allowed}); "
            "add its directory to MMSERVE_MODEL_DIRS"
        )
