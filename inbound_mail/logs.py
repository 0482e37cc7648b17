"""Structured logging: one event a line, ``key=value`` fields or JSON.

Call sites log an event name plus fields::

    log_event(log, logging.INFO, "sms.stored", account="main", id=record.id)

The text format is ``TIME LEVEL EVENT key=value ...``.  When stderr is the
journal (``$JOURNAL_STREAM`` names stderr's device and inode) the time is left
out, since the journal adds its own, and each line starts with its syslog
priority (``<4>``) so that ``journalctl -p warning`` works.  A line from a
third-party library reads ``LEVEL log logger=NAME message="..."``.

Third-party loggers stay at WARNING whatever ``--log-level`` says: imapclient's
DEBUG lines are whole IMAP protocol exchanges (message bodies, and literals that
its own LOGIN/AUTHENTICATE redaction misses), httpx's INFO lines are request
URLs.  mail-parser warns about every inline part it meets, so it is held at ERROR.
Values are never secrets: code logs URLs through ``redact_url`` and never logs
passwords (a test greps every line of a DEBUG run for known secrets).
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from typing import Any, TextIO

__all__ = ["JsonFormatter", "KeyValueFormatter", "journal_stream", "log_event", "setup_logging"]

_FIELDS = "inbound_mail_fields"
_HANDLER_NAME = "inbound-mail"
# Libraries whose own level is raised above the root's WARNING (see the module docstring).
_QUIET_LOGGERS = {"mailparser": logging.ERROR}
_SYSLOG_PRIORITY = {"CRITICAL": 2, "ERROR": 3, "WARNING": 4, "INFO": 6, "DEBUG": 7}


def log_event(logger: logging.Logger, level: int, event: str, /, **fields: Any) -> None:
    """Log ``event`` with ``fields`` as structured data."""
    if logger.isEnabledFor(level):
        logger.log(level, event, extra={_FIELDS: fields}, stacklevel=2)


def _quote(value: object) -> str:
    text = "" if value is None else str(value)
    if text and all(c.isprintable() and c not in ' "=' for c in text):
        return text
    return json.dumps(text, ensure_ascii=False)


def _event_and_fields(record: logging.LogRecord) -> tuple[str, dict[str, Any]]:
    """Our records carry an event and fields; any other becomes event ``log``."""
    fields: dict[str, Any] | None = getattr(record, _FIELDS, None)
    if fields is None:
        return "log", {"logger": record.name, "message": record.getMessage()}
    return record.getMessage(), fields


class KeyValueFormatter(logging.Formatter):
    """``2026-11-26T22:15:58Z INFO sms.stored account=main id=...``

    ``timestamps=False`` leaves the time out; ``syslog_prefix=True`` starts the
    line with ``<N>``, the syslog priority journald reads from a stream.
    """

    def __init__(self, *, timestamps: bool = True, syslog_prefix: bool = False) -> None:
        super().__init__()
        self.timestamps = timestamps
        self.syslog_prefix = syslog_prefix

    def format(self, record: logging.LogRecord) -> str:
        parts = []
        if self.timestamps:
            parts.append(time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(record.created)))
        event, fields = _event_and_fields(record)
        parts += [record.levelname, event]
        parts += [f"{key}={_quote(value)}" for key, value in fields.items()]
        line = " ".join(parts)
        if record.exc_info:
            line += " exception=" + _quote(self.formatException(record.exc_info))
        if self.syslog_prefix:
            line = f"<{_SYSLOG_PRIORITY.get(record.levelname, 6)}>{line}"
        return line


class JsonFormatter(logging.Formatter):
    """One JSON object a line: ``{"ts": ..., "level": ..., "event": ..., **fields}``."""

    def format(self, record: logging.LogRecord) -> str:
        event, fields = _event_and_fields(record)
        data: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(record.created)),
            "level": record.levelname,
            "event": event,
            "logger": record.name,
        }
        data.update(fields)
        if record.exc_info:
            data["exception"] = self.formatException(record.exc_info)
        return json.dumps(data, ensure_ascii=False, default=str)


def journal_stream(stream: TextIO) -> bool:
    """True when ``stream`` is the journal: ``$JOURNAL_STREAM`` holds its ``DEV:INODE``.

    Comparing, rather than testing that the variable is set, matters: it is
    inherited, so a shell started from a service has it while writing to a tty.
    """
    device, _, inode = os.environ.get("JOURNAL_STREAM", "").partition(":")
    if not (device.isdigit() and inode.isdigit()):
        return False
    try:
        info = os.fstat(stream.fileno())
    except (OSError, ValueError, AttributeError):  # closed, or no descriptor (captured)
        return False
    return (info.st_dev, info.st_ino) == (int(device), int(inode))


def setup_logging(level: str = "INFO", fmt: str = "text", stream: TextIO | None = None) -> None:
    """Log to stderr (or ``stream``): inbound-mail's events at ``level``, other
    libraries' at WARNING and up.  Idempotent: a second call replaces the first."""
    out = stream if stream is not None else sys.stderr
    handler = logging.StreamHandler(out)
    handler.set_name(_HANDLER_NAME)
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        journal = journal_stream(out)
        handler.setFormatter(KeyValueFormatter(timestamps=not journal, syslog_prefix=journal))
    root = logging.getLogger()
    for logger in (root, logging.getLogger("inbound_mail")):
        for old in list(logger.handlers):
            if logger is not root or old.get_name() == _HANDLER_NAME:
                logger.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(logging.WARNING)
    logging.getLogger("inbound_mail").setLevel(level.upper())
    for name, quiet in _QUIET_LOGGERS.items():
        logging.getLogger(name).setLevel(quiet)
