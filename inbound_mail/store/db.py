"""The SQLite store: messages (deduplicated), source emails, raw bytes, rejects,
IMAP checkpoints and acknowledgements still owed, the delivery outbox and its
attempt log.

Tables (the schema lives in :mod:`inbound_mail.store.schema`; column names are
user-facing, for sqlite-utils and Datasette):

``messages``     one row per distinct SMS, keyed by :attr:`SmsRecord.id`
``emails``       one row per source email that carried an SMS; ``duplicate`` = 1
                 when its SMS was already stored
``raw_emails``   the raw bytes of ``emails`` rows, pruned after the retention
``rejects``      provider emails that failed to parse or to authenticate (``code``,
                 ``evidence``), raw bytes included (kept forever: they are the
                 evidence a parser fix or a release needs)
``checkpoints``  the last stored UID per (account, folder) under one UIDVALIDITY
``pending_acks`` IMAP actions (seen, delete, move) owed for stored emails
``deliveries``   the outbox: one row per (SMS, sink), ``id`` order = delivery order
``attempts``     every delivery attempt, for statistics and post-mortems
``state``        small key/value facts such as worker heartbeats

Times are UTC ISO-8601 text with ms and ``Z``, except the outbox's scheduling
columns (``created_at``, ``next_attempt_at``, ``delivered_at``, ``started_at``),
which are REAL epoch seconds because the workers compute with them.
"""

from __future__ import annotations

import json
import math
import os
import secrets
import sqlite3
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from json.encoder import encode_basestring_ascii
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from ..errors import StoreError
from ..models import EmailOrigin, Rejected, SmsRecord
from . import schema as q
from .rows import (
    BACKLOG_KEYS,
    HEX_DIGITS,
    STATUS_FILTERS,
    AttemptOutcome,
    AttemptRecord,
    BacklogStatus,
    Checkpoint,
    Delivery,
    IngestBatch,
    IngestItem,
    IngestResult,
    PendingAck,
    Router,
    delivery_from_row,
    iso,
    message_filter,
    sql_limit,
)
from .schema import connect, connect_readonly, rollback, translate_error

if TYPE_CHECKING:
    from sqlite_utils import Database

__all__ = ["SCHEDULE_KEY", "RetryResult", "Store"]


#: This process's name in the ``parsing`` table: a row left under another name
#: was left by a process that died while parsing.
RUN = f"{os.getpid()}-{secrets.token_hex(6)}"


def _dead(run: str) -> bool:
    """Whether the process that wrote ``run`` is gone (so it died while parsing).

    Another live process (a ``backfill`` beside the daemon) may be parsing the
    same email right now: that is no crash.  A reused PID reads as alive, which
    only delays the count by one start."""
    if run == RUN:
        return False
    pid = run.partition("-")[0]
    if not pid.isdigit():
        return True
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except OSError:  # EPERM: it exists, as another user
        return False
    return False


def _origin_key(origin: EmailOrigin) -> str:
    """``json.dumps([kind, account, folder, uidvalidity, uid, path, key])``, character for
    character (rows written by earlier versions must match), at a third of its cost:
    the writer computes it two or three times per email."""
    o = origin
    return (
        f"[{_json(o.kind)}, {_json(o.account)}, {_json(o.folder)}, {_json(o.uidvalidity)}, "
        f"{_json(o.uid)}, {_json(o.path)}, {_json(o.key)}]"
    )


def _json(value: str | int | None) -> str:
    if value is None:
        return "null"
    if isinstance(value, str):
        return encode_basestring_ascii(value)
    return int.__repr__(value)


SCHEDULE_KEY = "outbox.rescheduled"
"""The ``state`` key bumped by every command that makes deliveries due (see
:meth:`Store.schedule_version`)."""


@dataclass(frozen=True, slots=True)
class RetryResult:
    """What :meth:`Store.retry_now` did: ``due`` pending deliveries made due now,
    ``revived`` of them dead ones given a fresh set of attempts."""

    due: int
    revived: int


class Store:
    """One connection to the database.  Not thread-safe: open one Store per thread."""

    def __init__(
        self,
        conn: sqlite3.Connection,
        path: Path,
        *,
        raw_retention_days: float | None,
        clock: Callable[[], float],
    ) -> None:
        """Use :meth:`open`."""
        self.path = path
        self._conn = conn
        self._db: Database | None = None
        self._retention_days = raw_retention_days
        self._clock = clock

    @classmethod
    def open(
        cls,
        path: str | Path,
        *,
        raw_retention_days: float | None = 90.0,
        clock: Callable[[], float] = time.time,
    ) -> Store:
        """Open (creating with mode 0600, then migrating) the database at ``path``.

        ``raw_retention_days``: how long :meth:`prune_raw` keeps the raw bytes
        of stored emails (None or 0: forever).  ``clock`` gives epoch seconds
        (tests pass a fake one).
        """
        db_path = Path(path)
        return cls(connect(db_path), db_path, raw_retention_days=raw_retention_days, clock=clock)

    @classmethod
    def open_readonly(cls, path: str | Path, *, clock: Callable[[], float] = time.time) -> Store:
        """Open an existing database read-only, for the commands that only read.

        Raises :class:`StoreError` when ``path`` does not exist (nothing is
        created), is not an inbound-mail database, or cannot be read.  Any
        write through this Store fails with a "read-only" StoreError.
        """
        db_path = Path(path)
        return cls(connect_readonly(db_path), db_path, raw_retention_days=None, clock=clock)

    @property
    def database(self) -> Database:
        """The connection as a :class:`sqlite_utils.Database`, for ad-hoc queries."""
        if self._db is None:
            # Made on first use: sqlite-utils is slow to import, and ingestion never needs it.
            from sqlite_utils import Database

            self._db = Database(self._conn, recursive_triggers=False, execute_plugins=False)
        return self._db

    def close(self) -> None:
        """Close the connection.  Idempotent."""
        self._conn.close()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- transactions ------------------------------------------------------
    @contextmanager
    def _write(self, doing: str) -> Iterator[sqlite3.Cursor]:
        """One ``BEGIN IMMEDIATE`` transaction: committed on success, rolled back on any error."""
        conn = self._conn
        try:
            conn.execute("BEGIN IMMEDIATE")
        except sqlite3.Error as exc:
            raise translate_error(exc, self.path, doing) from exc
        try:
            yield conn.cursor()
            conn.execute("COMMIT")
        except BaseException as exc:
            rollback(conn)
            if isinstance(exc, sqlite3.Error):
                raise translate_error(exc, self.path, doing) from exc
            raise

    def _rows(self, doing: str, query: str, params: Sequence[Any] = ()) -> Iterator[dict[str, Any]]:
        """Dict rows, with sqlite3 errors (even those raised mid-iteration) translated."""
        try:
            cursor = self._conn.execute(query, params)
            keys = [column[0] for column in cursor.description]
            for row in cursor:
                yield dict(zip(keys, row, strict=True))
        except sqlite3.Error as exc:
            raise translate_error(exc, self.path, doing) from exc

    def _one(self, doing: str, query: str, params: Sequence[Any] = ()) -> Any:
        """The first column of the first row, or None."""
        try:
            row = self._conn.execute(query, params).fetchone()
        except sqlite3.Error as exc:
            raise translate_error(exc, self.path, doing) from exc
        return None if row is None else row[0]

    # -- ingestion ---------------------------------------------------------
    def ingest(
        self,
        items: Sequence[IngestItem],
        *,
        route: Router | None = None,
        checkpoint: Checkpoint | None = None,
        acks: Sequence[PendingAck] = (),
        not_stored: Sequence[EmailOrigin] = (),
    ) -> IngestResult:
        """Store a batch in ONE transaction: new messages, one ``emails`` row per
        email that carried an SMS (duplicates included), raw bytes, rejects, one
        pending delivery per sink name ``route(record)`` yields for each NEW
        message, the checkpoint (never moved backwards within one UIDVALIDITY)
        and the acks owed.  Skipped emails store nothing.  The ``parsing`` rows
        of the items and of ``not_stored`` (recorded in flight, then held back
        or never parsed: no crash happened to them) are deleted.

        An email recorded before (same IMAP UID, or same file and key) adds no
        second ``emails`` or ``rejects`` row; its SMS counts as a duplicate.
        """
        # Routed before the write transaction: filters run on the sender's text
        # and must never hold the database's write lock while they do.
        routes = {
            id(item): route(item.outcome)
            for item in items
            if route is not None and isinstance(item.outcome, SmsRecord)
        }
        now = self._clock()
        batch = IngestBatch(stamp=iso(now), now=now)
        result = IngestResult()
        with self._write("cannot store a batch") as cur:
            for item in items:
                outcome = item.outcome
                if isinstance(outcome, SmsRecord):
                    sms_id = outcome.id
                    if batch.add_record(cur, item, outcome, sms_id):
                        result.new.append(outcome)
                        if route is not None:
                            batch.add_deliveries(sms_id, routes[id(item)])
                    else:
                        result.duplicates.append(outcome)
                elif isinstance(outcome, Rejected):
                    batch.add_reject(item, outcome)
                    result.rejected += 1
                else:
                    result.skipped += 1
            batch.flush(cur, checkpoint, acks)
            # Parsed and stored: no longer in flight.
            if cur.execute(q.ANY_PARSING).fetchone()[0]:
                origins = [*(i.origin for i in items), *not_stored]
                cur.executemany(q.DELETE_PARSING, [(_origin_key(o),) for o in origins])
        return result

    # -- emails being parsed -------------------------------------------------
    def parse_crashes(self, origins: Iterable[EmailOrigin]) -> dict[EmailOrigin, int]:
        """Those of ``origins`` that another process was parsing when it died,
        with how many processes started parsing them (see :meth:`mark_parsing`)."""
        if not self._others_parsing():
            return {}  # the usual case: no other run left any, no key to compute
        by_key = {_origin_key(origin): origin for origin in origins}
        rows = self._parsing_rows(list(by_key))
        return {by_key[key]: attempts for key, (attempts, run) in rows.items() if _dead(run)}

    def _others_parsing(self) -> bool:
        """Whether another run left ``parsing`` rows: only those can be crashes (this
        run's own rows never are), so without them there is nothing to look up."""
        return bool(self._one("cannot read the emails being parsed", q.OTHER_RUN_PARSING, (RUN,)))

    def _parsing_rows(self, keys: list[str]) -> dict[str, tuple[int, str]]:
        """origin key -> (attempts, run) of the ``parsing`` rows among ``keys``."""
        if not keys:
            return {}
        rows = self._rows(
            "cannot read the emails being parsed", q.PARSING_ROWS, (json.dumps(keys),)
        )
        return {row["origin"]: (int(row["attempts"]), str(row["run"])) for row in rows}

    def mark_parsing(self, origins: Iterable[EmailOrigin]) -> None:
        """Record (committed) that this process starts parsing these emails.

        :meth:`ingest` of their outcomes deletes the rows.  A row this process
        finds from another run counts one more attempt: that run died while
        parsing (a crash, a kill, the watchdog ending a stall)."""
        stamp = iso(self._clock())
        keys = [_origin_key(origin) for origin in origins]
        if not keys:
            return
        found = self._parsing_rows(keys) if self._others_parsing() else {}
        rows = [
            {"origin": key, "run": RUN, "stamp": stamp,
             "crashed": int(key in found and _dead(found[key][1]))}
            for key in keys
        ]  # fmt: skip
        # Without fsync: the row must outlive this process (a crash, SIGKILL,
        # SIGABRT from the watchdog), and the OS keeps the WAL write for that;
        # after a power loss it may be gone, and the email is merely parsed once
        # more.  The ingest commit that follows is synchronous=FULL again, which
        # syncs this write too.  So the push path gains a commit, not an fsync.
        self._conn.execute("PRAGMA synchronous = NORMAL")
        try:
            with self._write("cannot record the emails being parsed") as cur:
                cur.executemany(q.MARK_PARSING, rows)
        finally:
            self._conn.execute("PRAGMA synchronous = FULL")

    def release(
        self, reject_id: int, item: IngestItem, *, route: Router | None = None
    ) -> IngestResult | None:
        """Store a released reject's SMS (``item``) and mark the reject released, in ONE
        transaction.  None (and nothing written) if the reject was released before, so a
        repeated release never delivers twice."""
        if not isinstance(item.outcome, SmsRecord):
            raise StoreError(f"reject {reject_id}: only an SMS record can be released")
        now = self._clock()
        batch = IngestBatch(stamp=iso(now), now=now)
        result = IngestResult()
        with self._write("cannot release a reject") as cur:
            cur.execute(q.RELEASE_REJECT, (batch.stamp, item.outcome.id, reject_id))
            if cur.rowcount != 1:
                return None
            record = item.outcome
            if batch.add_record(cur, item, record, record.id):
                result.new.append(record)
                if route is not None:
                    batch.add_deliveries(record.id, route(record))
            else:
                result.duplicates.append(record)
            batch.flush(cur, None, ())
        return result

    # -- IMAP bookkeeping --------------------------------------------------
    def get_checkpoint(self, account: str, folder: str) -> Checkpoint | None:
        """The checkpoint of (account, folder), or None before the first batch."""
        rows = list(self._rows("cannot read a checkpoint", q.GET_CHECKPOINT, (account, folder)))
        return Checkpoint(**rows[0]) if rows else None

    def known_uids(
        self, account: str, folder: str, uidvalidity: int, uids: Iterable[int]
    ) -> set[int]:
        """Those of ``uids`` already recorded (as ``emails`` or ``rejects``) for the folder."""
        wanted = json.dumps([int(uid) for uid in uids])
        if wanted == "[]":
            return set()
        params = (account, folder, uidvalidity, wanted) * 2
        rows = self._rows("cannot read known UIDs", q.KNOWN_UIDS, params)
        return {int(row["uid"]) for row in rows}

    def pending_acks(self, account: str, folder: str) -> list[PendingAck]:
        """Every ack owed in (account, folder), whatever its UIDVALIDITY, by UID."""
        rows = self._rows("cannot read pending acks", q.PENDING_ACKS, (account, folder))
        return [PendingAck(**row) for row in rows]

    def clear_acks(self, acks: Sequence[PendingAck]) -> None:
        """Forget acks that were applied (or can no longer be)."""
        keys = [(a.account, a.folder, a.uidvalidity, a.uid) for a in acks]
        with self._write("cannot clear acks") as cur:
            cur.executemany(q.DELETE_ACK, keys)

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
        """Stored SMS in ``received_at`` order: ``id``, every record field, ``stored_at``.

        ``since`` (inclusive) and ``until`` (exclusive) take an ISO instant
        (naive = UTC) or a date; a date ``until`` includes that whole UTC day.
        """
        where, params = message_filter(since, until, originator, destination)
        query = f"SELECT * FROM messages WHERE true{where} ORDER BY received_at, stored_at LIMIT ?"
        return self._rows("cannot read messages", query, [*params, sql_limit(limit)])

    def rejects(
        self, *, limit: int | None = None, codes: Sequence[str] = ()
    ) -> Iterator[dict[str, Any]]:
        """Rejected emails in id order, without ``raw`` but with its ``size`` in bytes;
        with ``codes``, only those whose stored ``code`` is one of them."""
        where = f"WHERE code IN ({', '.join('?' * len(codes))})" if codes else ""
        query = f"SELECT {q.REJECT_COLUMNS} FROM rejects {where} ORDER BY id LIMIT ?"
        return self._rows("cannot read rejects", query, (*codes, sql_limit(limit)))

    def get_reject(self, reject_id: int) -> dict[str, Any] | None:
        """One reject with its ``raw`` bytes, or None."""
        query = f"SELECT {q.REJECT_COLUMNS}, raw FROM rejects WHERE id = ?"
        rows = list(self._rows("cannot read a reject", query, (reject_id,)))
        return rows[0] if rows else None

    def trust_counts(self, since_epoch: float) -> dict[str, int]:
        """Since ``since_epoch``: SMS stored with ``authenticated`` false
        (``unauthenticated_sms``) and unauthenticated rejects not released
        (``unauthenticated_rejects``)."""
        since = iso(since_epoch)
        doing = "cannot read trust counts"
        return {
            "unauthenticated_sms": int(self._one(doing, q.UNAUTHENTICATED_SMS, (since,))),
            "unauthenticated_rejects": int(self._one(doing, q.UNAUTHENTICATED_REJECTS, (since,))),
        }

    # -- outbox ----------------------------------------------------------------
    def pending_deliveries(
        self, sink: str, *, limit: int = 100, due_by: float | None = None
    ) -> list[Delivery]:
        """Pending deliveries of ``sink`` in id order; with ``due_by``, only those
        whose ``next_attempt_at`` is at or before it."""
        due = math.inf if due_by is None else due_by
        rows = self._rows("cannot read the outbox", q.PENDING, (sink, due, limit))
        return [delivery_from_row(row) for row in rows]

    def next_due(self, sink: str) -> float | None:
        """The earliest ``next_attempt_at`` among ``sink``'s pending deliveries."""
        value = self._one("cannot read the outbox", q.NEXT_DUE, (sink,))
        return None if value is None else float(value)

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
        """Log one attempt and move the delivery on, in one transaction:
        ``delivered`` -> delivered; ``failed`` -> retried at ``next_attempt_at``
        (None: now); ``dead`` -> dead.  Every outcome counts in ``attempts``."""
        attempt = AttemptRecord(delivery_id, outcome, started_at, duration, error, next_attempt_at)
        self.record_attempts([attempt])

    def record_attempts(self, attempts: Iterable[AttemptRecord]) -> None:
        """:meth:`record_attempt` for a whole batch, in one transaction."""
        now = self._clock()
        with self._write("cannot record delivery attempts") as cur:
            for a in attempts:
                if a.outcome not in ("delivered", "failed", "dead"):
                    raise StoreError(f"unknown attempt outcome {a.outcome!r}")
                cur.execute(
                    q.INSERT_ATTEMPT, (a.started_at, a.duration, a.outcome, a.error, a.delivery_id)
                )
                if cur.rowcount != 1:
                    raise StoreError(f"database {self.path}: no delivery {a.delivery_id}")
                cur.execute(
                    q.UPDATE_DELIVERY,
                    {"id": a.delivery_id, "outcome": a.outcome, "error": a.error,
                     "finished": a.started_at + a.duration,
                     "next": now if a.next_attempt_at is None else a.next_attempt_at},
                )  # fmt: skip

    def requeue(self, sink: str, *, since: str | None = None, message_id: str | None = None) -> int:
        """Queue messages for ``sink`` again (pending, attempts 0), inserting outbox
        rows where none exist.  ``since`` filters on ``received_at`` (ISO date or
        instant); ``message_id`` is an SMS id or an unambiguous prefix of one;
        neither: every message.  Returns how many deliveries were queued."""
        now = self._clock()
        where, params = message_filter(since, None, None, None)
        with self._write("cannot requeue") as cur:
            if message_id is not None:
                sms_id = self._resolve_prefix(cur, message_id)
                if sms_id is None:
                    return 0
                where += " AND id = ?"
                params.append(sms_id)
            cur.execute(q.REQUEUE.format(where=where), [sink, now, now, *params])
            queued = cur.rowcount
            self._rescheduled(cur)
            return queued

    def _resolve_prefix(self, cur: sqlite3.Cursor, prefix: str) -> str | None:
        """The one SMS id starting with ``prefix``; None if none; StoreError if several."""
        prefix = prefix.strip().lower()
        if not prefix or not set(prefix) <= HEX_DIGITS:
            raise StoreError(f"invalid message id {prefix!r}: hexadecimal digits expected")
        # Ids are lowercase hex, all below "g": [prefix, prefix + "g") is the prefix range.
        cur.execute(
            "SELECT id FROM messages WHERE id >= ? AND id < ? LIMIT 2", (prefix, prefix + "g")
        )
        found = [row[0] for row in cur.fetchall()]
        if len(found) > 1:
            raise StoreError(f"message id prefix {prefix!r} is ambiguous: give more characters")
        return found[0] if found else None

    def retry_dead(self, sink: str | None = None) -> int:
        """Dead deliveries (of ``sink``, or of every sink) back to pending, attempts 0."""
        now = self._clock()
        with self._write("cannot retry dead deliveries") as cur:
            cur.execute(q.RETRY_DEAD, (now, sink, sink))
            revived = cur.rowcount
            self._rescheduled(cur)
            return revived

    def retry_now(self, sink: str | None = None, *, dead: bool = False) -> RetryResult:
        """Make the pending deliveries of ``sink`` (or of every sink) due now, those
        waiting for a retry included, keeping their attempt count; with ``dead``,
        dead ones too, with a fresh set of attempts.  A running daemon notices within
        :data:`inbound_mail.delivery.SCHEDULE_POLL` seconds (:meth:`schedule_version`)."""
        now = self._clock()
        with self._write("cannot reschedule deliveries") as cur:
            revived = 0
            if dead:
                cur.execute(q.RETRY_DEAD, (now, sink, sink))
                revived = cur.rowcount
            cur.execute(q.DUE_NOW, (now, sink, sink))
            due = cur.rowcount
            self._rescheduled(cur)
        return RetryResult(due=due, revived=revived)

    def schedule_version(self) -> str | None:
        """A value that changes whenever deliveries are made due by another command
        (``retry``, ``retry-dead``, ``replay``, a reload); cheap to poll."""
        return self.get_state(SCHEDULE_KEY)

    def _rescheduled(self, cur: sqlite3.Cursor) -> None:
        cur.execute(q.BUMP_STATE, (SCHEDULE_KEY, iso(self._clock())))

    def deliveries(
        self,
        *,
        status: str | Sequence[str] | None = None,
        sink: str | None = None,
        limit: int | None = None,
    ) -> Iterator[dict[str, Any]]:
        """Outbox rows in id order with their SMS fields; times as ISO text.

        ``status`` (one, or several): ``pending`` (queued, not tried yet),
        ``failed`` (queued, failed at least once: retried at ``next_attempt_at``),
        ``dead`` or ``delivered``; the ``status`` column uses the same words.
        """
        where, params = "", []
        if status is not None:
            wanted = [status] if isinstance(status, str) else list(status)
            for name in wanted:
                if name not in STATUS_FILTERS:
                    raise StoreError(
                        f"unknown delivery status {name!r}: {', '.join(STATUS_FILTERS)}"
                    )
            if wanted:
                known = cast("list[BacklogStatus]", wanted)  # each checked just above
                where += " AND (" + " OR ".join(f"({STATUS_FILTERS[n]})" for n in known) + ")"
        if sink is not None:
            where += " AND d.sink = ?"
            params.append(sink)
        query = q.DELIVERIES.format(where=where)
        return self._iso_rows(
            self._rows("cannot read the outbox", query, [*params, sql_limit(limit)])
        )

    @staticmethod
    def _iso_rows(rows: Iterator[dict[str, Any]]) -> Iterator[dict[str, Any]]:
        for row in rows:
            for key in ("created_at", "next_attempt_at", "delivered_at"):
                row[key] = None if row[key] is None else iso(row[key])
            yield row

    def backlog(self) -> dict[str, dict[str, int]]:
        """``{sink: {"pending", "failed", "dead", "delivered"}}`` counts.  ``pending``
        counts every queued row; ``failed`` is the part of it that failed before."""
        counts: dict[str, dict[str, int]] = {}
        for row in self._rows("cannot read the outbox", q.BACKLOG):
            sink = counts.setdefault(row["sink"], dict.fromkeys(BACKLOG_KEYS, 0))
            sink[row["status"]] += row["n"]
            if row["status"] == "pending" and row["retried"]:
                sink["failed"] += row["n"]
        return counts

    def delivery_stats(self, sink: str, since_epoch: float) -> dict[str, Any]:
        """Attempts of ``sink`` started since ``since_epoch``: ``attempts``,
        ``delivered``, ``failed``, ``dead``, ``failures`` (failed + dead) and
        ``p95_duration`` (seconds, of delivered attempts; None without any)."""
        doing = "cannot read delivery statistics"
        [stats] = self._rows(doing, q.ATTEMPT_COUNTS, (sink, since_epoch))
        stats["failures"] = stats["failed"] + stats["dead"]
        stats["p95_duration"] = None
        if stats["delivered"]:
            rank = math.ceil(0.95 * stats["delivered"]) - 1
            stats["p95_duration"] = self._one(doing, q.NTH_DURATION, (sink, since_epoch, rank))
        return stats

    def last_delivery_time(self, sink: str) -> float | None:
        """The epoch of ``sink``'s latest successful delivery, or None."""
        value = self._one("cannot read the outbox", q.LAST_DELIVERY, (sink,))
        return None if value is None else float(value)

    def last_message_by_destination(self) -> dict[str, str]:
        """``{destination: received_at}`` of the latest SMS to each number."""
        rows = self._rows("cannot read messages", q.LAST_BY_DESTINATION)
        return {row["destination"]: row["received_at"] for row in rows}

    def last_stored_by_destination(self) -> dict[str, str]:
        """``{destination: stored_at}`` of the SMS to each number stored last: when this
        process last heard of the number, whatever date the email's body claims."""
        rows = self._rows("cannot read messages", q.LAST_STORED_BY_DESTINATION)
        return {row["destination"]: row["stored_at"] for row in rows}

    # -- housekeeping ----------------------------------------------------------
    def prune_raw(self, *, now: float | None = None) -> int:
        """Delete the raw bytes of emails stored longer ago than the retention;
        returns how many.  Rejects keep their raw bytes."""
        if not self._retention_days:
            return 0
        cutoff = (self._clock() if now is None else now) - self._retention_days * 86400.0
        with self._write("cannot prune raw emails") as cur:
            cur.execute("DELETE FROM raw_emails WHERE stored_at < ?", (iso(cutoff),))
            return cur.rowcount

    def set_state(self, key: str, value: str) -> None:
        """Set one ``state`` value (heartbeats, ...)."""
        with self._write("cannot save state") as cur:
            cur.execute(q.SET_STATE, (key, value, iso(self._clock())))

    def get_state(self, key: str) -> str | None:
        """One ``state`` value, or None."""
        value = self._one("cannot read state", "SELECT value FROM state WHERE key = ?", (key,))
        return None if value is None else str(value)

    def state_items(self, prefix: str = "") -> dict[str, str]:
        """Every ``state`` value whose key starts with ``prefix``."""
        query = "SELECT key, value FROM state WHERE substr(key, 1, ?) = ? ORDER BY key"
        rows = self._rows("cannot read state", query, (len(prefix), prefix))
        return {row["key"]: row["value"] for row in rows}
