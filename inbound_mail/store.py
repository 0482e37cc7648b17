"""The SQLite store: messages (deduplicated), source emails, raw bytes, rejects,
IMAP checkpoints and acknowledgements still owed, the delivery outbox and its
attempt log.

INTERFACE STUB -- the signatures and docstrings below are the contract other
modules are written against; the bodies are to be implemented.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from .models import EmailOrigin, ParseOutcome, SmsRecord

DeliveryStatus = Literal["pending", "delivered", "dead"]
AttemptOutcome = Literal["delivered", "failed", "dead"]
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


class Store:
    """One connection to the database.  Not thread-safe: open one Store per thread."""

    @classmethod
    def open(cls, path: str | Path, *, raw_retention_days: float | None = 90.0) -> Store:
        """Open (creating with mode 0600, then migrating) the database at ``path``."""
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- ingestion ---------------------------------------------------------
    def ingest(
        self,
        items: Sequence[IngestItem],
        *,
        route: Router | None = None,
        checkpoint: Checkpoint | None = None,
        acks: Sequence[PendingAck] = (),
    ) -> IngestResult:
        """Store a batch in ONE transaction: new messages, one ``emails`` row per
        email that carried an SMS (duplicates included), raw bytes, rejects, one
        pending delivery per sink name ``route(record)`` yields for each NEW
        message, the checkpoint (never moved backwards within one UIDVALIDITY)
        and the acks owed.  Skipped emails store nothing."""
        raise NotImplementedError

    # -- IMAP bookkeeping --------------------------------------------------
    def get_checkpoint(self, account: str, folder: str) -> Checkpoint | None:
        raise NotImplementedError

    def pending_acks(self, account: str, folder: str) -> list[PendingAck]:
        raise NotImplementedError

    def clear_acks(self, acks: Sequence[PendingAck]) -> None:
        raise NotImplementedError

    # -- queries -------------------------------------------------------------
    def messages(
        self,
        *,
        since: str | None = None,
        until: str | None = None,
        originator: str | None = None,
        destination: str | None = None,
        limit: int | None = None,
    ) -> Iterator[dict[str, Any]]:
        raise NotImplementedError

    def rejects(self, *, limit: int | None = None) -> Iterator[dict[str, Any]]:
        raise NotImplementedError

    def get_reject(self, reject_id: int) -> dict[str, Any] | None:
        raise NotImplementedError

    # -- outbox ----------------------------------------------------------------
    def pending_deliveries(self, sink: str, *, limit: int = 100) -> list[Delivery]:
        raise NotImplementedError

    def record_attempt(
        self,
        delivery_id: int,
        *,
        outcome: AttemptOutcome,
        started_at: float,
        duration: float,
        error: str | None = None,
        next_attempt_at: float | None = None,
    ) -> None:
        raise NotImplementedError

    def requeue(
        self, sink: str, *, since: str | None = None, message_id: str | None = None
    ) -> int:
        raise NotImplementedError

    def retry_dead(self, sink: str | None = None) -> int:
        raise NotImplementedError

    def deliveries(
        self,
        *,
        status: str | None = None,
        sink: str | None = None,
        limit: int | None = None,
    ) -> Iterator[dict[str, Any]]:
        raise NotImplementedError

    def backlog(self) -> dict[str, dict[str, int]]:
        raise NotImplementedError

    # -- housekeeping ----------------------------------------------------------
    def prune_raw(self, *, now: float | None = None) -> int:
        raise NotImplementedError

    def set_state(self, key: str, value: str) -> None:
        raise NotImplementedError

    def get_state(self, key: str) -> str | None:
        raise NotImplementedError
