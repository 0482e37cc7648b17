"""The SQLite store, against real database files in tmp_path."""

from __future__ import annotations

import os
import sqlite3
import stat
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from sqlite_utils import Database

from inbound_mail.config.model import SinkConfig, SinkFilter
from inbound_mail.delivery import make_router
from inbound_mail.errors import StoreError, StoreLockedError
from inbound_mail.models import EmailOrigin, Rejected, Skipped, SmsRecord
from inbound_mail.store import schema as _schema
from inbound_mail.store.db import Store
from inbound_mail.store.lock import daemon_lock
from inbound_mail.store.rows import AttemptRecord, Checkpoint, IngestItem, PendingAck
from inbound_mail.testing.wait import wait_until

T0 = 1_714_550_400.0  # 2024-05-01T08:00:00Z
RAW = b"From: smsin@agiletelecom.com\r\nSubject: Agile Telecom -- SMS received\r\n\r\nBody\r\n"


class Clock:
    """A settable clock, so that times in assertions are exact."""

    def __init__(self, now: float = T0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def sms(n: int, *, to: str = "+393331234333", received_at: str | None = None) -> SmsRecord:
    return SmsRecord(
        originator=f"+3933012345{n:02d}",
        destination=to,
        date_time="20240501100000",
        received_at=received_at or f"2024-05-01T08:{n % 60:02d}:00Z",
        text=f"message {n}",
        message_id=f"<{n}@agiletelecom.com>",
        sender="smsin@agiletelecom.com",
    )


def imap(uid: int, *, uidvalidity: int = 7, folder: str = "INBOX") -> EmailOrigin:
    return EmailOrigin("imap", account="main", folder=folder, uidvalidity=uidvalidity, uid=uid)


def item(
    record: SmsRecord | Rejected | Skipped, origin: EmailOrigin, raw: bytes = RAW
) -> IngestItem:
    return IngestItem(raw=raw, outcome=record, origin=origin)


def count(store: Store, table: str) -> int:
    return int(store.database.execute(f"SELECT count(*) FROM {table}").fetchone()[0])


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def store(tmp_path: Path, clock: Clock) -> Iterator[Store]:
    with Store.open(tmp_path / "im.db", clock=clock) as opened:
        yield opened


def to_hook(record: SmsRecord) -> list[str]:
    return ["hook"]


# -- opening -----------------------------------------------------------------------------
@pytest.mark.parametrize("umask", [0o022, 0o000], ids=["umask022", "umask000"])
def test_new_database_and_wal_files_are_private(tmp_path: Path, umask: int) -> None:
    db = tmp_path / "im.db"
    old = os.umask(umask)
    try:
        with Store.open(db) as store:
            store.ingest([item(sms(1), imap(1))], route=to_hook)
            for path in (db, Path(f"{db}-wal"), Path(f"{db}-shm")):
                assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
    finally:
        os.umask(old)


def test_open_sets_pragmas_and_schema(store: Store) -> None:
    conn = store.database.conn
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert conn.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
    assert conn.execute("PRAGMA foreign_keys").fetchone()[0] == 1
    assert conn.execute("PRAGMA busy_timeout").fetchone()[0] == 30000
    assert conn.execute("PRAGMA user_version").fetchone()[0] == _schema.SCHEMA_VERSION
    # Column names are a user-facing interface (sqlite-utils, Datasette).
    assert list(Database(conn)["messages"].columns_dict) == [
        "id", "originator", "destination", "date_time", "received_at", "text", "keyword",
        "message_id", "email_date", "subject", "sender", "stored_at", "authenticated",
        "auth_reason",
    ]  # fmt: skip


def test_reopen_keeps_data(tmp_path: Path) -> None:
    with Store.open(tmp_path / "im.db") as store:
        store.ingest([item(sms(1), imap(1))])
    with Store.open(tmp_path / "im.db") as store:
        assert [row["id"] for row in store.messages()] == [sms(1).id]


def test_forward_migration_runs_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    db = tmp_path / "im.db"
    Store.open(db).close()

    def add_note(conn: sqlite3.Connection) -> None:
        conn.execute("ALTER TABLE messages ADD COLUMN note TEXT")

    monkeypatch.setattr(_schema, "MIGRATIONS", [*_schema.MIGRATIONS, add_note])
    for _ in range(2):  # the second open must not re-run the migration
        with Store.open(db) as store:
            conn = store.database.conn
            assert conn.execute("PRAGMA user_version").fetchone()[0] == _schema.SCHEMA_VERSION + 1
            assert "note" in Database(conn)["messages"].columns_dict


def test_newer_schema_is_refused(tmp_path: Path) -> None:
    db = tmp_path / "im.db"
    Store.open(db).close()
    with sqlite3.connect(db) as conn:
        conn.execute("PRAGMA user_version = 99")
    expected = rf"version 99 .*supports \(version {_schema.SCHEMA_VERSION}\)"
    with pytest.raises(StoreError, match=expected):
        Store.open(db)


def test_other_applications_database_is_refused(tmp_path: Path) -> None:
    db = tmp_path / "other.db"
    with sqlite3.connect(db) as conn:
        conn.execute("CREATE TABLE invoices (id INTEGER)")
    with pytest.raises(StoreError, match="another application"):
        Store.open(db)


def test_not_a_database(tmp_path: Path) -> None:
    db = tmp_path / "notes.txt"
    db.write_bytes(b"this is not SQLite\n" * 100)
    with pytest.raises(StoreError, match="not an SQLite database") as info:
        Store.open(db)
    assert str(db) in str(info.value)
    assert isinstance(info.value.__cause__, sqlite3.DatabaseError)


def test_missing_directory(tmp_path: Path) -> None:
    with pytest.raises(StoreError, match="directory exists"):
        Store.open(tmp_path / "nope" / "im.db")


def test_locked_database_error_says_so(store: Store) -> None:
    store.database.conn.execute("PRAGMA busy_timeout = 50")  # rather than 30 s
    other = sqlite3.connect(store.path, isolation_level=None)
    try:
        other.execute("BEGIN IMMEDIATE")
        with pytest.raises(StoreError, match="database is locked") as info:
            store.ingest([item(sms(1), imap(1))])
        assert str(store.path) in str(info.value)
        assert isinstance(info.value.__cause__, sqlite3.OperationalError)
    finally:
        other.close()
    assert store.ingest([item(sms(1), imap(1))]).new == [sms(1)]


def test_full_disk_error_says_so_and_rolls_back(store: Store) -> None:
    # max_page_count makes SQLite report SQLITE_FULL exactly as a full disk does.
    pages = store.database.conn.execute("PRAGMA page_count").fetchone()[0]
    store.database.conn.execute(f"PRAGMA max_page_count = {pages + 8}")
    batch = [item(sms(n), imap(n), raw=b"x" * 100_000) for n in range(5)]
    with pytest.raises(StoreError, match="disk is full"):
        store.ingest(batch)
    assert count(store, "messages") == 0


# -- ingestion -------------------------------------------------------------------------
def test_dedup_within_one_batch(store: Store) -> None:
    result = store.ingest([item(sms(1), imap(1)), item(sms(1), imap(2))], route=to_hook)
    assert result.new == [sms(1)]
    assert result.duplicates == [sms(1)]
    rows = list(store.database.query("SELECT uid, duplicate, sms_id FROM emails ORDER BY id"))
    assert rows == [
        {"uid": 1, "duplicate": 0, "sms_id": sms(1).id},
        {"uid": 2, "duplicate": 1, "sms_id": sms(1).id},
    ]
    assert count(store, "messages") == 1
    assert count(store, "deliveries") == 1
    assert count(store, "raw_emails") == 2


def test_dedup_across_batches_keeps_every_email(store: Store) -> None:
    first = store.ingest([item(sms(1), imap(1)), item(sms(2), imap(2))], route=to_hook)
    second = store.ingest([item(sms(2), imap(3)), item(sms(3), imap(4))], route=to_hook)
    assert (first.new, first.duplicates) == ([sms(1), sms(2)], [])
    assert (second.new, second.duplicates) == ([sms(3)], [sms(2)])
    assert count(store, "messages") == 3
    assert count(store, "emails") == 4
    assert [d.record for d in store.pending_deliveries("hook")] == [sms(1), sms(2), sms(3)]


def test_reingesting_the_same_imap_message_is_idempotent(store: Store) -> None:
    batch = [item(sms(1), imap(1)), item(Rejected("no Body field"), imap(2))]
    store.ingest(batch, route=to_hook)
    again = store.ingest(batch, route=to_hook)
    assert again.duplicates == [sms(1)]
    assert again.rejected == 1
    assert [count(store, t) for t in ("emails", "raw_emails", "rejects", "deliveries")] == [
        1,
        1,
        1,
        1,
    ]
    # The same UID under a new UIDVALIDITY is another message.
    store.ingest([item(sms(1), imap(1, uidvalidity=8))])
    assert count(store, "emails") == 2


def test_reimporting_a_local_export_records_each_email_once(store: Store) -> None:
    batch = [item(sms(n), EmailOrigin("mbox", path="/x/a.mbox", key=str(n))) for n in range(5)]
    batch.append(item(sms(9), EmailOrigin("eml", path="/x/one.eml")))
    batch.append(item(Rejected("bad"), EmailOrigin("eml", path="/x/bad.eml")))
    for _ in range(3):
        store.ingest(batch)
    assert count(store, "messages") == 6
    assert count(store, "emails") == 6
    assert count(store, "rejects") == 1


def test_rejects_keep_raw_bytes_and_origin(store: Store) -> None:
    raw = b"From: smsin@agiletelecom.com\r\n\r\n\xff\xfe binary"
    rejected = Rejected(
        "no To field", sender="smsin@agiletelecom.com", message_id="<r@x>", subject="S"
    )
    result = store.ingest([item(rejected, imap(5), raw)])
    assert result.rejected == 1
    [row] = list(store.rejects())
    assert "raw" not in row
    assert row["size"] == len(raw)
    assert row["reason"] == "no To field"
    assert row["origin"] == imap(5).describe()
    assert (row["uid"], row["message_id"], row["sender"]) == (5, "<r@x>", "smsin@agiletelecom.com")
    full = store.get_reject(row["id"])
    assert full is not None
    assert full["raw"] == raw
    assert store.get_reject(row["id"] + 1) is None


def test_skipped_emails_store_nothing(store: Store) -> None:
    result = store.ingest([item(Skipped("other sender"), imap(1))])
    assert (result.skipped, result.read) == (1, 1)
    assert [count(store, t) for t in ("messages", "emails", "rejects")] == [0, 0, 0]


def test_a_failing_batch_leaves_nothing(store: Store) -> None:
    def route(record: SmsRecord) -> list[str]:
        if record == sms(3):
            raise RuntimeError("router bug")
        return ["hook"]

    batch = [item(sms(n), imap(n)) for n in range(1, 5)] + [item(Rejected("x"), imap(9))]
    with pytest.raises(RuntimeError, match="router bug"):
        store.ingest(batch, route=route, checkpoint=Checkpoint("main", "INBOX", 7, 9))
    for table in ("messages", "emails", "raw_emails", "rejects", "deliveries", "checkpoints"):
        assert count(store, table) == 0, table
    # The connection is usable afterwards.
    assert store.ingest(batch[:2], route=to_hook).new == [sms(1), sms(2)]


def test_routing_runs_outside_the_write_transaction(store: Store) -> None:
    """Filters run on the sender's text: they must never hold the write lock."""
    writes: list[str] = []

    def route(record: SmsRecord) -> list[str]:
        # Another connection that will not wait: it gets the lock only if ingest is not holding it.
        other = sqlite3.connect(store.path, timeout=0, isolation_level=None)
        try:
            other.execute("BEGIN IMMEDIATE")
            other.execute("ROLLBACK")
            writes.append(record.text)
        finally:
            other.close()
        return ["hook"]

    store.ingest([item(sms(1), imap(1)), item(sms(2), imap(2))], route=route)
    assert writes == ["message 1", "message 2"]
    assert count(store, "deliveries") == 2


def test_a_catastrophic_text_regex_does_not_stall_ingestion(
    store: Store, caplog: pytest.LogCaptureFixture
) -> None:
    """``(a|aa)+$`` backtracks exponentially: with ``re`` this text would take ages."""
    hostile = replace(sms(1), text="a" * 5000 + "b")
    plain = replace(sms(2), text="aaaa")
    sinks = [
        SinkConfig(name="hook", type="jsonl", filter=SinkFilter(text_regex="(a|aa)+$")),
        SinkConfig(name="all", type="jsonl"),
    ]
    route = make_router(sinks)
    done = threading.Event()

    def ingest() -> None:
        store_in_thread = Store.open(store.path)
        try:
            store_in_thread.ingest([item(hostile, imap(1)), item(plain, imap(2))], route=route)
        finally:
            store_in_thread.close()
            done.set()

    threading.Thread(target=ingest, daemon=True).start()
    wait_until(done.is_set, 120, message="the batch was stored")
    rows = store.database.query("SELECT sms_id, sink FROM deliveries ORDER BY id")
    assert sorted((r["sms_id"], r["sink"]) for r in rows) == sorted(
        [(hostile.id, "all"), (plain.id, "hook"), (plain.id, "all")]
    )
    assert count(store, "messages") == 2
    assert any(r.getMessage() == "filter.timeout" for r in caplog.records)


def test_outbox_rows_only_for_new_messages_and_routed_sinks(store: Store) -> None:
    def route(record: SmsRecord) -> list[str]:
        return ["a", "b", "a"] if record.text.endswith("1") else ["b"]

    store.ingest([item(sms(1), imap(1)), item(sms(2), imap(2))], route=route)
    store.ingest([item(sms(1), imap(3))], route=route)  # a duplicate: no new deliveries
    store.ingest([item(sms(3), imap(4))])  # no router: stored, owed to nobody
    assert [d.record for d in store.pending_deliveries("a")] == [sms(1)]
    assert [d.record for d in store.pending_deliveries("b")] == [sms(1), sms(2)]
    assert count(store, "deliveries") == 3


# -- IMAP bookkeeping ------------------------------------------------------------------
def test_checkpoint_never_moves_backwards(store: Store) -> None:
    assert store.get_checkpoint("main", "INBOX") is None
    store.ingest([], checkpoint=Checkpoint("main", "INBOX", 7, 50))
    store.ingest([], checkpoint=Checkpoint("main", "INBOX", 7, 20))
    assert store.get_checkpoint("main", "INBOX") == Checkpoint("main", "INBOX", 7, 50)
    store.ingest([], checkpoint=Checkpoint("main", "INBOX", 7, 60))
    assert store.get_checkpoint("main", "INBOX") == Checkpoint("main", "INBOX", 7, 60)


def test_checkpoint_is_replaced_on_new_uidvalidity(store: Store) -> None:
    store.ingest([], checkpoint=Checkpoint("main", "INBOX", 7, 500))
    store.ingest([], checkpoint=Checkpoint("main", "INBOX", 8, 3))
    assert store.get_checkpoint("main", "INBOX") == Checkpoint("main", "INBOX", 8, 3)
    assert store.get_checkpoint("main", "Other") is None


def test_acks_are_stored_with_the_batch_and_cleared(store: Store) -> None:
    acks = [PendingAck("main", "INBOX", 7, uid, "seen") for uid in (3, 1, 2)]
    store.ingest([item(sms(1), imap(1))], acks=acks)
    store.ingest([], acks=[PendingAck("main", "INBOX", 7, 2, "move:Done")])
    owed = store.pending_acks("main", "INBOX")
    assert [(a.uid, a.action) for a in owed] == [(1, "seen"), (2, "move:Done"), (3, "seen")]
    assert store.pending_acks("main", "Other") == []
    store.clear_acks(owed[:2])
    assert store.pending_acks("main", "INBOX") == [owed[2]]


def test_known_uids(store: Store) -> None:
    store.ingest([item(sms(1), imap(1)), item(Rejected("x"), imap(2)), item(Skipped("x"), imap(3))])
    assert store.known_uids("main", "INBOX", 7, [1, 2, 3, 4]) == {1, 2}
    assert store.known_uids("main", "INBOX", 8, [1, 2]) == set()
    assert store.known_uids("main", "INBOX", 7, []) == set()


# -- outbox ----------------------------------------------------------------------------
def test_pending_deliveries_rebuild_records_in_order(store: Store, clock: Clock) -> None:
    records = [sms(n) for n in (5, 1, 3)]
    store.ingest([item(r, imap(i)) for i, r in enumerate(records)], route=to_hook)
    pending = store.pending_deliveries("hook")
    assert [d.record for d in pending] == records
    assert all(d.record.id == r.id for d, r in zip(pending, records, strict=True))
    assert pending[0].status == "pending"
    assert (pending[0].attempts, pending[0].created_at, pending[0].next_attempt_at) == (0, T0, T0)
    assert [d.id for d in store.pending_deliveries("hook", limit=2)] == [d.id for d in pending[:2]]
    assert store.pending_deliveries("other") == []


def test_attempt_outcomes_move_deliveries(store: Store, clock: Clock) -> None:
    store.ingest([item(sms(n), imap(n)) for n in (1, 2, 3)], route=to_hook)
    first, second, third = store.pending_deliveries("hook")
    store.record_attempt(first.id, outcome="delivered", started_at=T0 + 1, duration=0.25)
    store.record_attempt(
        second.id, outcome="failed", started_at=T0 + 1, duration=1, error="HTTP 503",
        next_attempt_at=T0 + 60,
    )  # fmt: skip
    store.record_attempt(third.id, outcome="dead", started_at=T0 + 1, duration=1, error="HTTP 410")

    assert [d.id for d in store.pending_deliveries("hook")] == [second.id]
    assert store.pending_deliveries("hook", due_by=T0 + 59) == []
    assert store.next_due("hook") == T0 + 60
    [retrying] = store.pending_deliveries("hook", due_by=T0 + 60)
    assert (retrying.attempts, retrying.last_error) == (1, "HTTP 503")

    rows = {row["id"]: row for row in store.deliveries()}
    assert rows[first.id]["status"] == "delivered"
    assert rows[first.id]["delivered_at"] == "2024-05-01T08:00:01.250Z"
    assert rows[second.id]["next_attempt_at"] == "2024-05-01T08:01:00.000Z"
    assert (rows[third.id]["status"], rows[third.id]["last_error"]) == ("dead", "HTTP 410")
    assert [r["sms_id"] for r in store.deliveries(status="failed")] == [sms(2).id]
    assert [r["text"] for r in store.deliveries(status="dead")] == ["message 3"]
    assert list(store.deliveries(status="pending")) == []  # not tried yet: none
    assert [r["status"] for r in store.deliveries(status=("pending", "failed"))] == ["failed"]
    assert store.backlog() == {"hook": {"pending": 1, "failed": 1, "dead": 1, "delivered": 1}}
    assert store.last_delivery_time("hook") == T0 + 1.25
    assert store.last_delivery_time("other") is None
    assert count(store, "attempts") == 3


def test_record_attempts_batch_is_atomic(store: Store) -> None:
    store.ingest([item(sms(1), imap(1))], route=to_hook)
    [delivery] = store.pending_deliveries("hook")
    ok = AttemptRecord(delivery.id, "delivered", T0, 0.1)
    with pytest.raises(StoreError, match="no delivery 999"):
        store.record_attempts([ok, AttemptRecord(999, "delivered", T0, 0.1)])
    assert count(store, "attempts") == 0
    assert store.pending_deliveries("hook") == [delivery]
    with pytest.raises(StoreError, match="unknown attempt outcome"):
        store.record_attempt(delivery.id, outcome="lost", started_at=T0, duration=0)  # type: ignore[arg-type]  # on purpose


def test_delivery_stats(store: Store) -> None:
    store.ingest([item(sms(n), imap(n)) for n in range(1, 21)], route=to_hook)
    deliveries = store.pending_deliveries("hook")
    attempts = [
        AttemptRecord(d.id, "delivered", T0 + i, duration=float(i + 1))
        for i, d in enumerate(deliveries)
    ]
    attempts.append(AttemptRecord(deliveries[0].id, "failed", T0 - 100, 9, "old, not counted"))
    attempts.append(AttemptRecord(deliveries[1].id, "failed", T0 + 5, 9, "timeout"))
    store.record_attempts(attempts)
    stats = store.delivery_stats("hook", T0)
    assert stats == {
        "attempts": 21, "delivered": 20, "failed": 1, "dead": 0, "failures": 1,
        "p95_duration": 19.0,
    }  # fmt: skip
    assert store.delivery_stats("other", T0)["p95_duration"] is None


def test_requeue(store: Store, clock: Clock) -> None:
    early = sms(1, received_at="2024-04-30T23:59:59Z")
    late = [sms(2, received_at="2024-05-01T00:00:00Z"), sms(3, received_at="2024-05-02T10:00:00Z")]
    store.ingest([item(r, imap(i)) for i, r in enumerate([early, *late])], route=to_hook)
    for d in store.pending_deliveries("hook"):
        store.record_attempt(d.id, outcome="delivered", started_at=T0, duration=0.1)
    clock.now = T0 + 3600

    assert store.requeue("hook", since="2024-05-01") == 2
    assert [d.record for d in store.pending_deliveries("hook")] == late
    assert all(
        d.attempts == 0 and d.next_attempt_at == T0 + 3600 for d in store.pending_deliveries("hook")
    )
    # A sink that never had rows gets them inserted; an id prefix selects one message.
    assert store.requeue("archive", message_id=early.id[:12]) == 1
    assert [d.record for d in store.pending_deliveries("archive")] == [early]
    assert store.requeue("archive", message_id="ffffffffffffffffff") == 0
    assert store.requeue("everything") == 3


def test_requeue_rejects_ambiguous_and_invalid_ids(store: Store) -> None:
    records = [sms(n) for n in range(40)]  # 40 ids over 16 first digits: some share one
    store.ingest([item(r, imap(i)) for i, r in enumerate(records)])
    firsts = [r.id[0] for r in records]
    shared = next(c for c in firsts if firsts.count(c) > 1)
    with pytest.raises(StoreError, match="ambiguous"):
        store.requeue("hook", message_id=shared)
    with pytest.raises(StoreError, match="hexadecimal"):
        store.requeue("hook", message_id="not-an-id")
    assert count(store, "deliveries") == 0


def test_retry_dead(store: Store) -> None:
    store.ingest([item(sms(n), imap(n)) for n in (1, 2)], route=lambda r: ["a", "b"])
    for d in store.pending_deliveries("a") + store.pending_deliveries("b"):
        store.record_attempt(d.id, outcome="dead", started_at=T0, duration=1, error="gone")
    assert store.retry_dead("a") == 2
    assert [(d.attempts, d.last_error) for d in store.pending_deliveries("a")] == [(0, None)] * 2
    assert store.pending_deliveries("b") == []
    assert store.retry_dead() == 2
    assert len(store.pending_deliveries("b")) == 2


def test_unknown_status_is_an_error(store: Store) -> None:
    with pytest.raises(StoreError, match="unknown delivery status"):
        list(store.deliveries(status="lost"))


# -- queries and housekeeping ----------------------------------------------------------------
def test_messages_filters(store: Store) -> None:
    records = [
        sms(1, received_at="2024-04-30T23:59:59Z"),
        sms(2, received_at="2024-05-01T00:00:00Z", to="+39000"),
        sms(3, received_at="2024-05-01T23:59:59Z"),
        sms(4, received_at="2024-05-02T00:00:00Z"),
    ]
    store.ingest([item(r, imap(i)) for i, r in enumerate(reversed(records))])

    def texts(**filters: Any) -> list[str]:
        return [row["text"] for row in store.messages(**filters)]

    assert texts() == [f"message {n}" for n in (1, 2, 3, 4)]
    assert texts(since="2024-05-01", until="2024-05-01") == ["message 2", "message 3"]
    assert texts(since="2024-05-01T02:00:00+02:00") == ["message 2", "message 3", "message 4"]
    assert texts(until="2024-05-01T00:00:00Z") == ["message 1"]
    assert texts(destination="+39000") == ["message 2"]
    assert texts(originator=records[3].originator) == ["message 4"]
    assert texts(limit=2) == ["message 1", "message 2"]
    row = next(store.messages())
    assert row == {**records[0].to_dict(), "stored_at": "2024-05-01T08:00:00.000Z"}
    with pytest.raises(StoreError, match="invalid date"):
        texts(since="yesterday")


def test_last_message_by_destination(store: Store) -> None:
    store.ingest([
        item(sms(1, to="+391", received_at="2024-05-01T10:00:00Z"), imap(1)),
        item(sms(2, to="+391", received_at="2024-05-03T10:00:00Z"), imap(2)),
        item(sms(3, to="+392", received_at="2024-05-02T10:00:00Z"), imap(3)),
    ])  # fmt: skip
    assert store.last_message_by_destination() == {
        "+391": "2024-05-03T10:00:00Z",
        "+392": "2024-05-02T10:00:00Z",
    }


def test_prune_raw_respects_retention(tmp_path: Path, clock: Clock) -> None:
    with Store.open(tmp_path / "im.db", raw_retention_days=1, clock=clock) as store:
        store.ingest([item(sms(1), imap(1)), item(Rejected("x"), imap(2))])
        clock.now = T0 + 3600
        store.ingest([item(sms(2), imap(3))])
        assert store.prune_raw(now=T0 + 86400 + 1) == 1
        assert count(store, "raw_emails") == 1
        assert count(store, "emails") == 2  # the email rows stay; only the bytes go
        assert count(store, "rejects") == 1
        clock.now = T0 + 2 * 86400
        assert store.prune_raw() == 1
    with Store.open(tmp_path / "im.db", raw_retention_days=None, clock=clock) as store:
        store.ingest([item(sms(3), imap(4))])
        clock.now = T0 + 1000 * 86400
        assert store.prune_raw() == 0
        assert count(store, "raw_emails") == 1


def test_state(store: Store) -> None:
    assert store.get_state("heartbeat:imap:main") is None
    store.set_state("heartbeat:imap:main", "1")
    store.set_state("heartbeat:imap:main", "2")
    store.set_state("heartbeat:sink:hook", "3")
    store.set_state("other", "4")
    assert store.get_state("heartbeat:imap:main") == "2"
    assert store.state_items("heartbeat:") == {
        "heartbeat:imap:main": "2",
        "heartbeat:sink:hook": "3",
    }
    assert len(store.state_items()) == 3


# -- the daemon lock -----------------------------------------------------------------------
_HOLD_LOCK = """
import sys
from inbound_mail.store.lock import daemon_lock
with daemon_lock(sys.argv[1]):
    print("locked", flush=True)
    sys.stdin.read()
"""


def test_daemon_lock_excludes_other_processes(tmp_path: Path) -> None:
    db = tmp_path / "im.db"
    holder = subprocess.Popen(
        [sys.executable, "-c", _HOLD_LOCK, str(db)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert holder.stdout is not None
        assert holder.stdout.readline().strip() == "locked"
        assert stat.S_IMODE(Path(f"{db}.lock").stat().st_mode) == 0o600
        with Store.open(db) as store:
            with (
                pytest.raises(StoreLockedError, match=rf"daemon \(pid {holder.pid}\) is running"),
                daemon_lock(db),
            ):
                pass
            store.ingest([item(sms(1), imap(1))])  # the lock does not block the database
    finally:
        holder.kill()  # process death releases the lock
        holder.wait(timeout=30)
    with (
        daemon_lock(db),
        pytest.raises(StoreLockedError, match=f"pid {os.getpid()}"),
        daemon_lock(db),
    ):
        pass
    with daemon_lock(db):
        pass  # leaving the block released it


def test_daemon_lock_context_manager(tmp_path: Path) -> None:
    db = tmp_path / "im.db"
    with daemon_lock(db):
        assert Path(f"{db}.lock").read_text().strip() == str(os.getpid())
        with pytest.raises(StoreLockedError, match="stop it first"), daemon_lock(db):
            pass
    with daemon_lock(db):
        pass
    with pytest.raises(StoreError, match="lock file"), daemon_lock(tmp_path / "nope" / "im.db"):
        pass


# -- symlinks, owners, modes ---------------------------------------------------------------
def test_a_symlink_at_the_database_path_is_refused(tmp_path: Path) -> None:
    """SQLite follows it: a dangling one made it create the database where it pointed."""
    elsewhere = tmp_path / "elsewhere.db"
    db = tmp_path / "im.db"
    db.symlink_to(elsewhere)
    with pytest.raises(StoreError, match="symbolic link; refusing to follow it"):
        Store.open(db)
    assert not elsewhere.exists()
    with Store.open(elsewhere):  # a real file is fine
        pass
    with pytest.raises(StoreError, match="symbolic link"):
        Store.open(db)  # a symlink to a real database too


def test_a_symlink_at_the_lock_file_is_refused_and_its_target_kept(tmp_path: Path) -> None:
    """The lock was opened through the link and its target truncated."""
    precious = tmp_path / "precious.txt"
    precious.write_text("keep me\n", encoding="utf-8")
    db = tmp_path / "im.db"
    Path(f"{db}.lock").symlink_to(precious)
    with pytest.raises(StoreError, match=r"lock file .* symbolic link"), daemon_lock(db):
        pass
    assert precious.read_text(encoding="utf-8") == "keep me\n"


def test_a_database_or_lock_open_to_others_is_refused(tmp_path: Path) -> None:
    db = tmp_path / "im.db"
    Store.open(db).close()
    db.chmod(0o644)
    with pytest.raises(StoreError, match=r"mode 0644.*chmod 600"):
        Store.open(db)
    db.chmod(0o600)
    lock = Path(f"{db}.lock")
    lock.touch(mode=0o666)
    lock.chmod(0o666)
    with pytest.raises(StoreError, match=r"lock file .*mode 0666"), daemon_lock(db):
        pass
    lock.unlink()
    precious = tmp_path / "precious"
    precious.write_text("keep me\n", encoding="utf-8")
    precious.chmod(0o600)
    os.link(precious, lock)  # a hard link: the lock's truncation would hit that file
    with pytest.raises(StoreError, match="hard links"), daemon_lock(db):
        pass
    assert precious.read_text(encoding="utf-8") == "keep me\n"
