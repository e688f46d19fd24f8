"""``mmserve ingest PATH --collection NAME`` (also ``mmserve-ingest`` or
``python -m services.commands.ingest``): load a folder of .txt/.md/.html files into a collection
through the same store the server uses.

Each file becomes one document whose id is its path relative to PATH; its content hash is kept in
the metadata, so a second run skips unchanged files and replaces changed ones. Files are committed
one by one: an interrupted run resumes where it stopped. Run it while the server is stopped (the
server loads what was ingested when it starts).
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import logging
import re
import sys
from collections.abc import Iterator
from html.parser import HTMLParser
from pathlib import Path
from typing import TYPE_CHECKING

from tqdm import tqdm

from retrieval.errors import CollectionNotFound
from services.config.settings import Settings

if TYPE_CHECKING:
    from retrieval.collections import Collections, Embedder

SUFFIXES = (".txt", ".md", ".markdown", ".html", ".htm")
UNSAFE = re.compile(r"[^A-Za-z0-9._:-]")


class _TextOfHtml(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.parts: list[str] = []
        self._skip = 0

    def handle_starttag(self, tag: str, attrs: object) -> None:
        self._skip += tag in ("script", "style")

    def handle_endtag(self, tag: str) -> None:
        self._skip -= tag in ("script", "style") and self._skip > 0

    def handle_data(self, data: str) -> None:
        if not self._skip:
            self.parts.append(data)


def read_text(path: Path) -> str:
    raw = path.read_text(encoding="utf-8", errors="replace")
    if path.suffix.lower() in (".html", ".htm"):
        parser = _TextOfHtml()
        parser.feed(raw)
        raw = " ".join(" ".join(parser.parts).split())
    return raw


def document_id(rel: Path) -> str:
    """A valid document id from a relative path (long or odd paths get a hash suffix)."""
    base = UNSAFE.sub("_", rel.as_posix()).lstrip("._-:") or "doc"
    if len(base) > 100 or base != rel.as_posix():
        base = f"{base[:100]}-{hashlib.sha256(rel.as_posix().encode()).hexdigest()[:12]}"
    return base


def find_files(root: Path) -> Iterator[Path]:
    if root.is_file():
        yield root
        return
    for path in sorted(root.rglob("*")):
        if path.is_file() and path.suffix.lower() in SUFFIXES:
            yield path


async def ingest(
    collections: Collections, name: str, root: Path, index: str | None = None
) -> tuple[int, int]:
    """Returns (files added or replaced, files skipped as unchanged)."""
    from retrieval.collections import DocumentInput

    try:
        collections.record(name)
    except CollectionNotFound:
        collections.create(name, None, index or "flat")
    files = list(find_files(root))
    added = skipped = 0
    for path in tqdm(files, desc=f"ingest → {name}", unit="file"):
        text = read_text(path)
        digest = hashlib.sha256(text.encode()).hexdigest()
        rel = path.relative_to(root) if root.is_dir() else Path(path.name)
        doc_id = document_id(rel)
        existing = collections.store.document(name, doc_id)
        if existing is not None and existing.metadata.get("sha256") == digest:
            skipped += 1
            continue
        if not text.strip():
            skipped += 1
            continue
        await collections.add(
            name, [DocumentInput(text, doc_id, {"source": rel.as_posix(), "sha256": digest})]
        )
        added += 1
    return added, skipped


DESCRIPTION = __doc__.split("\n\n")[0] if __doc__ else None


def add_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The command's options, on ``parser``: its own (``mmserve-ingest``) or a subcommand's (``mmserve
    ingest``)."""
    parser.add_argument("path", type=Path, help="a file, or a folder searched for .txt/.md/.html files")
    parser.add_argument("--collection", required=True, help="collection name (created if missing)")
    parser.add_argument("--index", choices=("flat", "hnsw", "ivf"), help="index kind for a new collection")
    return parser


def run(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    """Ingest ``args.path`` with the settings of the environment; ``parser`` reports usage errors."""
    if not args.path.exists():
        parser.error(f"{args.path} does not exist")
    # Imported here, not at the top: they load torch, and building the parser (``mmserve --help``) need not.
    from retrieval.collections import Collections
    from services.config.models import configured_models
    from services.tasks.embedding import EmbeddingService

    logging.basicConfig(level=logging.WARNING)
    settings = Settings.from_env()
    specs = [s for s in configured_models(settings) if s.task == "embedding"]
    if not specs:
        parser.error("no embedding model is configured")
    services = {s.name: EmbeddingService(s) for s in specs}
    embedders: dict[str, Embedder] = dict(services)
    collections = Collections(settings.data_dir, embedders, specs[0].name)
    try:
        added, skipped = asyncio.run(ingest(collections, args.collection, args.path, args.index))
    finally:
        collections.close()
        for service in services.values():
            service.shutdown()
    print(f"{args.collection}: {added} file(s) added or replaced, {skipped} unchanged or empty")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = add_arguments(argparse.ArgumentParser(description=DESCRIPTION))
    return run(parser.parse_args(argv), parser)


if __name__ == "__main__":
    sys.exit(main())
