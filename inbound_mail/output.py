"""Rows out: table, JSON, JSON Lines or CSV, for the listing commands."""

from __future__ import annotations

import csv
import json
from collections.abc import Iterable, Sequence
from typing import Any, TextIO

__all__ = ["FORMATS", "write_rows"]

FORMATS = ("table", "json", "jsonl", "csv")
_CELL = 48


def write_rows(
    rows: Iterable[dict[str, Any]], fmt: str, out: TextIO, *, columns: Sequence[str]
) -> int:
    """Write ``rows`` to ``out``; ``columns`` chooses the table's and the CSV's columns.
    JSON and JSON Lines carry every key.  Returns the number of rows."""
    if fmt == "jsonl":
        count = 0
        for row in rows:
            out.write(json.dumps(row, ensure_ascii=False, default=_jsonable) + "\n")
            count += 1
        return count
    if fmt == "json":
        data = list(rows)
        out.write(json.dumps(data, ensure_ascii=False, indent=2, default=_jsonable) + "\n")
        return len(data)
    if fmt == "csv":
        writer = csv.DictWriter(out, fieldnames=list(columns), extrasaction="ignore")
        writer.writeheader()
        count = 0
        for row in rows:
            writer.writerow({k: _cell(row.get(k), None) for k in columns})
            count += 1
        return count
    return _table(list(rows), out, columns)


def _table(rows: list[dict[str, Any]], out: TextIO, columns: Sequence[str]) -> int:
    cells = [[_cell(row.get(c), _CELL) for c in columns] for row in rows]
    widths = [max([len(c)] + [len(r[i]) for r in cells]) for i, c in enumerate(columns)]
    out.write("  ".join(c.ljust(w) for c, w in zip(columns, widths, strict=True)).rstrip() + "\n")
    out.write("  ".join("-" * w for w in widths) + "\n")
    for row in cells:
        out.write("  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)).rstrip() + "\n")
    return len(rows)


def _cell(value: object, limit: int | None) -> str:
    text = "" if value is None else str(value)
    if limit is not None:
        text = text.replace("\n", "\u21b5")
        if len(text) > limit:
            text = text[: limit - 1] + "\u2026"
    return text


def _jsonable(value: object) -> object:
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return str(value)
