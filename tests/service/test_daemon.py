"""The IMAP daemon against a real Dovecot: push, catch-up, faults, acknowledgements.

Each test asserts what ends up in the database and in the mailbox.  The tests of the
IMAP contract (``@ON_EVERY_SERVER``) run against Cyrus too, in both namespace layouts.
"""

from __future__ import annotations

import signal
from dataclasses import replace
from functools import partial
from pathlib import Path
from typing import Any

import pytest

from inbound_mail.config.model import AccountConfig
from inbound_mail.testing.emails import build_provider_email
from testsupport.dovecot import DovecotFactory, DovecotServer
from testsupport.mailbox import Mailbox

from helpers import (
    ON_EVERY_SERVER,
    DaemonProcess,
    count,
    in_process_daemon,
    provider_email,
    rows,
    wait_until,
    write_config,
)

FAST: dict[str, Any] = {"idle_deadline": 5.0, "connect_timeout": 5.0, "poll_interval": 1.0}


sms = partial(provider_email, word="hello")


def noise(n: int) -> bytes:
    return (
        f"From: Friend <friend@example.com>\r\nTo: me@example.com\r\nSubject: lunch {n}\r\n"
        f"Message-ID: <noise-{n}@example.com>\r\n\r\nFrom: +39 not an sms\r\n"
    ).encode()


def account_for(mailbox: Mailbox, **overrides: Any) -> AccountConfig:
    return mailbox.account(**{**FAST, **overrides})


def texts(db: Path) -> list[str]:
    return sorted(r[0] for r in rows(db, "SELECT text FROM messages"))


@ON_EVERY_SERVER
def test_mail_appended_while_idle_is_pushed_and_stored(mailbox: Mailbox, tmp_path: Path) -> None:
    db = tmp_path / "sms.db"
    config = write_config(tmp_path / "c.toml", [account_for(mailbox)], db=db)
    with in_process_daemon(config) as daemon:
        wait_until(lambda: daemon.account_workers[0].health.state == "idle", 10)
        for n in range(3):
            mailbox.append(sms(n))
            # Stored long before a poll (poll_interval 60 s) could have found it: pushed.
            wait_until(lambda n=n: count(db) == n + 1, 10)  # type: ignore[misc]  # mypy: lambda default
    assert texts(db) == ["hello 0", "hello 1", "hello 2"]
    assert all("\\Seen" in flags for flags in mailbox.flags().values())


@ON_EVERY_SERVER
def test_mail_appended_while_stopped_is_stored_at_start(mailbox: Mailbox, tmp_path: Path) -> None:
    db = tmp_path / "sms.db"
    config = write_config(tmp_path / "c.toml", [account_for(mailbox)], db=db)
    with in_process_daemon(config):
        mailbox.append(sms(1))
        wait_until(lambda: count(db) == 1)
    mailbox.append(sms(2))
    mailbox.append(noise(3))
    with in_process_daemon(config):
        wait_until(lambda: count(db) == 2)
    assert texts(db) == ["hello 1", "hello 2"]
    flags = mailbox.flags()
    assert [("\\Seen" in f) for _, f in sorted(flags.items())] == [True, True, False], (
        "noise must stay unread"
    )


@ON_EVERY_SERVER
def test_kick_during_idle_reconnects_and_loses_nothing(mailbox: Mailbox, tmp_path: Path) -> None:
    db = tmp_path / "sms.db"
    config = write_config(tmp_path / "c.toml", [account_for(mailbox)], db=db)
    with in_process_daemon(config) as daemon:
        health = daemon.account_workers[0].health
        wait_until(lambda: health.state == "idle")
        mailbox.kick()
        wait_until(lambda: health.reconnects >= 1)
        mailbox.append(sms(1))
        wait_until(lambda: count(db) == 1, 15)
        wait_until(lambda: health.state == "idle")
    assert texts(db) == ["hello 1"]


def test_server_down_for_several_retries_then_catch_up(
    fresh_dovecot: DovecotFactory, tmp_path: Path
) -> None:
    server: DovecotServer = fresh_dovecot()
    mailbox = server.new_mailbox("outage")
    db = tmp_path / "sms.db"
    config = write_config(tmp_path / "c.toml", [account_for(mailbox)], db=db)
    with in_process_daemon(config) as daemon:
        health = daemon.account_workers[0].health
        wait_until(lambda: health.state == "idle")
        mailbox.append(sms(1))
        wait_until(lambda: count(db) == 1)
        server.stop()
        wait_until(lambda: not health.connected, 15)
        # The outage lasts until the worker has failed to reconnect three times
        # (backoff 1 s, 2 s, 4 s: several seconds down), not for a fixed time.
        failed = health.reconnects
        wait_until(lambda: health.reconnects >= failed + 3, 30)
        server.start()
        mailbox.append(sms(2))  # arrives while the daemon may still be backing off
        wait_until(lambda: count(db) == 2, 60)
        wait_until(lambda: health.state == "idle", 30)
    assert texts(db) == ["hello 1", "hello 2"]


@ON_EVERY_SERVER
def test_uidvalidity_change_gives_no_duplicate_and_no_loss(
    mailbox: Mailbox, tmp_path: Path
) -> None:
    db = tmp_path / "sms.db"
    config = write_config(tmp_path / "c.toml", [account_for(mailbox, after="none")], db=db)
    for n in range(3):
        mailbox.append(sms(n))
    with in_process_daemon(config):
        wait_until(lambda: count(db) == 3)
    # 12345 on Dovecot; Cyrus cannot be told a value and picks a new one.
    uidvalidity = mailbox.set_uidvalidity(12345)
    mailbox.append(sms(3))
    with in_process_daemon(config):
        wait_until(lambda: count(db) == 4)
        wait_until(lambda: rows(db, "SELECT uidvalidity FROM checkpoints") == [(uidvalidity,)])
    assert texts(db) == ["hello 0", "hello 1", "hello 2", "hello 3"]
    # Every email of the rescan is recorded under the new UIDVALIDITY, none stored twice.
    assert count(db, "messages") == 4
    assert not any("\\Seen" in f for f in mailbox.flags().values()), 'after = "none"'


# Debian's Cyrus refuses CREATE Processed: "Processed" resolves to INBOX.Processed.
@ON_EVERY_SERVER
def test_move_after_storing_moves_only_stored_mail(mailbox: Mailbox, tmp_path: Path) -> None:
    db = tmp_path / "sms.db"
    bad = build_provider_email("+39347", "+39333", "20241399999999", "bad date")
    for raw in (sms(1), noise(2), bad, sms(3)):
        mailbox.append(raw)
    config = write_config(
        tmp_path / "c.toml", [account_for(mailbox, after="move:Processed")], db=db
    )
    processed = mailbox.folder("Processed")  # INBOX.Processed on Debian's Cyrus
    with in_process_daemon(config):
        wait_until(
            lambda: (
                count(db) == 2
                and processed in mailbox.folders()
                and mailbox.message_count(processed) == 2
            ),
            15,
        )
    assert texts(db) == ["hello 1", "hello 3"]
    assert count(db, "rejects") == 1
    assert mailbox.message_count("INBOX") == 2, "noise and the reject stay in INBOX"
    assert rows(db, "SELECT count(*) FROM pending_acks") == [(0,)]


@ON_EVERY_SERVER
def test_delete_after_storing(mailbox: Mailbox, tmp_path: Path) -> None:
    db = tmp_path / "sms.db"
    mailbox.append(sms(1))
    mailbox.append(noise(2))
    config = write_config(tmp_path / "c.toml", [account_for(mailbox, after="delete")], db=db)
    with in_process_daemon(config):
        wait_until(lambda: count(db) == 1 and mailbox.message_count() == 1)
    assert mailbox.message_count() == 1


def test_wrong_password_once_fails_naming_the_account(mailbox: Mailbox, tmp_path: Path) -> None:
    secret = tmp_path / "wrong"
    secret.write_text("not-the-password")
    secret.chmod(0o600)
    account = account_for(mailbox, password_file=secret)
    config = write_config(tmp_path / "c.toml", [account], db=tmp_path / "sms.db")
    once = DaemonProcess(config, args=("run", "--once"))
    try:
        assert once.wait(30) == 1
        assert f"account {mailbox.user!r}" in once.log
        assert "check username and password" in once.log
        assert "not-the-password" not in once.log
    finally:
        once.close()
    daemon = DaemonProcess(config)
    try:
        daemon.wait_log("imap.disconnected", occurrences=2, timeout=30)
        assert "retry_in=" in daemon.log and daemon.proc.poll() is None, "run keeps retrying"
        daemon.signal(signal.SIGTERM)
        assert daemon.wait(10) == 0
    finally:
        daemon.close()


def test_untrusted_certificate_is_refused(mailbox: Mailbox, tmp_path: Path) -> None:
    account = account_for(mailbox, ca_file=None)
    config = write_config(tmp_path / "c.toml", [account], db=tmp_path / "sms.db")
    once = DaemonProcess(config, args=("run", "--once"))
    try:
        assert once.wait(30) == 1
        assert "certificate" in once.log and "ca_file" in once.log, once.log
    finally:
        once.close()


def test_server_without_idle_is_polled(fresh_dovecot: DovecotFactory, tmp_path: Path) -> None:
    server: DovecotServer = fresh_dovecot(idle=False)
    mailbox = server.new_mailbox("poll")
    db = tmp_path / "sms.db"
    config = write_config(tmp_path / "c.toml", [account_for(mailbox, poll_interval=1.0)], db=db)
    with in_process_daemon(config) as daemon:
        wait_until(lambda: daemon.account_workers[0].health.state == "polling")
        mailbox.append(sms(1))
        wait_until(lambda: count(db) == 1, 10)
    assert texts(db) == ["hello 1"]


def test_oversized_mail_is_rejected_without_its_body_and_the_next_flows(
    mailbox: Mailbox, tmp_path: Path
) -> None:
    db = tmp_path / "sms.db"
    big = sms(1).replace(b"hello 1", b"hello 1 " + b"x" * (50 * 1024 * 1024))
    mailbox.deliver_files([big, sms(2)])
    config = write_config(tmp_path / "c.toml", [account_for(mailbox)], db=db)
    with in_process_daemon(config):
        wait_until(lambda: count(db) == 1 and count(db, "rejects") == 1, 30)
    assert texts(db) == ["hello 2"]
    reason, raw_size = rows(db, "SELECT reason, length(raw) FROM rejects")[0]
    assert "max_size" in reason
    assert raw_size < 4096, "only the headers were fetched"
    assert "\\Seen" not in mailbox.flags()[mailbox.uids()[0]], "the oversized mail is left alone"


def test_sigterm_during_idle_exits_zero(mailbox: Mailbox, tmp_path: Path) -> None:
    config = write_config(
        tmp_path / "c.toml", [account_for(mailbox, idle_deadline=600.0)], db=tmp_path / "s.db"
    )
    daemon = DaemonProcess(config)
    try:
        daemon.wait_log("state=idle")
        daemon.signal(signal.SIGTERM)
        assert daemon.wait(10) == 0
        assert "daemon.stopped" in daemon.log
    finally:
        daemon.close()


def test_second_daemon_on_the_same_database_refuses(mailbox: Mailbox, tmp_path: Path) -> None:
    config = write_config(tmp_path / "c.toml", [account_for(mailbox)], db=tmp_path / "s.db")
    first = DaemonProcess(config)
    try:
        first.wait_log("state=idle")
        second = DaemonProcess(config)
        try:
            assert second.wait(20) == 1
            assert "another inbound-mail daemon" in second.log
        finally:
            second.close()
    finally:
        first.close()


@pytest.mark.parametrize("point", ["after-fetch", "after-commit"])
def test_kill_at_a_critical_point_then_restart_stores_everything_once(
    mailbox: Mailbox, tmp_path: Path, point: str
) -> None:
    db = tmp_path / "sms.db"
    mailbox.deliver_files([sms(n) for n in range(50)])
    config = write_config(tmp_path / "c.toml", [account_for(mailbox, fetch_batch=10)], db=db)
    crashed = DaemonProcess(config, env={"INBOUND_MAIL_FAULT": f"{point}:2"})
    try:
        assert crashed.wait(30) == -signal.SIGKILL
    finally:
        crashed.close()
    stored_before = count(db)
    assert stored_before == (10 if point == "after-fetch" else 20)
    with in_process_daemon(config):
        wait_until(
            lambda: count(db) == 50 and all("\\Seen" in f for f in mailbox.flags().values()), 30
        )
    assert count(db, "emails") == 50
    assert rows(db, "SELECT count(DISTINCT uid) FROM emails") == [(50,)]


def test_backfill_killed_midway_then_rerun_stores_every_sms_once(
    mailbox: Mailbox, tmp_path: Path
) -> None:
    db = tmp_path / "sms.db"
    mailbox.deliver_files([sms(n) for n in range(2000)])
    account = replace(account_for(mailbox), fetch_batch=200)
    config = write_config(tmp_path / "c.toml", [account], db=db)
    args = ("backfill", "--account", account.name)
    killed = DaemonProcess(config, args=args, env={"INBOUND_MAIL_FAULT": "backfill-batch:4"})
    try:
        assert killed.wait(120) == -signal.SIGKILL
    finally:
        killed.close()
    assert 0 < count(db) < 2000
    rerun = DaemonProcess(config, args=args)
    try:
        assert rerun.wait(120) == 0, rerun.log
    finally:
        rerun.close()
    assert count(db) == 2000
    assert count(db, "emails") == 2000
    assert not any("\\Seen" in f for f in mailbox.flags().values()), (
        "backfill never changes the mailbox"
    )


def test_one_failing_account_never_stalls_another(
    mailbox: Mailbox, dovecot: DovecotServer, tmp_path: Path
) -> None:
    db = tmp_path / "sms.db"
    broken = account_for(dovecot.new_mailbox("broken"), name="broken", port=1)  # nothing listens
    good = account_for(mailbox, name="good")
    config = write_config(tmp_path / "c.toml", [broken, good], db=db)
    with in_process_daemon(config) as daemon:
        wait_until(lambda: daemon.account_workers[1].health.state == "idle")
        mailbox.append(sms(1))
        wait_until(lambda: count(db) == 1, 5)
        # It cycles connecting -> backoff: wait for the state, never sample it once.
        wait_until(lambda: daemon.account_workers[0].health.state == "backoff")
        assert not daemon.account_workers[0].health.connected
    assert texts(db) == ["hello 1"]


def test_search_windows_cover_every_uid() -> None:
    from inbound_mail.sources.imap.sync import SEARCH_WINDOW, _windows

    assert list(_windows(1, 0)) == [(1, None)], "no UIDNEXT: one open-ended search"
    assert list(_windows(5, 100)) == [(5, None)]
    windows = list(_windows(1, 2 * SEARCH_WINDOW + 5))
    assert windows == [
        (1, SEARCH_WINDOW),
        (SEARCH_WINDOW + 1, 2 * SEARCH_WINDOW),
        (2 * SEARCH_WINDOW + 1, None),
    ]
