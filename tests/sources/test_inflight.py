"""An email the parser dies on never loops the daemon (issue 11 item 2).

The process is really killed (SIGKILL from the ``crash-parse`` fault point,
armed only for the email that carries its header), twice; the third start
stores everything else, and the email is a reject with its raw bytes, left in
the mailbox.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from functools import partial
from pathlib import Path
from typing import Any

from inbound_mail.models import EmailOrigin, Skipped
from inbound_mail.parse.message import DEFAULT_OPTIONS
from inbound_mail.sources.imap.connection import connect
from inbound_mail.sources.imap.sync import FolderSync
from inbound_mail.sources.inflight import CRASH_REASON, MAX_PARSE_CRASHES, split_runs
from inbound_mail.store.db import Store
from inbound_mail.store.rows import IngestItem
from testsupport.mailbox import Mailbox

from helpers import (
    UNCHECKED_PARSE,
    DaemonProcess,
    NotifyListener,
    count,
    provider_email,
    rows,
    write_config,
)

FAST: dict[str, Any] = {"idle_deadline": 5.0, "connect_timeout": 5.0, "poll_interval": 1.0}
CRASH = {"INBOUND_MAIL_FAULT": "crash-parse"}


sms = partial(provider_email, word="inflight")


def crashing(n: int) -> bytes:
    return b"X-Inbound-Mail-Fault: crash-parse\r\n" + sms(n)


def cli(config: Path, *args: str, env: dict[str, str] | None = None) -> int:
    done = subprocess.run(
        [sys.executable, "-m", "inbound_mail", "--config", str(config), *args],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        env={**_environ(), **(env or {})},
        timeout=120,
        check=False,
    )
    return done.returncode


def _environ() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k != "INBOUND_MAIL_FAULT"}


def crash_rejects(db: Path) -> list[tuple[str, bytes]]:
    return [
        (str(reason), bytes(raw))
        for reason, raw in rows(db, "SELECT reason, raw FROM rejects ORDER BY id")
        if str(reason).startswith(CRASH_REASON)
    ]


def test_imap_email_that_kills_the_parser_twice_becomes_a_reject(
    mailbox: Mailbox, tmp_path: Path
) -> None:
    db = tmp_path / "sms.db"
    uids = [mailbox.append(sms(1)), mailbox.append(crashing(2))]
    uids += [mailbox.append(sms(n)) for n in (3, 4)]
    config = write_config(tmp_path / "c.toml", [mailbox.account(**FAST)], db=db)
    for _ in range(MAX_PARSE_CRASHES):  # the process dies while parsing email 2, twice
        assert cli(config, "run", "--once", env=CRASH) == -9
        assert crash_rejects(db) == []
    assert cli(config, "run", "--once", env=CRASH) == 0
    assert count(db) == 3
    assert [raw for _, raw in crash_rejects(db)] == [crashing(2)]
    assert count(db, "parsing") == 0
    flags = mailbox.flags()
    assert "\\Seen" not in flags[uids[1]], "a reject is left in the mailbox, untouched"
    assert all("\\Seen" in flags[uid] for uid in uids if uid != uids[1])
    # Nothing loops: the next start has nothing to do.
    assert cli(config, "run", "--once", env=CRASH) == 0
    assert count(db) == 3 and count(db, "rejects") == 1


def test_backfill_counts_parser_crashes_too(mailbox: Mailbox, tmp_path: Path) -> None:
    db = tmp_path / "sms.db"
    mailbox.append(crashing(5))
    mailbox.append(sms(6))
    config = write_config(tmp_path / "c.toml", [mailbox.account(**FAST)], db=db)
    # --workers 1: the writer parses, so the process dies (a pool: tests/test_pool.py).
    args = ("backfill", "--account", mailbox.user, "--workers", "1")
    for _ in range(MAX_PARSE_CRASHES):
        assert cli(config, *args, env=CRASH) == -9
    assert cli(config, *args, env=CRASH) == 0
    assert count(db) == 1
    assert [raw for _, raw in crash_rejects(db)] == [crashing(5)]


def test_import_email_that_kills_the_parser_twice_becomes_a_reject(tmp_path: Path) -> None:
    db = tmp_path / "sms.db"
    folder = tmp_path / "export"
    folder.mkdir()
    for n in (1, 3):
        (folder / f"{n}.eml").write_bytes(sms(n))
    (folder / "2.eml").write_bytes(crashing(2))
    config = write_config(tmp_path / "c.toml", db=db, extra=UNCHECKED_PARSE)
    args = ("import", str(folder), "--workers", "1")  # a pool: tests/test_pool.py
    for _ in range(MAX_PARSE_CRASHES):
        assert cli(config, *args, env=CRASH) == -9
    assert cli(config, *args, env=CRASH) == 0
    assert count(db) == 2
    rejects = crash_rejects(db)
    assert [raw for _, raw in rejects] == [crashing(2)]
    assert "died 2 times" in rejects[0][0]
    assert rows(db, "SELECT code FROM rejects") == [("parser_crash",)]
    assert count(db, "parsing") == 0


def test_an_import_stopped_mid_batch_leaves_nothing_in_flight(tmp_path: Path) -> None:
    # Ctrl-C: the emails recorded in flight but never parsed are no crash; a
    # rerun stores them as new mail, however often the import is stopped.
    from inbound_mail.sources.importer import import_emails

    emails = [(sms(n), EmailOrigin("eml", path=f"/x/{n}.eml")) for n in range(6)]
    with Store.open(tmp_path / "sms.db") as store:
        for _ in range(MAX_PARSE_CRASHES + 1):
            parsed = [0]

            def tick(parsed: list[int] = parsed) -> None:
                parsed[0] += 1

            tally = import_emails(
                emails,
                store,
                DEFAULT_OPTIONS,
                on_parsed=tick,
                should_stop=lambda parsed=parsed: parsed[0] >= 2,  # type: ignore[misc]  # mypy: lambda default
            )
            assert tally.new + tally.duplicates == 2
            assert store.database.conn.execute("SELECT count(*) FROM parsing").fetchone()[0] == 0
        tally = import_emails(emails, store, DEFAULT_OPTIONS)
        assert (tally.new, tally.duplicates, tally.rejected) == (4, 2, 0)


MARK = (
    "import sys; from inbound_mail.store.db import Store; from inbound_mail.models import "
    "EmailOrigin; Store.open(sys.argv[1]).mark_parsing([EmailOrigin('eml', path='/x.eml')]); "
    "print('marked', flush=True); sys.stdin.read()"
)


def test_only_a_process_that_died_parsing_counts_as_a_crash(tmp_path: Path) -> None:
    db = tmp_path / "sms.db"
    origin = EmailOrigin("eml", path="/x.eml")
    with Store.open(db) as store:
        store.mark_parsing([origin])
        store.mark_parsing([origin])  # e.g. the commit failed and the batch is retried
        assert store.parse_crashes([origin]) == {}
        # The mark skips the fsync; every other write stays synchronous=FULL.
        assert store.database.conn.execute("PRAGMA synchronous").fetchone()[0] == 2
        store.ingest([IngestItem(b"", Skipped(reason="not ours"), origin)])
    # Another process parsing it (a backfill beside the daemon): no crash while it lives...
    other = subprocess.Popen(
        [sys.executable, "-c", MARK, str(db)], stdin=subprocess.PIPE, stdout=subprocess.PIPE
    )
    try:
        assert other.stdout is not None and other.stdout.readline() == b"marked\n"
        with Store.open(db) as store:
            assert store.parse_crashes([origin]) == {}
    finally:
        other.kill()  # ... and one when it died with the row in place
        other.wait(10)
    with Store.open(db) as store:
        assert store.parse_crashes([origin]) == {origin: 1}
        store.mark_parsing([origin])  # this process takes it over: the second attempt
        assert store.parse_crashes([origin]) == {}
    with Store.open(db) as store:  # same process, so still not a crash
        assert store.parse_crashes([origin]) == {}
        assert store.database.conn.execute("SELECT attempts FROM parsing").fetchone()[0] == 2
        store.ingest([IngestItem(b"", Skipped(reason="not ours"), origin)])
        assert store.database.conn.execute("SELECT count(*) FROM parsing").fetchone()[0] == 0


def test_split_runs_keeps_the_order() -> None:
    assert split_runs([1, 2, 3, 4, 5], lambda n: n in (2, 5)) == [[1], [2], [3, 4], [5]]
    assert split_runs([1, 2], lambda n: False) == [[1, 2]]
    assert split_runs([], lambda n: True) == []


def test_progress_ticks_once_per_parsed_email(mailbox: Mailbox, tmp_path: Path) -> None:
    for n in range(5):
        mailbox.append(sms(10 + n))
    ticks: list[int] = []
    account = mailbox.account(**FAST)
    client = connect(account, mailbox.password)
    try:
        with Store.open(tmp_path / "sms.db") as store:
            syncer = FolderSync(
                client, account, store, DEFAULT_OPTIONS, on_parsed=lambda: ticks.append(1)
            )
            result = syncer.sync("INBOX")
    finally:
        client.logout()
    assert result.tally.new == 5
    assert len(ticks) == 5  # one fetch group of five, yet progress for each email


def test_a_parse_that_stalls_is_reported_and_becomes_a_reject_after_two_restarts(
    mailbox: Mailbox, tmp_path: Path
) -> None:
    # The watchdog's view: progress counts per parsed email, so the account is
    # STALLED while one email's parse hangs; systemd then kills (SIGABRT), twice.
    db = tmp_path / "sms.db"
    stalling = b"X-Inbound-Mail-Fault: stall-parse\r\n" + sms(21)
    for raw in (sms(20), stalling, sms(22)):
        mailbox.append(raw)
    account = mailbox.account(idle_deadline=5.0, connect_timeout=1.0)
    config = write_config(tmp_path / "c.toml", [account], db=db)
    env = {"INBOUND_MAIL_FAULT": "stall-parse"}
    for run in range(MAX_PARSE_CRASHES):
        listener = NotifyListener(str(tmp_path / f"notify-{run}.sock"))
        daemon = DaemonProcess(config, env={**listener.env(watchdog_usec=1_000_000), **env})
        try:
            stalled = listener.wait_for(lambda m: "STALLED" in m.get("STATUS", ""), timeout=30)
            assert f"imap-{account.name}" in stalled["STATUS"]
            daemon.signal(signal.SIGABRT)  # what systemd's WatchdogSec= sends
            assert daemon.wait(15) == -signal.SIGABRT
        finally:
            daemon.close()
            listener.close()
    assert count(db) == 1 and crash_rejects(db) == []
    assert cli(config, "run", "--once", env=env) == 0
    assert count(db) == 2
    assert [raw for _, raw in crash_rejects(db)] == [stalling]


def test_a_row_left_by_an_earlier_version_still_counts(tmp_path: Path) -> None:
    """The in-flight key is ``json.dumps`` of the origin's fields, as earlier versions wrote
    it: a row they left (here, a dead run's) names the same email, whatever its fields hold."""
    origins = [
        EmailOrigin("imap", account="acc", folder="INBOX", uidvalidity=7, uid=12345),
        EmailOrigin("maildir", path='/mail/"quoted"\\dir/€ü\udcff', key="1700.M1P2.host"),
        EmailOrigin("mbox", path="/tmp/a\tb\x01.mbox", key="0"),
        EmailOrigin("eml", path="/x.eml"),
    ]
    with Store.open(tmp_path / "sms.db") as store:
        conn = store.database.conn
        for origin in origins:
            o = origin
            key = json.dumps([o.kind, o.account, o.folder, o.uidvalidity, o.uid, o.path, o.key])
            conn.execute(
                "INSERT INTO parsing (origin, attempts, run, started_at) VALUES (?, 1, ?, ?)",
                (key, "999999999-dead", "2024-01-01T00:00:00.000Z"),
            )
        conn.commit()
        assert store.parse_crashes(origins) == dict.fromkeys(origins, 1)
        store.mark_parsing(origins)  # the second attempt, counted on the same rows
        assert conn.execute("SELECT attempts FROM parsing").fetchall() == [(2,)] * 4
        store.ingest([IngestItem(b"", Skipped(reason="not ours"), o) for o in origins])
        assert conn.execute("SELECT count(*) FROM parsing").fetchone()[0] == 0
