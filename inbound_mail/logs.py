"""Structured logging: one event a line, ``key=value`` fields or JSON.

Call sites log an event name plus fields::

    log_event(log, logging.INFO, "sms.stored", account="main", id=record.id)

The text format is ``TIME LEVEL EVENT key=value ...``; under journald
(``$JOURNAL_STREAM`` set) the time is left out, since the journal adds its own.
Values are never secrets: code logs URLs through ``redact_url`` and never logs
passwords (a test greps every line for known secrets).
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from typing import Any

__all__ = ["JsonFormatter", "KeyValueFormatter", "log_event", "setup_logging"]

_FIELDS = "inbound_mail_fields"


def log_event(logger: logging.Logger, level: int, event: str, /, **fields: Any) -> None:
    """Log ``event`` with ``fields`` as structured data."""
    if logger.isEnabledFor(level):
        logger.log(level, event, extra={_FIELDS: fields}, stacklevel=2)


def _quote(value: object) -> str:
    text = "" if value is None else str(value)
    if text and all(c.isprintable() and c not in ' "=' for c in text):
        return text
    return json.dumps(text, ensure_ascii=False)


class KeyValueFormatter(logging.Formatter):
    """``2026-11-26T22:15:58Z INFO sms.stored account=main id=...``"""

    def __init__(self, *, timestamps: bool = True) -> None:
        super().__init__()
        self.timestamps = timestamps

    def format(self, record: logging.LogRecord) -> str:
        parts = []
        if self.timestamps:
            parts.append(time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(record.created)))
        parts += [record.levelname, record.getMessage()]
        fields: dict[str, Any] = getattr(record, _FIELDS, {})
        parts += [f"{key}={_quote(value)}" for key, value in fields.items()]
        line = " ".join(parts)
        if record.exc_info:
            line += " exception=" + _quote(self.formatException(record.exc_info))
        return line


class JsonFormatter(logging.Formatter):
    """One JSON object a line: ``{"ts": ..., "level": ..., "event": ..., **fields}``."""

    def format(self, record: logging.LogRecord) -> str:
        data: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(record.created)),
            "level": record.levelname,
            "event": record.getMessage(),
            "logger": record.name,
        }
        data.update(getattr(record, _FIELDS, {}))
        if record.exc_info:
            data["exception"] = self.formatException(record.exc_info)
        return json.dumps(data, ensure_ascii=False, default=str)


def setup_logging(level: str = "INFO", fmt: str = "text") -> None:
    """Configure the ``inbound_mail`` logger tree on stderr (idempotent)."""
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(KeyValueFormatter(timestamps=not os.environ.get("JOURNAL_STREAM")))
    root = logging.getLogger("inbound_mail")
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
