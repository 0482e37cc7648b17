"""Rows out: table, JSON, JSON Lines or CSV, for the listing commands.

SMS texts are the senders' and cannot be allowed to act on the reader's tools:

- the table format, and every format written to a terminal, show control
  characters (C0, DEL, C1) and the bidi and line-separator format characters
  as visible escapes (``\\x1b``, ``\\u202e``) with :func:`escape_control`, so
  ``ESC [1A`` cannot erase a row nor ``ESC ]0;`` set the title.  JSON and JSON
  Lines stay exact: on a terminal only their C1 and format characters are
  written as ``\\uXXXX`` escapes, which JSON readers decode to the same text;
- CSV cells that a spreadsheet would run as a formula (starting with ``=``,
  ``+``, ``-``, ``@``, a tab or a CR) get a ``'`` in front, the OWASP way;
  numbers such as ``+393331234567`` or ``-2`` are left as they are.

``raw=True`` (the commands' ``--raw``) turns both off.
"""

from __future__ import annotations

import csv
import json
import re
import unicodedata
from collections.abc import Iterable, Sequence
from typing import Any, TextIO

__all__ = [
    "FORMATS",
    "display_width",
    "escape_control",
    "is_terminal",
    "neutralise_formula",
    "write_rows",
]

FORMATS = ("table", "json", "jsonl", "csv")
_CELL = 48
_ZERO_WIDTH = frozenset({"Mn", "Me", "Cf"})  # combining marks, joiners, variation selectors
# C0, DEL, C1; Arabic letter mark, LRM/RLM, bidi embeddings/overrides/isolates, LS/PS.
_CONTROL = re.compile(
    "[\x00-\x1f\x7f-\x9f\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069\u2028\u2029]"
)
# What json.dumps leaves raw of the above (it escapes C0 itself).
_JSON_UNSAFE = re.compile("[\x7f-\x9f\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069\u2028\u2029]")
_NAMED = {"\t": "\\t", "\n": "\\n", "\r": "\\r"}
# Full-width forms too: some spreadsheets fold them to the ASCII ones.
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r", "\uff1d", "\uff0b", "\uff0d", "\uff20")
_NUMBER = re.compile(r"[+-]?[0-9]+(?:[.,][0-9]+)?\Z")  # a phone number, an amount: no formula


def escape_control(text: str, *, keep: str = "") -> str:
    """``text`` safe to show on a terminal: each control or bidi/line-separator
    format character becomes a visible escape (``\\t``, ``\\x1b``, ``\\u202e``);
    characters in ``keep`` (e.g. ``"\\n"``) stay as they are."""

    def visible(match: re.Match[str]) -> str:
        char = match.group()
        if char in keep:
            return char
        code = ord(char)
        return _NAMED.get(char) or (f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}")

    return _CONTROL.sub(visible, text)


def neutralise_formula(text: str) -> str:
    """``text`` with a ``'`` in front when a spreadsheet would run it as a formula."""
    if text.startswith(_FORMULA_START) and not _NUMBER.match(text):
        return "'" + text
    return text


def is_terminal(out: TextIO) -> bool:
    """True when ``out`` is a terminal (a closed or fake stream is not)."""
    try:
        return out.isatty()
    except (AttributeError, ValueError):
        return False


def write_rows(
    rows: Iterable[dict[str, Any]],
    fmt: str,
    out: TextIO,
    *,
    columns: Sequence[str],
    raw: bool = False,
    terminal: bool | None = None,
) -> int:
    """Write ``rows`` to ``out``; ``columns`` chooses the table's and the CSV's columns.
    JSON and JSON Lines carry every key.  Returns the number of rows.  ``terminal``
    (default: whether ``out`` is one) and ``raw``: see the module docstring."""
    escape = not raw and (is_terminal(out) if terminal is None else terminal)
    if fmt == "jsonl":
        count = 0
        for row in rows:
            out.write(_json(json.dumps(row, ensure_ascii=False, default=_jsonable), escape) + "\n")
            count += 1
        return count
    if fmt == "json":
        data = list(rows)
        text = json.dumps(data, ensure_ascii=False, indent=2, default=_jsonable)
        out.write(_json(text, escape) + "\n")
        return len(data)
    if fmt == "csv":
        writer = csv.DictWriter(out, fieldnames=list(columns), extrasaction="ignore")
        writer.writeheader()
        count = 0
        for row in rows:
            writer.writerow({k: _csv_cell(row.get(k), raw, escape) for k in columns})
            count += 1
        return count
    return _table(list(rows), out, columns, escape=not raw)


def _json(text: str, escape: bool) -> str:
    return _JSON_UNSAFE.sub(lambda m: f"\\u{ord(m.group()):04x}", text) if escape else text


def _csv_cell(value: object, raw: bool, escape: bool) -> str:
    text = _cell(value, None)
    if not raw:
        text = neutralise_formula(text)
    return escape_control(text) if escape else text


def _table(
    rows: list[dict[str, Any]], out: TextIO, columns: Sequence[str], *, escape: bool = True
) -> int:
    """Columns aligned by terminal width, not by code points: a CJK character or an
    emoji takes two columns, a combining mark none."""
    cells = [[_cell(row.get(c), _CELL, escape=escape) for c in columns] for row in rows]
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


def _cell(value: object, limit: int | None, *, escape: bool = False) -> str:
    """The text of one cell.  In a table (``limit`` set): one line, control characters
    shown escaped unless raw (a tab would break the alignment, an escape sequence would
    drive the terminal), cut to ``limit`` columns."""
    text = "" if value is None else str(value)
    if limit is not None:
        text = text.replace("\n", "\u21b5")
        if escape:
            text = escape_control(text)
        if display_width(text) > limit:
            kept, used = [], 0
            for char in text:
                used += _char_width(char)
                if used > limit - 1:
                    break
                kept.append(char)
            text = "".join(kept) + "\u2026"
    return text


def _jsonable(value: object) -> object:
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return str(value)
