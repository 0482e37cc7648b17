"""Shared by the event-stream daemon tests: the redis and nats sinks' configs for a
real daemon, provider emails with known SMS ids, and waiting for the outbox."""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from inbound_mail.models import dedup_id
from inbound_mail.testing.emails import build_provider_email
from testsupport.nats_server import NatsServer
from testsupport.redis_server import RedisServer

from helpers import rows

FAST_ACCOUNT: Mapping[str, Any] = {
    "idle_deadline": 3.0,
    "connect_timeout": 3.0,
    "poll_interval": 1.0,
}
FAST_RETRY: Mapping[str, Any] = {"retry_base": 0.1, "retry_cap": 1.0, "timeout": 5.0}
DESTINATION = "+393331234333"
DATE_TIME = "20240501120000"


def redis_sink(server: RedisServer, stream: str, **options: Any) -> dict[str, Any]:
    return {
        "name": "redis",
        "type": "redis",
        "url": server.url,
        "stream": stream,
        "password_file": str(server.password_file),
        **FAST_RETRY,
        **options,
    }


def nats_sink(server: NatsServer, stream: str, subject: str, **options: Any) -> dict[str, Any]:
    return {
        "name": "nats",
        "type": "nats",
        "url": server.url,
        "stream": stream,
        "subject": subject,
        "user": server.user,
        "password_file": str(server.password_file),
        **FAST_RETRY,
        **options,
    }


def sms_email(n: int, tag: str) -> tuple[str, bytes]:
    """(SMS id, a provider email carrying it); each copy gets its own Message-ID."""
    originator = f"+39347{n:07d}"
    text = f"scale {tag} {n}"
    raw = build_provider_email(
        originator,
        DESTINATION,
        DATE_TIME,
        text,
        message_id=f"<{uuid.uuid4().hex}@agile>",
    )
    return dedup_id(originator, DESTINATION, DATE_TIME, text), raw


def delivered(db: Path, sink: str, expected: int) -> bool:
    """True once ``expected`` deliveries of ``sink`` are delivered (and none pending)."""
    if not db.exists():
        return False
    try:
        found = rows(db, "SELECT status FROM deliveries WHERE sink = ?", (sink,))
    except Exception:  # the daemon has not created the schema yet
        return False
    return len(found) == expected and all(status == "delivered" for (status,) in found)


def unique_stream() -> str:
    return uuid.uuid4().hex[:10]
