"""A burst of SMS: mail that arrives while a sync pass runs is never left for a later event.

The server reports such mail with an ``EXISTS`` in reply to whatever command the
pass is running (FETCH, STORE, MOVE...), and never repeats it: the worker must
notice it after the pass and sync again before it re-enters IDLE.
"""

from __future__ import annotations

import threading
import time
from functools import partial
from pathlib import Path

import pytest

from inbound_mail.config.model import AccountConfig
from inbound_mail.store.rows import IngestResult
from testsupport.mailbox import Mailbox

from helpers import (
    ON_EVERY_SERVER,
    count,
    in_process_daemon,
    provider_email,
    wait_until,
    write_config,
)

BURST = 50


sms = partial(provider_email, word="burst")


@ON_EVERY_SERVER
@pytest.mark.parametrize("after", ["seen", "move:Processed", "none"])
def test_back_to_back_burst_every_email_stored_within_two_seconds(
    mailbox: Mailbox, tmp_path: Path, after: str
) -> None:
    db = tmp_path / "sms.db"
    # The daemon's defaults otherwise: a missed EXISTS would wait for idle_deadline
    # (60 s) or idle_refresh (10 min), far past the 2 s each email is given here.
    account = mailbox.account(after=after, connect_timeout=5.0)
    config = write_config(tmp_path / "c.toml", [account], db=db)
    appended: dict[int, float] = {}
    ready = threading.Event()

    def append(n: int) -> None:
        mailbox.append(sms(n))
        appended[n] = time.monotonic()

    with in_process_daemon(config) as daemon:
        worker = daemon.account_workers[0]
        wait_until(lambda: worker.health.state == "idle", 10)
        stored = worker.on_batch
        assert stored is not None

        def on_batch(account: AccountConfig, folder: str, result: IngestResult) -> None:
            # The instant a row is committed (before its `after` action), the next
            # email lands: the server then reports it in reply to the pass's commands.
            stored(account, folder, result)
            if ready.is_set() and len(appended) < BURST:
                append(len(appended))

        worker.on_batch = on_batch
        ready.set()
        append(0)
        for n in range(BURST):
            wait_until(lambda n=n: n in appended, 5, message=f"email {n} appended")  # type: ignore[misc]  # mypy: lambda default
            deadline = appended[n] + 2.0
            wait_until(
                lambda n=n: count(db) >= n + 1,  # type: ignore[misc]  # mypy: lambda default
                max(0.0, deadline - time.monotonic()),
                interval=0.005,
                message=f"email {n} of the burst stored within 2 s of its APPEND",
            )
    assert count(db) == BURST
