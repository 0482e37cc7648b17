"""The parse pool of ``backfill`` (inbound_mail.sources.pool) under kill -9: a parse worker
killed, or the writer killed with its workers running; nothing lost, nothing doubled.

The backfill stores and queues; a daemon started afterwards delivers the queue to
the webhook, and the ledger checks every token arrived exactly once.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest

from inbound_mail.testing.emails import build_provider_email

from .harness import FaultRun, plant_unreadable_email
from helpers import count, rows

pytestmark = pytest.mark.faults


def backfill(run: FaultRun, fault: str | None, *args: str) -> subprocess.CompletedProcess[bytes]:
    env = {k: v for k, v in os.environ.items() if k != "INBOUND_MAIL_FAULT"}
    argv = [sys.executable, "-m", "inbound_mail", "--config", str(run.config_path)]
    return subprocess.run(
        [*argv, "backfill", "--account", run.mailbox.user, "--workers", "2", *args],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        env={**env, **({"INBOUND_MAIL_FAULT": fault} if fault else {})},
        timeout=300,
        check=False,
    )


def test_kill_a_parse_worker_during_backfill(fault_run: FaultRun) -> None:
    fault_run.configure(fetch_batch=150)
    fault_run.send_files(200)
    poison = b"X-Inbound-Mail-Fault: crash-parse\r\n" + build_provider_email(
        "+393470000001", "+393331234333", "20240501120000", "kills the worker that parses it"
    )
    fault_run.send_raw(poison)  # not in the ledger: it must never reach the webhook
    fault_run.send_files(100)
    done = backfill(fault_run, "crash-parse")
    assert done.returncode == 0, done.stderr.decode()[-3000:]
    # Killed in a group, then twice alone: a reject, with its raw bytes.
    assert done.stderr.count(b"parse.worker_died") == 2
    assert rows(fault_run.db, "SELECT code, raw FROM rejects") == [("parser_crash", poison)]
    assert count(fault_run.db, "parsing") == 0
    fault_run.start()
    fault_run.finish()


def test_kill_the_writer_of_a_backfill_with_its_pool_running(fault_run: FaultRun) -> None:
    fault_run.configure(fetch_batch=100)
    fault_run.send_files(400)
    # backfill() returns once every process holding its output pipes has exited:
    # the workers end themselves when the writer is killed (no orphan parses on).
    killed = backfill(fault_run, "backfill-batch:2")
    assert killed.returncode == -signal.SIGKILL, killed.stderr.decode()[-3000:]
    assert count(fault_run.db) == 200, "two batches committed before the kill"
    done = backfill(fault_run, None)
    assert done.returncode == 0, done.stderr.decode()[-3000:]
    assert count(fault_run.db, "parsing") == 0
    assert count(fault_run.db, "rejects") == 0
    fault_run.start()
    fault_run.finish()


def test_an_email_the_server_cannot_return_does_not_end_a_backfill(fault_run: FaultRun) -> None:
    """Dovecot fails every FETCH (and the size SEARCH) that touches the planted email
    and drops the connection: the backfill reconnects and goes on, the email ends as
    an `unfetchable` reject, left in the mailbox, and everything else is stored."""
    fault_run.configure(fetch_batch=100)
    fault_run.send_files(200)
    plant_unreadable_email(fault_run)  # in the third group
    fault_run.send_files(50)
    done = backfill(fault_run, None)
    assert done.returncode == 0, done.stderr.decode()[-3000:]
    assert count(fault_run.db) == 250
    assert rows(fault_run.db, "SELECT code FROM rejects") == [("unfetchable",)]
    assert count(fault_run.db, "parsing") == 0
    assert b"backfill.fetch_failed" in done.stderr
    assert b"INBOX: 251 read, 250 new, 0 duplicates, 0 skipped, 1 rejected" in done.stderr
    fault_run.start()
    fault_run.finish()


def test_a_dry_run_stops_at_an_email_the_server_cannot_return(fault_run: FaultRun) -> None:
    """A dry run stores nothing, not even the `unfetchable` reject: it says what failed."""
    fault_run.send_files(3)
    plant_unreadable_email(fault_run)
    done = backfill(fault_run, None, "--dry-run")
    assert done.returncode != 0
    assert b"Internal error" in done.stderr, done.stderr.decode()[-2000:]
    assert count(fault_run.db, "rejects") == 0 and count(fault_run.db) == 0
