"""Receiver faults (5xx, a timeout, a dropped connection after the work was done) and
the provider sending one SMS twice: each SMS reaches the receiver under one id."""

from __future__ import annotations

import uuid

import pytest

from inbound_mail.testing.webhook_receiver import Answer

from .harness import FaultRun
from helpers import count

pytestmark = pytest.mark.faults

FAULTS = {
    "5xx": [Answer(status=503, body="busy")] * 4,
    # The receiver does the work, then answers after the sink's 1 s timeout.
    "timeout": [Answer(delay=1.5)] * 2,
    # The receiver does the work, then drops the connection without answering.
    "close": [Answer(action="close")] * 3,
}


@pytest.mark.parametrize("fault", sorted(FAULTS))
def test_receiver_fault(fault_run: FaultRun, fault: str) -> None:
    answers = FAULTS[fault]
    fault_run.configure(sink={"timeout": 1.0})
    fault_run.receiver.script(*answers)
    fault_run.send(6)
    fault_run.start()
    fault_run.receiver.wait_for(len(answers) + 1, timeout=30)
    fault_run.send(2)
    figures = fault_run.finish()
    requests = fault_run.receiver.requests
    assert len(requests) >= figures.sent + len(answers) - figures.resent
    if fault != "5xx":  # work done but unacknowledged: sent again, under the same id
        assert figures.resent >= 1


def test_provider_sends_one_sms_twice_under_two_message_ids(fault_run: FaultRun) -> None:
    ledger = fault_run.ledger
    fault_run.send(2)
    twice = ledger.new_token()
    for copy in ("a", "b"):  # both in one catch-up batch
        fault_run.send_raw(ledger.email(twice, message_id=f"<{copy}-{uuid.uuid4().hex}@agile>"))
    fault_run.start(wait_idle=True)
    fault_run.settle()
    fault_run.send(1)
    # A third copy arrives after the first was delivered.
    fault_run.send_raw(ledger.email(twice, message_id=f"<c-{uuid.uuid4().hex}@agile>"))
    fault_run.finish()
    ids = ledger.ids_by_token(fault_run.receiver.requests)[twice]
    assert len(ids) == 1, f"one delivery under one id, got {ids}"
    assert count(fault_run.db) == 4, "one message row per SMS"
    assert count(fault_run.db, "emails") == 6, "every email that carried it is recorded"
