"""Rows out: table, JSON, JSON Lines or CSV, for the listing commands."""

from __future__ import annotations

import csv
import json
import unicodedata
from collections.abc import Iterable, Sequence
from typing import Any, TextIO

__all__ = ["FORMATS", "display_width", "write_rows"]

FORMATS = ("table", "json", "jsonl", "csv")
_CELL = 48
_ZERO_WIDTH = frozenset({"Mn", "Me", "Cf"})  # combining marks, joiners, variation selectors
# Bidirectional embeddings, overrides and isolates: they reorder what follows on the line.
_BIDI = frozenset("\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")


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
    """Columns aligned by terminal width, not by code points: a CJK character or an
    emoji takes two columns, a combining mark none."""
    cells = [[_cell(row.get(c), _CELL) for c in columns] for row in rows]
    widths = [
        max([display_width(c)] + [display_width(r[i]) for r in cells])
        for i, c in enumerate(columns)
    ]
    out.write("  ".join(_pad(c, w) for c, w in zip(columns, widths, strict=True)).rstrip() + "\n")
    out.write("  ".join("-" * w for w in widths) + "\n")
    for row in cells:
        out.write("  ".join(_pad(v, w) for v, w in zip(row, widths, strict=True)).rstrip() + "\n")
    return len(rows)


def display_width(text: str) -> int:
    """How many terminal columns ``text`` takes (wide East Asian characters: 2)."""
    return sum(_char_width(c) for c in text)


def _char_width(char: str) -> int:
    if unicodedata.category(char) in _ZERO_WIDTH:
        return 0
    return 2 if unicodedata.east_asian_width(char) in ("W", "F") else 1


def _pad(text: str, columns: int) -> str:
    return text + " " * (columns - display_width(text))


def _cell(value: object, limit: int | None) -> str:
    """The text of one cell.  In a table (``limit`` set): one line, control characters
    shown escaped (a tab would break the alignment, an escape sequence would drive the
    terminal), cut to ``limit`` columns."""
    text = "" if value is None else str(value)
    if limit is not None:
        text = "".join(_visible(c) for c in text.replace("\n", "\u21b5"))
        if display_width(text) > limit:
            kept, used = [], 0
            for char in text:
                used += _char_width(char)
                if used > limit - 1:
                    break
                kept.append(char)
            text = "".join(kept) + "\u2026"
    return text


def _visible(char: str) -> str:
    """``char``, or its escape when it is a control or a bidirectional override."""
    if unicodedata.category(char) == "Cc" or char in _BIDI:
        code = ord(char)
        named = {"\t": "\\t", "\r": "\\r"}.get(char)
        return named or (f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}")
    return char


def _jsonable(value: object) -> object:
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return str(value)
