"""The store's value types and the row-level helpers behind :class:`~inbound_mail.store.db.Store`.

Public names are re-exported by :mod:`inbound_mail.store.db`; import them from there.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import Any, Literal

from ..errors import StoreError
from ..models import EmailOrigin, ParseOutcome, Rejected, SmsRecord
from . import schema as q

DeliveryStatus = Literal["pending", "delivered", "dead"]
AttemptOutcome = Literal["delivered", "failed", "dead"]
ATTEMPT_OUTCOMES: tuple[AttemptOutcome, ...] = ("delivered", "failed", "dead")
BacklogStatus = Literal["pending", "failed", "dead", "delivered"]
"""What ``deliveries`` and the backlog call a row: a pending row that failed before is "failed"."""
Router = Callable[[SmsRecord], Iterable[str]]


@dataclass(frozen=True, slots=True)
class IngestItem:
    """One email: its raw bytes, what the parser made of it, and where it came from."""

    raw: bytes
    outcome: ParseOutcome
    origin: EmailOrigin


@dataclass(frozen=True, slots=True)
class Checkpoint:
    """The highest UID stored for (account, folder) under one UIDVALIDITY."""

    account: str
    folder: str
    uidvalidity: int
    last_uid: int


@dataclass(frozen=True, slots=True)
class PendingAck:
    """An IMAP message that is stored but whose ``after`` action is still owed."""

    account: str
    folder: str
    uidvalidity: int
    uid: int
    action: str  # "seen" | "delete" | "move:FOLDER"


@dataclass(slots=True)
class IngestResult:
    """What one ``ingest`` call did.  ``new`` and ``duplicates`` keep input order."""

    new: list[SmsRecord] = field(default_factory=list)
    duplicates: list[SmsRecord] = field(default_factory=list)
    skipped: int = 0
    rejected: int = 0

    @property
    def read(self) -> int:
        return len(self.new) + len(self.duplicates) + self.skipped + self.rejected

    def merge(self, other: IngestResult) -> None:
        self.new.extend(other.new)
        self.duplicates.extend(other.duplicates)
        self.skipped += other.skipped
        self.rejected += other.rejected


@dataclass(frozen=True, slots=True)
class Delivery:
    """One outbox row: one record owed to one sink."""

    id: int
    sink: str
    record: SmsRecord
    status: DeliveryStatus
    attempts: int
    created_at: float  # epoch seconds
    next_attempt_at: float  # epoch seconds
    last_error: str | None


@dataclass(frozen=True, slots=True)
class AttemptRecord:
    """One delivery attempt, for :meth:`Store.record_attempts`."""

    delivery_id: int
    outcome: AttemptOutcome
    started_at: float
    duration: float
    error: str | None = None
    next_attempt_at: float | None = None  # for "failed"; None = retry at once


def epoch_of(iso_text: str) -> float:
    """Seconds since the epoch of an ISO-8601 text of the store (``...Z`` or an offset)."""
    return datetime.fromisoformat(iso_text.replace("Z", "+00:00")).timestamp()


def iso(epoch: float) -> str:
    """``epoch`` as UTC ISO-8601 with milliseconds and ``Z``: the store's text time format."""
    return datetime.fromtimestamp(epoch, UTC).isoformat(timespec="milliseconds")[:-6] + "Z"


def _instant(value: str, *, end_of_day: bool = False) -> str:
    """A ``received_at`` bound from a date (midnight UTC, or the next one) or an
    ISO instant (naive = UTC), in the parser's ``YYYY-MM-DDTHH:MM:SSZ`` form so
    that plain text comparison is time comparison."""
    text = value.strip()
    try:
        if len(text) == 10:
            day = date.fromisoformat(text) + timedelta(days=1 if end_of_day else 0)
            moment = datetime(day.year, day.month, day.day, tzinfo=UTC)
        else:
            moment = datetime.fromisoformat(text)
            if moment.tzinfo is None:
                moment = moment.replace(tzinfo=UTC)
    except ValueError as exc:
        raise StoreError(
            f"invalid date or time {value!r}: use 2024-05-01 or 2024-05-01T12:00:00Z"
        ) from exc
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def message_filter(
    since: str | None, until: str | None, originator: str | None, destination: str | None
) -> tuple[str, list[Any]]:
    """`` AND ...`` conditions on ``messages`` and their parameters."""
    conditions: list[str] = []
    params: list[Any] = []
    for condition, value in (
        ("received_at >= ?", since and _instant(since)),
        ("received_at < ?", until and _instant(until, end_of_day=True)),
        ("originator = ?", originator),
        ("destination = ?", destination),
    ):
        if value is not None:
            conditions.append(condition)
            params.append(value)
    return "".join(f" AND {c}" for c in conditions), params


# One vocabulary: ``deliveries`` shows a pending row that failed before as "failed",
# and each filter selects exactly the rows whose status column reads its name.
STATUS_FILTERS: dict[BacklogStatus, str] = {
    "pending": "d.status = 'pending' AND d.attempts = 0",
    "failed": "d.status = 'pending' AND d.attempts > 0",
    "dead": "d.status = 'dead'",
    "delivered": "d.status = 'delivered'",
}
BACKLOG_KEYS: tuple[BacklogStatus, ...] = ("pending", "failed", "dead", "delivered")
HEX_DIGITS = frozenset("0123456789abcdef")
_RECORD_FIELDS = (
    "originator", "destination", "date_time", "received_at", "text",
    "keyword", "message_id", "email_date", "subject", "sender", "authenticated", "auth_reason",
)  # fmt: skip


@dataclass(slots=True)
class IngestBatch:
    """The rows one ``ingest`` call writes with ``executemany`` at the end."""

    stamp: str
    now: float
    raws: list[tuple[int | None, bytes, str]] = field(default_factory=list)
    deliveries: list[tuple[str, str, float, float]] = field(default_factory=list)
    rejects: list[tuple[Any, ...]] = field(default_factory=list)

    def add_record(
        self, cur: sqlite3.Cursor, item: IngestItem, record: SmsRecord, sms_id: str
    ) -> bool:
        """Insert the message (if new) and its email row; True if the SMS is new.

        Row by row, because ``rowcount`` is what tells a new SMS from one seen
        earlier, in this batch or before, and ``lastrowid`` links the raw bytes.
        """
        cur.execute(
            q.INSERT_MESSAGE,
            (sms_id, record.originator, record.destination, record.date_time,
             record.received_at, record.text, record.keyword, record.message_id,
             record.email_date, record.subject, record.sender, self.stamp,
             None if record.authenticated is None else int(record.authenticated),
             record.auth_reason),
        )  # fmt: skip
        new = cur.rowcount == 1
        origin = item.origin
        cur.execute(
            q.INSERT_EMAIL,
            (sms_id, record.message_id, origin.kind, origin.account, origin.folder,
             origin.uidvalidity, origin.uid, origin.path, origin.key, self.stamp, int(not new)),
        )  # fmt: skip
        if cur.rowcount == 1:
            self.raws.append((cur.lastrowid, item.raw, self.stamp))
        return new

    def add_deliveries(self, sms_id: str, sinks: Iterable[str]) -> None:
        self.deliveries.extend((sms_id, sink, self.now, self.now) for sink in dict.fromkeys(sinks))

    def add_reject(self, item: IngestItem, rejected: Rejected) -> None:
        o = item.origin
        self.rejects.append(
            (rejected.reason, item.raw, self.stamp, o.describe(), o.kind, o.account, o.folder,
             o.uidvalidity, o.uid, o.path, o.key, rejected.message_id, rejected.sender,
             rejected.subject, rejected.code, rejected.evidence)
        )  # fmt: skip

    def flush(
        self, cur: sqlite3.Cursor, checkpoint: Checkpoint | None, acks: Sequence[PendingAck]
    ) -> None:
        cur.executemany(q.INSERT_RAW, self.raws)
        cur.executemany(q.INSERT_DELIVERY, self.deliveries)
        cur.executemany(q.INSERT_REJECT, self.rejects)
        if checkpoint is not None:
            c = checkpoint
            cur.execute(
                q.UPSERT_CHECKPOINT, (c.account, c.folder, c.uidvalidity, c.last_uid, self.stamp)
            )
        cur.executemany(
            q.UPSERT_ACK,
            [(a.account, a.folder, a.uidvalidity, a.uid, a.action, self.stamp) for a in acks],
        )


def sql_limit(limit: int | None) -> int:
    return -1 if limit is None else limit


def delivery_from_row(row: dict[str, Any]) -> Delivery:
    fields = {name: row[name] for name in _RECORD_FIELDS}
    if fields["authenticated"] is not None:
        fields["authenticated"] = bool(fields["authenticated"])
    return Delivery(
        id=row["id"],
        sink=row["sink"],
        record=SmsRecord(**fields),
        status=row["status"],
        attempts=row["attempts"],
        created_at=row["created_at"],
        next_attempt_at=row["next_attempt_at"],
        last_error=row["last_error"],
    )
