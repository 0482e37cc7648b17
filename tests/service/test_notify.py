"""sd_notify against a real datagram socket: READY, STATUS, WATCHDOG, STOPPING, a stall.

The daemon runs as a subprocess with ``$NOTIFY_SOCKET`` pointing at a socket this
test binds, exactly as systemd would set it up for ``Type=notify``.
"""

from __future__ import annotations

import os
import signal
import uuid
from collections.abc import Iterator
from functools import partial
from pathlib import Path

import pytest

from inbound_mail.service.notify import Notifier, watchdog_interval
from testsupport.mailbox import Mailbox

from helpers import DaemonProcess, NotifyListener, count, provider_email, write_config


@pytest.fixture
def abstract_listener() -> Iterator[NotifyListener]:
    listener = NotifyListener(f"@inbound-mail-test-{uuid.uuid4().hex}")
    yield listener
    listener.close()


sms = partial(provider_email, word="hi")


def test_ready_status_watchdog_and_stopping(
    abstract_listener: NotifyListener, mailbox: Mailbox, tmp_path: Path
) -> None:
    db = tmp_path / "sms.db"
    sink = {"name": "file", "type": "jsonl", "path": str(tmp_path / "out.jsonl")}
    account = mailbox.account(idle_deadline=5.0, connect_timeout=5.0)
    config = write_config(tmp_path / "c.toml", [account], db=db, sinks=[sink])
    daemon = DaemonProcess(config, env=abstract_listener.env(watchdog_usec=1_000_000))
    try:
        ready = abstract_listener.wait_for(lambda m: m.get("READY") == "1")
        assert ready["STATUS"].startswith("accounts: 1 "), ready
        abstract_listener.wait_for(lambda m: "1 idle" in m.get("STATUS", ""), seen=True)
        pings = [m for m in abstract_listener.during(2.0) if m.get("WATCHDOG") == "1"]
        assert len(pings) >= 3, "a ping every half WATCHDOG_USEC (0.5 s)"
        mailbox.append(sms(1))
        abstract_listener.wait_for(lambda m: "1 SMS stored, 1 delivered" in m.get("STATUS", ""))
        daemon.signal(signal.SIGTERM)
        abstract_listener.wait_for(lambda m: m.get("STOPPING") == "1")
        assert daemon.wait(10) == 0
    finally:
        daemon.close()
    assert count(db) == 1


def test_a_stuck_idle_loop_stops_the_watchdog_pings(mailbox: Mailbox, tmp_path: Path) -> None:
    listener = NotifyListener(str(tmp_path / "notify.sock"))  # a path socket this time
    account = mailbox.account(idle_deadline=5.0, connect_timeout=1.0)  # stuck after 5 s silence
    config = write_config(tmp_path / "c.toml", [account], db=tmp_path / "sms.db")
    env = {**listener.env(watchdog_usec=1_000_000), "INBOUND_MAIL_FAULT": "stall-idle:3"}
    daemon = DaemonProcess(config, env=env)
    try:
        listener.wait_for(lambda m: m.get("READY") == "1")
        listener.wait_for(lambda m: m.get("WATCHDOG") == "1")
        stalled = listener.wait_for(lambda m: "STALLED" in m.get("STATUS", ""), timeout=20)
        assert f"imap-{account.name}" in stalled["STATUS"]
        after = listener.during(2.5)  # five ping intervals
        assert not [m for m in after if m.get("WATCHDOG") == "1"], after
        daemon.wait_log("daemon.stalled")
        assert "systemd restarts the service" in daemon.log
        daemon.signal(signal.SIGTERM)
        assert daemon.wait(15) == 0, "the stuck thread is abandoned after the grace period"
    finally:
        daemon.close()
        listener.close()


def test_notifier_speaks_the_protocol_and_is_silent_without_systemd(tmp_path: Path) -> None:
    listener = NotifyListener(str(tmp_path / "n.sock"))
    try:
        notifier = Notifier.from_environ({"NOTIFY_SOCKET": listener.address})
        assert notifier.notify(READY=1, STATUS="two\nlines")
        assert listener.read(2) == {"READY": "1", "STATUS": "two lines"}
        assert notifier.reloading()
        message = listener.read(2)
        assert message is not None and message["RELOADING"] == "1"
        assert int(message["MONOTONIC_USEC"]) > 0
    finally:
        listener.close()
    assert not Notifier.from_environ({}).notify(READY=1)
    assert not Notifier.from_environ({"NOTIFY_SOCKET": "relative/path"}).enabled


@pytest.mark.parametrize(
    ("environ", "expected"),
    [
        ({"WATCHDOG_USEC": "1500000"}, 1.5),
        ({"WATCHDOG_USEC": "1500000", "WATCHDOG_PID": str(os.getpid())}, 1.5),
        ({"WATCHDOG_USEC": "1500000", "WATCHDOG_PID": "1"}, None),  # another process's watchdog
        ({"WATCHDOG_USEC": "0"}, None),
        ({}, None),
    ],
)
def test_watchdog_interval(environ: dict[str, str], expected: float | None) -> None:
    assert watchdog_interval(environ) == expected
