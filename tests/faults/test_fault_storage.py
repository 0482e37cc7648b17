"""Storage faults: the database's disk full, and poison emails between good ones."""

from __future__ import annotations

import errno
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from inbound_mail.cli import cli
from inbound_mail.testing.emails import build_provider_email
from inbound_mail.testing.wait import wait_until

from .harness import FaultRun, plant_unreadable_email
from helpers import count, rows

pytestmark = pytest.mark.faults


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 16 MiB tmpfs (room for SQLite's WAL to reach its 4 MiB checkpoint size)."""
    mount = tmp_path / "small-disk"
    mount.mkdir()
    result = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=16m,mode=0700", "tmpfs", str(mount)],
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode != 0:
        reason = f"cannot mount a tmpfs (needs root): {result.stderr.strip()}"
        print(reason)
        pytest.skip(reason)
    try:
        yield mount
    finally:
        # Lazy: a daemon left running by a failed test must not keep the mount busy.
        subprocess.run(["umount", "-l", str(mount)], check=False)


def fill(path: Path) -> int:
    """Write ``path`` until the file system is full; return the bytes written."""
    written = 0
    block = b"\0" * 65536
    with path.open("wb", buffering=0) as file:
        while True:
            try:
                written += file.write(block) or 0
            except OSError as exc:
                if exc.errno != errno.ENOSPC:
                    raise
                break
        for size in (4096, 512, 1):  # the last crumbs too
            try:
                while file.write(b"\0" * size):
                    written += size
            except OSError:
                continue
    os.sync()
    return written


def test_database_disk_full_keeps_mail_unseen_and_recovers(
    fault_run: FaultRun, small_disk: Path
) -> None:
    fault_run.configure(db=small_disk / "sms.db")
    fault_run.send(3)
    fault_run.start(wait_idle=True)
    fault_run.settle()
    filler = small_disk / "filler"
    fill(filler)
    failures = fault_run.daemon.log.count("imap.disconnected")
    fault_run.send(4)
    fault_run.daemon.wait_log("imap.disconnected", occurrences=failures + 2, timeout=30)
    assert "full" in fault_run.daemon.log, "the log says why"
    assert count(fault_run.db) == 3
    flags = fault_run.mailbox.flags()
    unseen = [uid for uid, f in sorted(flags.items()) if "\\Seen" not in f]
    assert unseen == sorted(flags)[-4:], "mail that could not be stored is not marked seen"
    assert fault_run.running, "the daemon keeps retrying"
    filler.unlink()
    fault_run.finish()
    assert count(fault_run.db) == 7


def test_status_is_critical_with_the_cause_as_soon_as_the_disk_is_full(
    fault_run: FaultRun, small_disk: Path
) -> None:
    def status() -> Result:
        return CliRunner().invoke(cli, ["--config", str(fault_run.config_path), "status"])

    fault_run.configure(db=small_disk / "sms.db")
    fault_run.send(2)
    fault_run.start(wait_idle=True)
    fault_run.settle()
    wait_until(lambda: status().exit_code == 0, 30, message="status OK before the fault")
    filler = small_disk / "filler"
    fill(filler)
    fault_run.send(3)
    # Well before heartbeat_stale (2 minutes): the cause, not "stopped or hung".
    wait_until(lambda: "disk is full" in status().output, 30, message="status names the cause")
    result = status()
    assert result.exit_code == 2, result.output
    assert "CRITICAL database: the daemon cannot write to its database: " in result.output
    assert "stopped or hung" not in result.output
    filler.unlink()
    wait_until(lambda: status().exit_code == 0, 60, message="status OK once space is back")
    fault_run.finish()
    assert count(fault_run.db) == 5


def test_daemon_started_on_a_full_disk_says_so_and_exits(
    fault_run: FaultRun, small_disk: Path
) -> None:
    fault_run.configure(db=small_disk / "sms.db")
    fill(small_disk / "filler")
    daemon = fault_run.start()
    assert daemon.wait(30) == 1, daemon.log
    assert "Traceback" not in daemon.log, daemon.log
    assert "No space left on device" in daemon.log or "disk is full" in daemon.log, daemon.log
    assert str(small_disk) in daemon.log, "the message names the path"


def poison_emails() -> list[bytes]:
    bad_date = build_provider_email("+393470000001", "+393331234333", "20241399999999", "p1")
    nul = build_provider_email("+393470000002", "+393331234333", "20240501120000", "p2 \x00 x")
    b64 = build_provider_email(
        "+393470000003", "+393331234333", "20240501120000", "p3", encoding="base64"
    )
    head, _, _ = b64.partition(b"\r\n\r\n")
    broken = head + b"\r\n\r\n!!!! not base64 \x01\x02\r\n"
    return [bad_date, nul, broken]


def test_poison_emails_are_rejected_and_the_next_ones_flow(fault_run: FaultRun) -> None:
    poisons = poison_emails()
    fault_run.send(2)
    for raw in poisons:
        fault_run.send_raw(raw)
        fault_run.send(1)
    fault_run.start(wait_idle=True)
    fault_run.settle()
    fault_run.send_raw(poisons[0].replace(b"p1", b"p1 again"))  # while IDLE, too
    fault_run.send(2)
    fault_run.finish()
    reasons = [r[0] for r in rows(fault_run.db, "SELECT reason FROM rejects ORDER BY id")]
    assert len(reasons) == 4, reasons
    assert "NUL" in reasons[1]
    flags = fault_run.mailbox.flags()
    assert sum("\\Seen" not in f for f in flags.values()) == 4, "rejected mail is left alone"


def test_an_email_the_server_cannot_return_does_not_block_the_others(
    fault_run: FaultRun,
) -> None:
    fault_run.send(2)
    plant_unreadable_email(fault_run)
    fault_run.send(2)
    fault_run.start()
    fault_run.finish(settle_timeout=20)
    reasons = [r[0] for r in rows(fault_run.db, "SELECT reason FROM rejects")]
    assert len(reasons) == 1 and "failed 3 times to return this email" in reasons[0], reasons
    unseen = [f for f in fault_run.mailbox.flags().values() if "\\Seen" not in f]
    assert len(unseen) == 1, "the unreadable email is left in the mailbox, untouched"
