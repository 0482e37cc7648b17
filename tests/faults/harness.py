"""The fault suite's harness: a daemon subprocess, a real Dovecot, a real webhook receiver.

A :class:`FaultRun` sends provider emails with unique tokens (APPEND, or Maildir
files for bulk loads), runs ``python -m inbound_mail run`` against them (armed
with ``INBOUND_MAIL_FAULT`` when asked), lets the system settle, then prints
and records the figures and asserts ``lost == 0`` and ``duplicated == 0``.

Settled means: every token processed by the receiver, no delivery row left
pending and no acknowledgement (seen / move) still owed.

Timings are small so the whole directory runs in a few minutes: sinks retry
after 0.1 s (capped at 1 s), the IMAP worker probes a silent IDLE after 3 s
and gives a connect or a command 3 s.
"""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from inbound_mail.config.model import AccountConfig
from inbound_mail.testing.emails import build_provider_email
from inbound_mail.testing.wait import wait_until
from inbound_mail.testing.webhook_receiver import WebhookReceiver
from testsupport.dovecot import DovecotServer
from testsupport.mailbox import Mailbox

from .checker import Figures, Ledger, record_figures
from helpers import DaemonProcess, count, rows, write_config

__all__ = ["FAST_ACCOUNT", "FAST_SINK", "FaultRun", "FaultRunFactory"]

FAST_ACCOUNT: Mapping[str, Any] = {
    "idle_deadline": 3.0,
    "connect_timeout": 3.0,
    "poll_interval": 1.0,
}
FAST_SINK: Mapping[str, Any] = {"retry_base": 0.1, "retry_cap": 1.0, "timeout": 5.0}
SETTLE_TIMEOUT = 60.0
STOP_TIMEOUT = 10.0


class FaultRun:
    """One fault scenario: the mail, the daemon(s), the receiver and the ledger."""

    def __init__(self, name: str, workdir: Path, mailbox: Mailbox, receiver: WebhookReceiver):
        self.name = name
        self.workdir = workdir
        self.mailbox = mailbox
        self.receiver = receiver
        self.ledger = Ledger()
        self.db = workdir / "sms.db"
        self.config_path = workdir / "inbound-mail.toml"
        self.daemons: list[DaemonProcess] = []
        self.started_at: float | None = None
        self.fault: str | None = None
        """The fault the current daemon was started with."""
        self.configure()

    # -- set-up -------------------------------------------------------------------------
    def account(self, **overrides: Any) -> AccountConfig:
        return self.mailbox.account(**{**FAST_ACCOUNT, **overrides})

    def configure(
        self,
        *,
        account: AccountConfig | None = None,
        sink: Mapping[str, Any] | None = None,
        db: Path | None = None,
        **account_overrides: Any,
    ) -> Path:
        """(Re)write the config: the mailbox's account with ``account_overrides`` (or
        ``account``), one json webhook sink to the receiver with ``sink`` options."""
        self.db = db or self.db
        hook = {
            "name": "hook",
            "type": "webhook",
            "url": self.receiver.url,
            "format": "json",
            **FAST_SINK,
            **(sink or {}),
        }
        account = account or self.account(**account_overrides)
        return write_config(self.config_path, [account], db=self.db, sinks=[hook])

    # -- mail ---------------------------------------------------------------------------
    def _clock(self) -> None:
        if self.started_at is None:
            self.started_at = time.monotonic()

    def send(self, count: int = 1, *, folder: str = "INBOX") -> list[str]:
        """APPEND ``count`` emails, each with a new token; return the tokens."""
        self._clock()
        pairs = self.ledger.emails_for(count)
        for _token, raw in pairs:
            self.mailbox.append(raw, folder)
        return [token for token, _raw in pairs]

    def send_raw(self, raw: bytes, *, folder: str = "INBOX") -> None:
        """APPEND ``raw`` as it is: poison, noise, or a ledger email built by hand."""
        self._clock()
        self.mailbox.append(raw, folder)

    def send_files(self, count: int, *, folder: str = "INBOX") -> list[str]:
        """Bulk-load ``count`` emails as Maildir files (far faster than APPEND)."""
        self._clock()
        pairs = self.ledger.emails_for(count)
        self.mailbox.deliver_files([raw for _token, raw in pairs], folder)
        return [token for token, _raw in pairs]

    # -- the daemon -----------------------------------------------------------------------
    @property
    def daemon(self) -> DaemonProcess:
        return self.daemons[-1]

    @property
    def running(self) -> bool:
        return bool(self.daemons) and self.daemon.proc.poll() is None

    def start(self, fault: str | None = None, *, wait_idle: bool = False) -> DaemonProcess:
        """Start ``inbound-mail run``; ``fault``: an ``INBOUND_MAIL_FAULT`` spec."""
        assert not self.running, "one daemon at a time (see the lock test for two)"
        self._clock()
        env = {"INBOUND_MAIL_FAULT": fault} if fault else None
        self.fault = fault
        self.daemons.append(DaemonProcess(self.config_path, env=env))
        if wait_idle:
            self.daemon.wait_log("state=idle", timeout=30)
        return self.daemon

    def kill(self) -> None:
        """kill -9 the running daemon."""
        self.daemon.kill()

    def expect_killed(self, timeout: float = 60.0) -> None:
        """Wait for the armed fault point to SIGKILL the daemon."""
        try:
            code = self.daemon.wait(timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(
                f"the fault did not fire within {timeout:g} s\n{self.logs()}"
            ) from None
        assert code == -signal.SIGKILL, f"exit code {code}, expected SIGKILL\n{self.logs()}"

    def stop(self) -> None:
        """A warm stop (SIGTERM), which must end with exit 0 within 10 s."""
        # Before its handlers are installed, SIGTERM kills the process outright.
        self.daemon.wait_log("daemon.started", timeout=30)
        self.daemon.signal(signal.SIGTERM)
        try:
            code = self.daemon.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            raise AssertionError(
                f"no exit {STOP_TIMEOUT:g} s after SIGTERM\n{self.logs()}"
            ) from None
        assert code == 0, f"exit code {code} after SIGTERM\n{self.logs()}"

    def logs(self, lines: int = 60) -> str:
        parts = []
        for number, daemon in enumerate(self.daemons, 1):
            tail = "\n".join(daemon.log.splitlines()[-lines:])
            parts.append(f"--- daemon {number} ({daemon.log_path}) ---\n{tail}")
        return "\n".join(parts)

    # -- settling and the verdict ---------------------------------------------------------
    def backlog(self) -> tuple[int, int]:
        """(delivery rows not delivered, acknowledgements owed) in the database."""
        try:
            pending = rows(self.db, "SELECT count(*) FROM deliveries WHERE status != 'delivered'")
            acks = rows(self.db, "SELECT count(*) FROM pending_acks")
        except sqlite3.OperationalError:  # no schema yet
            return (-1, -1)
        if not pending or not acks:
            return (-1, -1)
        return int(pending[0][0]), int(acks[0][0])

    def is_settled(self) -> bool:
        return not self.ledger.missing(self.receiver) and self.backlog() == (0, 0)

    def settle(self, timeout: float = SETTLE_TIMEOUT) -> None:
        """Wait until settled; fail (with the figures and the logs) after ``timeout``."""

        def done() -> bool:
            if self.daemons and not self.running and not self.is_settled():
                raise AssertionError(f"the daemon exited before settling\n{self.logs()}")
            return self.is_settled()

        try:
            wait_until(done, timeout, interval=0.1, message="every token delivered")
        except TimeoutError:
            figures = self.figures()
            raise AssertionError(
                f"{self.name}: not settled within {timeout:g} s: {figures}, backlog "
                f"(pending deliveries, owed acks) = {self.backlog()}\n{self.logs()}"
            ) from None

    def figures(self) -> Figures:
        seconds = time.monotonic() - (self.started_at or time.monotonic())
        return self.ledger.figures(self.receiver, seconds)

    def finish(self, *, settle_timeout: float = SETTLE_TIMEOUT, record: bool = True) -> Figures:
        """Settle, stop the daemon, print (and ``record``) the figures, assert no loss
        and no duplicate."""
        try:
            self.settle(settle_timeout)
        finally:
            figures = self.figures()
            print(f"{self.name}: {figures}")
            if record:
                record_figures(self.name, figures)
        if self.running:
            self.stop()
        assert figures.unexpected == 0, f"delivered but never sent: {figures}"
        assert figures.lost == 0, f"lost: {figures}\n{self.logs()}"
        assert figures.duplicated == 0, f"duplicated: {figures}\n{self.logs()}"
        stored = count(self.db)
        assert stored == figures.sent, f"{stored} SMS stored for {figures.sent} sent"
        return figures

    def close(self) -> None:
        for daemon in self.daemons:
            daemon.close()


FaultRunFactory = Callable[[Mailbox], FaultRun]
"""The ``fault_runs`` fixture: a FaultRun on any mailbox."""


def plant_unreadable_email(fault_run: FaultRun) -> None:
    """A Maildir file whose name claims 5000 bytes: Dovecot fails every FETCH that touches it
    ("Cached message size larger than expected") and drops the connection, on every try."""
    mailbox = fault_run.mailbox
    assert mailbox.server.runtime_dir is not None
    maildir = mailbox.server.runtime_dir / "mail" / mailbox.user / "Maildir"
    raw = build_provider_email("+393470000009", "+393331234333", "20240501120000", "unreadable")
    path = maildir / "new" / f"{time.time_ns()}.Pcorrupt.inbound-mail-test,S=5000"
    path.write_bytes(raw)
    owner = maildir.stat()
    os.chown(path, owner.st_uid, owner.st_gid)
    assert isinstance(mailbox.server, DovecotServer)  # the fault suite's; doveadm is Dovecot's
    mailbox.server.doveadm("mailbox", "status", "-u", mailbox.user, "messages", "INBOX")
