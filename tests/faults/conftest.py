"""Fixtures of the fault suite; the harness itself is in ``harness.py``.

The shared Dovecot is the session's (``tests/conftest.py``): tests whose fault
does not kill the server take a new user on it (``fault_run``); tests that kill
it start their own (``fresh_dovecot``) and wrap it with ``fault_runs``.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from inbound_mail.testing.webhook_receiver import WebhookReceiver
from testsupport.dovecot import DovecotServer
from testsupport.mailbox import Mailbox
from testsupport.proxy import FaultProxy

from .harness import FaultRun, FaultRunFactory


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


@pytest.fixture
def dovecot_proxy(dovecot: DovecotServer) -> Iterator[FaultProxy]:
    """A FaultProxy in front of the shared Dovecot's clear-text port."""
    with FaultProxy(dovecot.host, dovecot.imap_port) as proxy:
        yield proxy


@pytest.fixture
def dovecot_tls_proxy(dovecot: DovecotServer) -> Iterator[FaultProxy]:
    """A FaultProxy in front of the shared Dovecot's implicit-TLS port."""
    with FaultProxy(dovecot.host, dovecot.imaps_port) as proxy:
        yield proxy
