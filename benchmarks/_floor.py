"""The floor's own work, shared by the import and IMAP floors: mail-parser, the four
fields cut out with one regex, ``executemany`` into SQLite.  Nothing else."""

from __future__ import annotations

import hashlib
import re
import sqlite3
from pathlib import Path
from typing import Any

import mailparser
from _common import PROVIDER

_LABELS = re.compile(
    r"^[ \t]*(from|to|date[ \t]*/[ \t]*time)[ \t]*[:=][ \t]*(.*?)[ \t]*$", re.I | re.M
)
_TEXT = re.compile(r"^[ \t]*(?:body|text)[ \t]*[:=][ \t]*", re.I | re.M)
_TAGS = re.compile(r"<br>|</?p>|<[^>]*>")


def floor_row(raw: bytes) -> tuple[str, ...] | None:
    """mail-parser's parse, and the SMS row; None for mail from another sender."""
    mail = mailparser.parse_from_bytes(raw)
    if not any(address.lower() == PROVIDER for _name, address in mail.from_):
        return None
    body = mail.text_plain[0] if mail.text_plain else _TAGS.sub("\n", "".join(mail.text_html))
    fields = {label.lower().replace(" ", ""): value for label, value in _LABELS.findall(body)}
    match = _TEXT.search(body)
    text = body[match.end() :].strip() if match else ""
    values = (fields.get("from", ""), fields.get("to", ""), fields.get("date/time", ""), text)
    sms_id = hashlib.sha256("\0".join(values).encode("utf-8", "surrogatepass")).hexdigest()
    return (sms_id, *values, mail.message_id or "", mail.subject or "")


class FloorDb:
    """One table, WAL and ``synchronous=FULL`` like the store, a transaction per ``flush``."""

    def __init__(self, path: Path) -> None:
        self.conn = sqlite3.connect(path, isolation_level=None)
        self.conn.execute("PRAGMA journal_mode=WAL")
        self.conn.execute("PRAGMA synchronous=FULL")
        self.conn.execute(
            "CREATE TABLE IF NOT EXISTS sms (id TEXT PRIMARY KEY, originator TEXT, "
            "destination TEXT, date_time TEXT, text TEXT, message_id TEXT, subject TEXT)"
        )
        self.rows: list[tuple[Any, ...]] = []
        self.inserted = 0

    def add(self, row: tuple[Any, ...]) -> None:
        self.rows.append(row)

    def flush(self) -> None:
        if not self.rows:
            return
        before = self.conn.total_changes
        self.conn.execute("BEGIN")
        self.conn.executemany("INSERT OR IGNORE INTO sms VALUES (?, ?, ?, ?, ?, ?, ?)", self.rows)
        self.conn.execute("COMMIT")
        self.inserted += self.conn.total_changes - before
        self.rows.clear()

    def close(self) -> None:
        self.flush()
        self.conn.close()
