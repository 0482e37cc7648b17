"""kill -9 at each critical point of the pipeline, then a restart: nothing lost, nothing doubled.

The points are armed through ``INBOUND_MAIL_FAULT`` (see ``inbound_mail/faults.py``);
each test checks that the kill really happened where it was armed.
"""

from __future__ import annotations

import pytest

from inbound_mail.testing.wait import wait_until

from .harness import FaultRun
from helpers import DaemonProcess, count, rows

pytestmark = pytest.mark.faults


def test_kill_after_fetch_before_commit(fault_run: FaultRun) -> None:
    fault_run.configure(fetch_batch=4)
    fault_run.send(12)
    fault_run.start(fault="after-fetch:2")  # the second of three batches
    fault_run.expect_killed()
    stored = count(fault_run.db)
    assert stored == 4, f"only the first batch was committed, got {stored}"
    fault_run.send(3)  # arrives while the daemon is down
    fault_run.start()
    fault_run.finish()
    assert count(fault_run.db) == 15
    assert all("\\Seen" in flags for flags in fault_run.mailbox.flags().values())


def test_kill_after_commit_before_seen(fault_run: FaultRun) -> None:
    fault_run.configure(fetch_batch=5)
    fault_run.send(10)
    fault_run.start(fault="after-commit:1")
    fault_run.expect_killed()
    assert rows(fault_run.db, "SELECT count(*) FROM pending_acks") == [(5,)]
    assert not any("\\Seen" in flags for flags in fault_run.mailbox.flags().values())
    fault_run.start()
    fault_run.finish()
    assert all("\\Seen" in flags for flags in fault_run.mailbox.flags().values())
    assert count(fault_run.db, "emails") == 10, "no email recorded twice"


def test_kill_after_commit_before_move(fault_run: FaultRun) -> None:
    fault_run.configure(fetch_batch=5, after="move:Processed")
    fault_run.send(10)
    fault_run.start(fault="after-commit:1")
    fault_run.expect_killed()
    assert fault_run.mailbox.message_count("INBOX") == 10, "nothing moved before the ack"
    fault_run.start()
    fault_run.finish()
    assert fault_run.mailbox.message_count("INBOX") == 0
    assert fault_run.mailbox.message_count("Processed") == 10, "each email moved exactly once"


@pytest.mark.parametrize("parallel", [1, 4])
def test_kill_after_sink_2xx_before_marked(fault_run: FaultRun, parallel: int) -> None:
    fault_run.configure(sink={"parallel": parallel})
    fault_run.send(5)
    fault_run.start(fault="after-sink-2xx:1")
    fault_run.expect_killed()
    delivered = fault_run.ledger.ids_by_token(fault_run.receiver.requests)
    assert delivered, "the fault fires after a 2xx"
    fault_run.send(2)
    fault_run.start()
    figures = fault_run.finish()
    assert figures.resent >= len(delivered), "what was accepted but not marked is sent again"


def test_kill_in_the_middle_of_a_backfill(fault_run: FaultRun) -> None:
    """A backfill killed after its second batch, rerun while the daemon serves INBOX."""
    fault_run.configure(fetch_batch=5)
    archive = fault_run.send(20, folder="Archive")
    fault_run.start(wait_idle=True)
    account = fault_run.mailbox.user
    args = ("backfill", "--account", account, "--folder", "Archive")
    killed = DaemonProcess(
        fault_run.config_path, args=args, env={"INBOUND_MAIL_FAULT": "backfill-batch:2"}
    )
    try:
        assert killed.wait(60) == -9, killed.log
    finally:
        killed.close()
    assert count(fault_run.db) == 10, "two batches of five were committed before the kill"
    fault_run.send(3)  # the daemon keeps serving INBOX meanwhile
    rerun = DaemonProcess(fault_run.config_path, args=args)
    try:
        assert rerun.wait(60) == 0, rerun.log
    finally:
        rerun.close()
    wait_until(lambda: count(fault_run.db) == 23, 30)
    fault_run.finish()
    assert count(fault_run.db, "emails") == 23, "the rerun skipped what the first run recorded"
    assert len(archive) == 20


def test_second_daemon_on_one_database_refuses(fault_run: FaultRun) -> None:
    fault_run.send(3)
    first = fault_run.start(wait_idle=True)
    second = DaemonProcess(fault_run.config_path)
    try:
        assert second.wait(20) == 1, second.log
        assert "another inbound-mail daemon" in second.log
        assert f"pid {first.proc.pid}" in second.log, "the message names the holder"
    finally:
        second.close()
    fault_run.kill()  # a crashed holder leaves no stale lock: a new daemon takes over
    fault_run.send(2)
    fault_run.start()
    fault_run.finish()
