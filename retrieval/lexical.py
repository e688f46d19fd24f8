"""The lexical index: one SQLite FTS5 table per collection, ranked by BM25, in the same database file
as the chunks it indexes.

Every write goes through the store's transactions, so a chunk enters and leaves the lexical index in
the same commit as its vector: there is nothing to rebuild after a crash. One table per collection
(rather than one shared table filtered by collection) keeps BM25's statistics — document frequencies
and the mean chunk length — those of the collection alone, and spares every search a join.

The tables are *contentless* (``content=''``): the chunk text already lives in ``chunks``, so the index
holds only its postings. Removing a row from a contentless table takes the text it was indexed with,
which the caller reads from ``chunks`` inside the same transaction.
"""

from __future__ import annotations

import re
import sqlite3
from collections.abc import Iterable
from typing import Any

# Porter stemming over Unicode word splitting, accents folded: "Indexes" finds "indexing".
TOKENIZER = "porter unicode61 remove_diacritics 2"
MAX_QUERY_TERMS = 32
# BM25 in FTS5 scores every chunk that holds any query term, and that work grows with the terms' posting
# lists: at 135k chunks, "HTTP/1.1 protocol ..." matched 45k chunks (77 ms), 32k of them for "1" alone.
# Terms are taken rarest first until their chunks add up to this budget; the common ones left out weigh
# least in BM25 (their IDF is lowest). Collections smaller than the budget are always ranked exactly.
POSTINGS_BUDGET = 20_000
WORD = re.compile(r"\w+", re.UNICODE)
# Han ideographs, kana and Hangul syllables: scripts written without spaces between words, which
# unicode61 would index as one token per run (a sentence of Chinese, one token). Each such character is
# indexed as a token of its own, and a query's run of them searches for its overlapping pairs, each a
# two-token phrase, as Lucene's CJK analyzer does with bigrams.
_CJK_CHARS = (
    "\u3005-\u3007\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uac00-\ud7af\uf900-\ufaff\U00020000-\U0002ffff"
)
CJK_CHAR = re.compile(f"[{_CJK_CHARS}]")
CJK_RUN = re.compile(f"([{_CJK_CHARS}]+)")
# Dropped from queries (never from the index): terms in nearly every chunk carry no BM25 weight but
# make SQLite visit nearly every posting list entry, which costs latency at 100k chunks.
_STOPWORD_TEXT = """
    a about above after again against all am an and any are as at be because been before being below
    between both but by can could did do does doing down during each few for from further had has have
    having he her here hers herself him himself his how i if in into is it its itself just me more most my
    myself no nor not now of off on once only or other our ours ourselves out over own same she should so
    some such than that the their theirs them themselves then there these they this those through to too
    under until up very was we were what when where which while who whom why will with would you your
    yours yourself yourselves"""
STOPWORDS = frozenset(_STOPWORD_TEXT.split())


def table_name(collection: str) -> str:
    """The FTS5 table of a collection. SQLite's identifiers are case-insensitive while collection names
    are not ("Docs" and "docs" are two collections), so the name is hex-encoded."""
    return f"lexical_{collection.encode().hex()}"


def _table(collection: str) -> str:
    return f'"{table_name(collection)}"'


def create(db: sqlite3.Connection, collection: str) -> None:
    db.execute(
        f"CREATE VIRTUAL TABLE IF NOT EXISTS {_table(collection)} "
        f"USING fts5(text, content='', tokenize='{TOKENIZER}')"
    )


def drop(db: sqlite3.Connection, collection: str) -> None:
    db.execute(f"DROP TABLE IF EXISTS {_table(collection)}")


def exists(db: sqlite3.Connection, collection: str) -> bool:
    row = db.execute(
        "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", (table_name(collection),)
    ).fetchone()
    return row is not None


def indexed_text(text: str) -> str:
    """The text as the tokenizer sees it: every CJK character set apart by spaces."""
    return CJK_CHAR.sub(r" \g<0> ", text) if CJK_CHAR.search(text) else text


def insert(db: sqlite3.Connection, collection: str, rows: Iterable[tuple[int, str]]) -> None:
    """Index (chunk id, text) rows."""
    db.executemany(
        f"INSERT INTO {_table(collection)} (rowid, text) VALUES (?, ?)",
        ((chunk_id, indexed_text(text)) for chunk_id, text in rows),
    )


def remove_document(db: sqlite3.Connection, collection: str, doc_id: str) -> None:
    """Unindex a document's chunks; call before the chunks themselves are deleted. A contentless table
    unindexes a row by the text it was indexed with: the chunk's, prepared the same way."""
    table = _table(collection)
    rows = db.execute(
        "SELECT id, text FROM chunks WHERE collection = ? AND document_id = ?", (collection, doc_id)
    ).fetchall()
    db.executemany(
        f"INSERT INTO {table} ({table}, rowid, text) VALUES ('delete', ?, ?)",
        ((chunk_id, indexed_text(text)) for chunk_id, text in rows),
    )


def fill(db: sqlite3.Connection, collection: str) -> int:
    """Index every chunk of a collection (when a store's lexical indexes are built or rebuilt)."""
    rows = db.execute("SELECT id, text FROM chunks WHERE collection = ?", (collection,)).fetchall()
    insert(db, collection, rows)
    return len(rows)


def query_terms(text: str) -> list[str]:
    """The query's distinct words, lowercased, common English words left out (unless there is nothing
    else); a run of CJK characters gives its overlapping pairs as two-token phrases ("北 京", "京 大"),
    a lone CJK character itself."""
    words: list[str] = []
    for word in WORD.findall(text.lower()):
        for piece in CJK_RUN.split(word):
            if CJK_CHAR.match(piece):
                words += [" ".join(piece[i : i + 2]) for i in range(max(1, len(piece) - 1))]
            elif piece:
                words.append(piece)
    terms = [w for w in words if w not in STOPWORDS] or words
    return list(dict.fromkeys(terms))[:MAX_QUERY_TERMS]


def match_expression(terms: list[str]) -> str | None:
    """An FTS5 query matching chunks that hold any of the terms, or None for no terms. Every term is
    quoted, so FTS5 operators in the text are words."""
    return " OR ".join(f'"{t}"' for t in terms) or None


def affordable_terms(db: sqlite3.Connection, collection: str, terms: list[str]) -> list[str]:
    """The terms to rank with: rarest first while their posting lists fit POSTINGS_BUDGET (the rarest is
    always kept); terms found in no chunk are dropped. Counting a term's chunks reads only its posting
    list, a fraction of a millisecond."""
    table = _table(collection)
    counted = []
    for term in terms:
        (n,) = db.execute(f"SELECT count(*) FROM {table} WHERE {table} MATCH ?", (f'"{term}"',)).fetchone()
        if n:
            counted.append((int(n), term))
    kept: list[str] = []
    total = 0
    for n, term in sorted(counted):
        if kept and total + n > POSTINGS_BUDGET:
            break
        kept.append(term)
        total += n
    return kept


def search(
    db: sqlite3.Connection,
    collection: str,
    text: str,
    k: int,
    allowed_sql: tuple[str, list[Any]] | None = None,
) -> list[tuple[int, float]]:
    """Top ``k`` (chunk id, BM25 score) for a text query, best first; scores are positive (SQLite's
    bm25() is negated so that higher is better). ``allowed_sql`` is a subquery selecting the chunk ids
    a metadata filter lets through."""
    expression = match_expression(affordable_terms(db, collection, query_terms(text)))
    if expression is None or k < 1:
        return []
    table = _table(collection)
    where = f"{table} MATCH ?"
    params: list[Any] = [expression]
    if allowed_sql is not None:
        where += f" AND rowid IN ({allowed_sql[0]})"
        params += allowed_sql[1]
    rows = db.execute(
        f"SELECT rowid, -bm25({table}) FROM {table} WHERE {where} ORDER BY rank LIMIT ?", (*params, k)
    ).fetchall()
    return [(int(r[0]), float(r[1])) for r in rows]
