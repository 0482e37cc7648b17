"""Fixtures of the fault suite; the harness itself is in ``harness.py``."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from harness import FaultRun

from inbound_mail.testing.mailbox import Mailbox
from inbound_mail.testing.webhook_receiver import WebhookReceiver

FaultRunFactory = Callable[[Mailbox], FaultRun]


@pytest.fixture
def receiver() -> Iterator[WebhookReceiver]:
    with WebhookReceiver() as server:
        yield server


@pytest.fixture
def fault_runs(
    request: pytest.FixtureRequest, tmp_path: Path, receiver: WebhookReceiver
) -> Iterator[FaultRunFactory]:
    """``fault_runs(mailbox)``: a FaultRun on any mailbox (a fresh server's, say)."""
    made: list[FaultRun] = []

    def make(mailbox: Mailbox) -> FaultRun:
        run = FaultRun(request.node.name, tmp_path, mailbox, receiver)
        made.append(run)
        return run

    yield make
    for run in made:
        run.close()


@pytest.fixture
def fault_run(fault_runs: FaultRunFactory, mailbox: Mailbox) -> FaultRun:
    """A FaultRun on a new user of the session's shared Dovecot."""
    return fault_runs(mailbox)
