"""OpenAI's cursor pagination over lists kept in creation order. A cursor is an object's id and stands for
the object's place in its list: its creation time, then a column that breaks ties. The place of an object
deleted since is remembered for KEEP_DELETED_S, so that a loop that deletes what it lists goes on past
the cursor it has just deleted; an id never in the list has no place (InvalidRequest)."""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from shared_engine.errors import InvalidRequest

T = TypeVar("T")
Position = tuple[float, Any]  # (creation time, tie-breaker) as the list's ORDER BY compares them
KEEP_DELETED_S = 7 * 86_400
SCHEMA = """
CREATE TABLE IF NOT EXISTS deleted_positions (
    list TEXT NOT NULL,
    id TEXT NOT NULL,
    created REAL NOT NULL,
    tiebreak NOT NULL,
    deleted REAL NOT NULL,
    PRIMARY KEY (list, id)
);
CREATE INDEX IF NOT EXISTS deleted_positions_by_time ON deleted_positions (deleted);
"""


@dataclass(frozen=True)
class PageQuery:
    """Which page: at most ``limit`` items (None: all) in ``order`` ("asc": oldest first), right after the
    ``after`` cursor (or from the top), or, given ``before`` alone, the ones right before it."""

    limit: int | None = None
    order: str = "asc"
    after: str | None = None
    before: str | None = None


ALL = PageQuery()


@dataclass(frozen=True)
class Page(Generic[T]):
    """A page, and whether more items lie beyond it in the direction of travel (past its end going
    forward, before its start going back)."""

    items: list[T]
    has_more: bool = False


class Positions:
    """Where objects stand in one table's lists: live ones from their rows, deleted ones as remembered."""

    def __init__(
        self, db: sqlite3.Connection, table: str, key: str, id_column: str, scope_column: str | None = None
    ) -> None:
        """Objects of ``table`` named by ``id_column``, ordered by ``key``; with ``scope_column``, each
        value of it is a list of its own (a vector store's files)."""
        self.db, self.table, self.key = db, table, key
        self.match = f"{id_column} = ?" if scope_column is None else f"{scope_column} = ? AND {id_column} = ?"
        db.executescript(SCHEMA)

    def _live(self, scope: str, object_id: str) -> Position | None:
        params = (object_id,) if scope == "" else (scope, object_id)
        row = self.db.execute(f"SELECT {self.key} FROM {self.table} WHERE {self.match}", params).fetchone()
        return None if row is None else (row[0], row[1])

    def _list(self, scope: str) -> str:
        return f"{self.table}:{scope}" if scope else self.table

    def of(self, object_id: str, scope: str = "") -> Position | None:
        """The place of a live object, or of one deleted within KEEP_DELETED_S; None if neither."""
        if (live := self._live(scope, object_id)) is not None:
            return live
        row = self.db.execute(
            "SELECT created, tiebreak FROM deleted_positions WHERE list = ? AND id = ? AND deleted >= ?",
            (self._list(scope), object_id, time.time() - KEEP_DELETED_S),
        ).fetchone()
        return None if row is None else (row[0], row[1])

    def remember(self, object_id: str, scope: str = "") -> None:
        """Keep the place of an object about to be deleted (and forget places kept long enough)."""
        position, now = self._live(scope, object_id), time.time()
        self.db.execute("DELETE FROM deleted_positions WHERE deleted < ?", (now - KEEP_DELETED_S,))
        if position is not None:
            self.db.execute(
                "INSERT OR REPLACE INTO deleted_positions VALUES (?, ?, ?, ?, ?)",
                (self._list(scope), object_id, *position, now),
            )

    def forget(self, scope: str) -> None:
        """Forget the deleted places of a list that is itself gone."""
        self.db.execute("DELETE FROM deleted_positions WHERE list = ?", (self._list(scope),))

    def page(
        self, select: str, where: Sequence[str], params: Sequence[Any], query: PageQuery, scope: str = ""
    ) -> tuple[list[Any], bool]:
        """The rows of ``select`` (no WHERE of its own) that match ``where`` and fall in the page, and
        whether more lie beyond it."""
        return select_page(self.db, select, where, params, self.key, query, lambda c: self.of(c, scope))


def select_page(
    db: sqlite3.Connection,
    select: str,
    where: Sequence[str],
    params: Sequence[Any],
    key: str,
    query: PageQuery,
    position: Callable[[str], Position | None],
) -> tuple[list[Any], bool]:
    conditions, args = list(where), list(params)
    ascending = query.order == "asc"
    for name, cursor, forward in (("after", query.after, True), ("before", query.before, False)):
        if cursor is None:
            continue
        at = position(cursor)
        if at is None:
            raise InvalidRequest(f"{name}: no object {cursor!r} in this list", param=name)
        conditions.append(f"({key}) {'>' if ascending == forward else '<'} (?, ?)")
        args.extend(at)
    backward = query.before is not None and query.after is None
    direction = "ASC" if ascending != backward else "DESC"
    order_by = ", ".join(f"{column.strip()} {direction}" for column in key.split(","))
    sql = select + (f" WHERE {' AND '.join(conditions)}" if conditions else "")
    limit = -1 if query.limit is None else query.limit + 1
    rows = db.execute(f"{sql} ORDER BY {order_by} LIMIT ?", [*args, limit]).fetchall()
    more = query.limit is not None and len(rows) > query.limit
    rows = rows[: query.limit] if more else rows
    return (rows[::-1] if backward else rows), more
