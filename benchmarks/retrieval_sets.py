"""The test sets of benchmarks/retrieval_quality.py: the project's labelled queries, a BEIR-layout set, and
real English text from this virtualenv to mix in as distractors."""

from __future__ import annotations

import ast
import csv
import json
import re
from collections.abc import Iterator
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent
LABELLED = REPO / "tests" / "data" / "retrieval"
DOCUMENTED = (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)
Qrels = dict[str, dict[str, int]]


class TestSet:
    def __init__(self, name: str, docs: dict[str, str], queries: dict[str, str], qrels: Qrels) -> None:
        self.name, self.docs, self.queries, self.qrels = name, docs, queries, qrels


def labelled_set() -> TestSet:
    labels = json.loads((LABELLED / "queries.json").read_text(encoding="utf-8"))
    docs = {p.stem: p.read_text(encoding="utf-8") for p in sorted((LABELLED / "docs").glob("*.txt"))}
    queries = {f"q{i}": q["query"] for i, q in enumerate(labels["queries"])}
    qrels = {f"q{i}": {q["answer"]: 1} for i, q in enumerate(labels["queries"])}
    return TestSet("tests/data/retrieval", docs, queries, qrels)


def beir_set(folder: Path) -> TestSet:
    docs: dict[str, str] = {}
    queries: dict[str, str] = {}
    qrels: Qrels = {}
    for line in (folder / "corpus.jsonl").read_text(encoding="utf-8").splitlines():
        row = json.loads(line)
        docs[row["_id"]] = f"{row.get('title', '')}\n{row['text']}".strip()
    for line in (folder / "queries.jsonl").read_text(encoding="utf-8").splitlines():
        row = json.loads(line)
        queries[row["_id"]] = row["text"]
    with (folder / "qrels" / "test.tsv").open(encoding="utf-8") as f:
        for row in csv.DictReader(f, delimiter="\t"):
            if int(row["score"]) > 0:
                qrels.setdefault(row["query-id"], {})[row["corpus-id"]] = int(row["score"])
    return TestSet(folder.name, docs, {q: t for q, t in queries.items() if q in qrels}, qrels)


def venv_texts(exclude: set[str]) -> Iterator[tuple[str, str]]:
    """(id, text) of real English text shipped in the virtualenv, in a fixed order: package long
    descriptions (METADATA, the genre of the judged documents), then the docstrings of Python modules
    (one document per module). Packages named in ``exclude`` are skipped, so that no distractor
    duplicates a judged document."""
    site = Path(torch.__file__).resolve().parents[1]
    skip = {re.sub(r"[-_.]+", "_", e.lower()) for e in exclude}
    for meta in sorted(site.glob("*.dist-info/METADATA")):
        package = re.sub(r"[-_.]+", "_", meta.parent.name.split("-")[0].lower())
        body = meta.read_text(encoding="utf-8", errors="replace").partition("\n\n")[2]
        if package not in skip and len(body) > 2000:
            yield f"meta-{package}", body
    for n, module in enumerate(sorted(site.rglob("*.py"))):
        parts = module.relative_to(site).parts
        if re.sub(r"[-_.]+", "_", parts[0].lower()) in skip or "tests" in parts:
            continue
        try:
            tree = ast.parse(module.read_bytes())
        except (SyntaxError, ValueError):
            continue
        nodes = [tree, *(x for x in ast.walk(tree) if isinstance(x, DOCUMENTED))]
        text = "\n\n".join(d for x in nodes if (d := ast.get_docstring(x)))
        if len(text) > 1000:
            yield f"py-{n}", text
