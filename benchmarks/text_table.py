"""Plain-text tables of the offline benchmarks: rows of cells in right-aligned columns, two spaces apart."""

from __future__ import annotations


def right_aligned(rows: list[list[str]]) -> list[str]:
    """One line per row; every column as wide as its widest cell (the first row is the header)."""
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return ["  ".join(c.rjust(w) for c, w in zip(r, widths, strict=True)) for r in rows]
