"""Gives every file of the installed model wheels, and each folder above one, an mtime derived from the hashes
pip recorded: the same in every build and variant, different when the content changes.

The model cache names each converted model after its source file's path, size and mtime, and pip stamps
installed files with the time of the install: without this, every rebuild would convert the models again into
the model-cache volume, and the cpu and gpu images would never share a conversion.

    python pin_mtimes.py /tmp/model-wheels.txt      # the requirements file the wheels were installed from
"""

from __future__ import annotations

import hashlib
import os
import sys
from importlib import metadata


def stamp(text: str) -> int:
    return 1_000_000_000 + int.from_bytes(hashlib.sha256(text.encode()).digest()[:4], "big") % 500_000_000


def pin(requirement: str) -> None:
    dist = metadata.distribution(requirement.split("==")[0])
    folders: dict[str, list[str]] = {}
    for file in dist.files or ():
        if file.hash is None or file.suffix in (".py", ".pyc"):
            continue
        os.utime(str(file.locate()), (stamp(file.hash.value),) * 2)
        for parent in list(file.parents)[:-1]:
            folders.setdefault(str(parent), []).append(file.hash.value)
    for folder, hashes in folders.items():
        os.utime(str(dist.locate_file(folder)), (stamp("".join(sorted(hashes))),) * 2)


if __name__ == "__main__":
    with open(sys.argv[1]) as listing:
        for requirement in listing.read().split():
            pin(requirement)
