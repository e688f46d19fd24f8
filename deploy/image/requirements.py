"""Writes the image's lists of what to install, read from pyproject.toml: the torch pins (installed first,
from the variant's index) and every dependency. A file rather than a RUN heredoc so that the Dockerfile
builds on older BuildKit frontends too (Docker 20.10's builtin one has no heredocs).

    python requirements.py pyproject.toml /torch.txt /requirements.txt
"""

from __future__ import annotations

import re
import sys
import tomllib


def main(pyproject: str, torch_out: str, requirements_out: str) -> None:
    with open(pyproject, "rb") as file:
        deps: list[str] = tomllib.load(file)["project"]["dependencies"]
    torch = [d for d in deps if re.match(r"(torch|torchaudio|torchvision)\s*==", d)]
    if not torch:
        raise SystemExit(f"{pyproject}: no torch, torchaudio or torchvision pin")
    with open(torch_out, "w") as file:
        file.write("".join(f"{d}\n" for d in torch))
    with open(requirements_out, "w") as file:
        file.write("".join(f"{d}\n" for d in deps))


if __name__ == "__main__":
    main(*sys.argv[1:4])
