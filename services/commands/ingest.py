"""``mmserve ingest PATH --collection NAME`` (also ``mmserve-ingest`` or
``python -m services.commands.ingest``): load a folder of documents (text, Markdown, HTML, PDF, DOCX,
JSON, CSV, JSON Lines) into a collection through the same store the server uses, or with ``--url`` into a
vector store of a running server through its API (services.commands.ingest_remote).

Each file becomes one document whose id is its path relative to PATH; the hash of its text is kept in
the metadata, so a second run skips unchanged files and replaces changed ones. Files are committed
one by one: an interrupted run resumes where it stopped. A file with no readable text (empty,
encrypted, damaged) is skipped with a warning. Run it while the server is stopped (the server loads
what was ingested when it starts). A vector store's collection is refused, as the collections API
refuses it: it changes only through the vector stores API (``--url``).
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import logging
import re
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from tqdm import tqdm

from retrieval.errors import CollectionNotFound, CollectionOwned, UnreadableDocument, UnsupportedFormat
from retrieval.formats import SUPPORTED_SUFFIXES, extract_text, format_of
from services.config.settings import Settings

if TYPE_CHECKING:
    from retrieval.collections import Collections, Embedder

SUFFIXES = SUPPORTED_SUFFIXES
UNSAFE = re.compile(r"[^A-Za-z0-9._:-]")


def read_text(path: Path) -> str:
    """The text of a document file (raises UnsupportedFormat or UnreadableDocument)."""
    return extract_text(path.read_bytes(), path.name)


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
    """Returns (files added or replaced, files skipped as unchanged); raises CollectionOwned for a
    collection that belongs to a vector store."""
    from retrieval.collections import DocumentInput

    collections.check_writer(name)
    try:
        collections.record(name)
    except CollectionNotFound:
        collections.create(name, None, index or "flat")
    files = list(find_files(root))
    added = skipped = 0
    for path in tqdm(files, desc=f"ingest → {name}", unit="file"):
        data = path.read_bytes()
        try:
            text = extract_text(data, path.name)
        except UnreadableDocument as e:
            if data.strip():  # an empty file is skipped without a word
                tqdm.write(f"skipped: {e}", file=sys.stderr)
            skipped += 1
            continue
        digest = hashlib.sha256(text.encode()).hexdigest()
        rel = path.relative_to(root) if root.is_dir() else Path(path.name)
        doc_id = document_id(rel)
        existing = collections.store.document(name, doc_id)
        if existing is not None and existing.metadata.get("sha256") == digest:
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
    parser.add_argument(
        "path", type=Path, help=f"a file, or a folder searched for {', '.join(SUPPORTED_SUFFIXES)} files"
    )
    parser.add_argument(
        "--collection",
        required=True,
        help="collection name (created if missing); with --url, a vector store's name or id",
    )
    parser.add_argument("--index", choices=("flat", "hnsw", "ivf"), help="index kind for a new collection")
    parser.add_argument(
        "--url",
        help="send the files to the server running at this URL (its Files and Vector Stores API) instead "
        "of writing the data dir; the server may keep running",
    )
    parser.add_argument("--api-key", help="with --url: one of the server's MMSERVE_API_KEYS")
    return parser


def run(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    """Ingest ``args.path`` with the settings of the environment; ``parser`` reports usage errors."""
    if not args.path.exists():
        parser.error(f"{args.path} does not exist")
    if args.path.is_file():
        try:
            format_of(args.path.name)
        except UnsupportedFormat as e:
            parser.error(str(e))
    if args.url:
        from services.commands import ingest_remote

        return ingest_remote.run(
            args.url, args.api_key, args.collection, args.path, list(find_files(args.path))
        )
    # Imported here, not at the top: they load torch, and building the parser (``mmserve --help``) need not.
    from retrieval.collections import Collections
    from retrieval.file_processing import claim_collections
    from retrieval.vector_store_records import VectorStoreRecords
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
        claim_collections(collections, VectorStoreRecords(collections.store.db))
        added, skipped = asyncio.run(ingest(collections, args.collection, args.path, args.index))
    except CollectionOwned as e:
        parser.error(f"{e} (to add files to it, use --url with the server running)")
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
