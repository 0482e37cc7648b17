"""Server and network faults: Dovecot killed mid-catch-up, a reset mid-literal, a
half-open connection, a kick during IDLE, a UIDVALIDITY change while running."""

from __future__ import annotations

import time

import pytest

from inbound_mail.testing.wait import wait_until
from testsupport.dovecot import DovecotFactory
from testsupport.proxy import FaultProxy

from .harness import FaultRun, FaultRunFactory
from helpers import count, rows

pytestmark = pytest.mark.faults

BULK = 2000


def test_dovecot_killed_in_the_middle_of_a_large_fetch(
    fresh_dovecot: DovecotFactory, fault_runs: FaultRunFactory
) -> None:
    server = fresh_dovecot()
    run = fault_runs(server.new_mailbox("bulk"))
    # Small transactions, so that the kill lands between two of them.
    run.configure(fetch_batch=100, sink={"parallel": 8})
    run.send_files(BULK)
    run.start()
    wait_until(lambda: count(run.db) > 0, 60, interval=0.01)
    server.kill()
    stored = count(run.db)
    print(f"Dovecot killed with {stored} of {BULK} stored")
    assert 0 < stored < BULK, f"the kill must land mid-catch-up, {stored} were stored"
    run.daemon.wait_log("imap.disconnected")
    server.start()
    run.send(2)  # new mail on the restarted server
    run.finish(settle_timeout=120)
    assert count(run.db) == BULK + 2


def test_connection_reset_in_the_middle_of_a_literal(
    dovecot_proxy: FaultProxy, fault_run: FaultRun
) -> None:
    # Clear text, so the proxy can find the FETCH literal it cuts into.
    fault_run.configure(tls="none", port=dovecot_proxy.port, fetch_batch=10)
    fault_run.send(25)
    dovecot_proxy.cut_after(1500, trigger=b"BODY[] {")
    fault_run.start()
    dovecot_proxy.wait_cut()
    fault_run.daemon.wait_log("imap.disconnected")
    fault_run.finish()
    assert dovecot_proxy.accepted >= 2, "the daemon reconnected"


def test_half_open_connection_is_noticed_within_the_idle_deadline(
    dovecot_tls_proxy: FaultProxy, fault_run: FaultRun
) -> None:
    proxy = dovecot_tls_proxy
    fault_run.configure(port=proxy.port)
    fault_run.send(2)
    fault_run.start(wait_idle=True)
    fault_run.settle()

    # Existing connections go silent; a new one gets through.
    proxy.blackhole(new=False)
    silenced = time.monotonic()
    fault_run.send(2)
    fault_run.settle(30)
    noticed = time.monotonic() - silenced
    print(f"a silent IDLE connection noticed and caught up in {noticed:.1f} s")
    # The IDLE deadline, then connect_timeout for DONE's answer, a first backoff of at
    # most 1 s, and some seconds for the reconnect and catch-up on a busy machine; far
    # below the ~90 s TCP keepalive would take.
    account = fault_run.account()
    bound = account.idle_deadline + account.connect_timeout + 1 + 8
    assert noticed < bound, f"took {noticed:.1f} s to notice a dead IDLE connection"

    # Everything silent, new connections included, for one failed reconnect; then back.
    disconnects = fault_run.daemon.log.count("imap.disconnected")
    proxy.blackhole(new=True)
    fault_run.send(2)
    fault_run.daemon.wait_log("imap.disconnected", occurrences=disconnects + 2, timeout=40)
    assert fault_run.ledger.missing(fault_run.receiver), "nothing can arrive through a blackhole"
    proxy.resume()
    fault_run.finish()


def test_kick_during_idle(fault_run: FaultRun) -> None:
    fault_run.send(3)
    fault_run.start(wait_idle=True)
    fault_run.settle()
    fault_run.mailbox.kick()
    fault_run.send(3)
    fault_run.daemon.wait_log("imap.disconnected")
    fault_run.daemon.wait_log("state=idle", occurrences=2)
    fault_run.send(2)
    fault_run.finish()


def test_uidvalidity_change_while_running(fault_run: FaultRun) -> None:
    fault_run.send(4)
    fault_run.start(wait_idle=True)
    fault_run.settle()
    fault_run.mailbox.set_uidvalidity(int(time.time()) + 1000)
    fault_run.send(3)
    fault_run.finish()
    assert "imap.uidvalidity_changed" in fault_run.daemon.log
    assert count(fault_run.db) == 7
    validities = rows(fault_run.db, "SELECT DISTINCT uidvalidity FROM checkpoints")
    assert len(validities) == 1
