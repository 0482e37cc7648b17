"""A state machine over the faults: appends, kill -9 (at random or at a fault point),
restarts, kicks, UIDVALIDITY bumps and a failing receiver, in any order.

Each example draws the account's ``after`` action (seen, or a move to Processed).
Invariant at every step: what the receiver processed was sent, and no SMS reached
it under two ids.  At the end, after settling: every SMS sent was delivered, and
every email acknowledged exactly once (all seen, or all moved and none copied twice).
A fixed seed and bounds, so CI runs the same few examples in well under a minute.
"""

from __future__ import annotations

import contextlib
import itertools
import time
from pathlib import Path
from typing import Any, ClassVar

import pytest
from hypothesis import HealthCheck, Phase, seed, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)
from imapclient.exceptions import IMAPClientError

from inbound_mail.testing.wait import wait_until
from inbound_mail.testing.webhook_receiver import WebhookReceiver
from testsupport.dovecot import DovecotServer

from .checker import Figures, record_figures
from .harness import FaultRun

pytestmark = pytest.mark.faults

NAME = "test_state_machine"
FAULT_POINTS = [None, "after-fetch:1", "after-commit:1", "after-sink-2xx:1"]
MACHINE_SETTINGS = settings(
    max_examples=8,
    stateful_step_count=12,
    # No shrinking: each step drives real processes, and a failure's steps are printed as found.
    phases=(Phase.explicit, Phase.generate),
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)


@seed(20240501)  # random enough to reach long interleavings, the same on every run
class FaultMachine(RuleBasedStateMachine):
    """One example: a new mailbox, receiver and database, one daemon at a time."""

    dovecot: ClassVar[DovecotServer]
    workdirs: ClassVar[itertools.count[int]]
    root: ClassVar[Path]
    totals: ClassVar[list[Figures]]

    def __init__(self) -> None:
        super().__init__()
        self.receiver = WebhookReceiver()
        self.receiver.up()
        workdir = self.root / f"example-{next(self.workdirs)}"
        workdir.mkdir()
        mailbox = self.dovecot.new_mailbox("machine")
        self.run = FaultRun(NAME, workdir, mailbox, self.receiver)
        self.uidvalidity = int(time.time()) % 1_000_000 * 1000
        self.after = "seen"

    @initialize(count=st.integers(1, 3), after=st.sampled_from(["seen", "move:Processed"]))
    def start(self, count: int, after: str) -> None:
        self.after = after
        self.run.configure(fetch_batch=3, after=after)
        self.run.send(count)
        self.run.start()

    # Every fault comes with mail, so that even the simplest program has traffic in flight.
    @rule(count=st.integers(1, 4))
    def append(self, count: int) -> None:
        self.run.send(count)

    @precondition(lambda self: self.run.running)
    @rule(count=st.integers(1, 3))
    def kill(self, count: int) -> None:
        self.run.send(count)
        self.run.kill()

    @precondition(lambda self: not self.run.running)
    @rule(fault=st.sampled_from(FAULT_POINTS))
    def restart(self, fault: str | None) -> None:
        self.run.start(fault=fault)

    @rule(count=st.integers(1, 3))
    def kick(self, count: int) -> None:
        self.run.mailbox.kick()
        self.run.send(count)

    @rule(count=st.integers(1, 3))
    def bump_uidvalidity(self, count: int) -> None:
        self.uidvalidity += 1
        self.run.mailbox.set_uidvalidity(self.uidvalidity)
        self.run.send(count)

    @rule(times=st.integers(1, 5), count=st.integers(1, 3))
    def fail_receiver(self, times: int, count: int) -> None:
        self.receiver.fail(times, status=503)
        self.run.send(count)

    @rule()
    def let_it_work(self) -> None:
        """Give the daemon up to 2 s to catch up: without it, steps come faster than
        anything can happen between them."""
        with contextlib.suppress(TimeoutError):
            wait_until(self.run.is_settled, 2.0, interval=0.05)

    @invariant()
    def delivered_is_a_subset_of_sent(self) -> None:
        assert not self.run.ledger.unexpected(self.receiver)

    @invariant()
    def never_under_two_ids(self) -> None:
        by_token = self.run.ledger.ids_by_token(self.receiver.requests)
        assert all(len(set(ids)) == 1 for ids in by_token.values()), by_token

    def mailbox_state(self) -> tuple[int, int]:
        """(emails acknowledged, emails not yet): seen ones, or moved ones."""
        mailbox = self.run.mailbox
        if self.after == "seen":
            flags = mailbox.flags().values()
            seen = sum("\\Seen" in f for f in flags)
            return seen, len(flags) - seen
        try:
            moved = mailbox.message_count("Processed")
        except IMAPClientError:  # the folder is created by the first move
            moved = 0
        return moved, mailbox.message_count()

    def teardown(self) -> None:
        try:
            if self.run.running and self.run.fault:
                self.run.kill()  # an armed fault that has not fired would fire while settling
            if not self.run.running:
                self.run.start()
            self.run.settle()
            # A rescan after a UIDVALIDITY bump acknowledges again what lost its owed acks.
            emails = sum(self.run.ledger.emails.values())
            final = (emails, 0)
            with contextlib.suppress(TimeoutError):
                wait_until(lambda: self.mailbox_state() == final, 30, interval=0.2)
            self.totals.append(self.run.finish(record=False))
            state = self.mailbox_state()
            assert state == final, f"(acknowledged, not) = {state}, expected {final} ({self.after})"
        finally:
            self.run.close()
            self.receiver.down()


def _sum(figures: list[Figures]) -> Figures:
    fields: dict[str, Any] = {
        name: sum(getattr(f, name) for f in figures)
        for name in ("sent", "delivered", "lost", "duplicated", "resent", "seconds", "unexpected")
    }
    return Figures(**fields)


def test_state_machine(dovecot: DovecotServer, tmp_path: Path) -> None:
    FaultMachine.dovecot = dovecot
    FaultMachine.workdirs = itertools.count()
    FaultMachine.root = tmp_path
    FaultMachine.totals = []
    try:
        run_state_machine_as_test(FaultMachine, settings=MACHINE_SETTINGS)
    finally:
        if FaultMachine.totals:
            total = _sum(FaultMachine.totals)
            print(f"{NAME}: {len(FaultMachine.totals)} examples: {total}")
            record_figures(NAME, total)
