"""Where model files are: a file or folder inside an installed package, or a local path."""

from __future__ import annotations

import importlib.util
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
        path = Path(next(iter(spec.submodule_search_locations))) / rel
    else:
        path = Path(source).expanduser()
    if not path.exists():
        raise FileNotFoundError(f"model source {source!r} does not exist ({path})")
    return path.resolve()
