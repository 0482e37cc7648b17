"""Helpers shared by the daemon tests: config files, a daemon subprocess, DB queries."""

from __future__ import annotations

import itertools
import os
import pwd
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import asdict, fields, is_dataclass
from pathlib import Path
from typing import Any

import pytest

from inbound_mail.config.model import AccountConfig, SinkConfig
from inbound_mail.config.reader import load_config
from inbound_mail.errors import ConfigError
from inbound_mail.models import EmailOrigin, SmsRecord
from inbound_mail.service.daemon import Daemon
from inbound_mail.sinks import create_sink
from inbound_mail.store.db import Store
from inbound_mail.store.rows import IngestItem
from inbound_mail.testing.emails import build_provider_email
from inbound_mail.testing.toml import toml_value
from inbound_mail.testing.wait import wait_until

__all__ = [
    "ON_EVERY_SERVER",
    "REPO",
    "SERVERS",
    "UNCHECKED_PARSE",
    "DaemonProcess",
    "Message",
    "NotifyListener",
    "count",
    "in_process_daemon",
    "on_every_server",
    "rows",
    "toml_value",
    "unchecked_config",
    "wait_until",
    "write_config",
]

REPO = Path(__file__).resolve().parent.parent
"""The repository's root: fixtures/, config.example.toml, contrib/, tests/data/."""
_SKIP = {"file", "index"}

# ``[parse]`` for tests that import or parse unsigned provider emails (the golden
# fixtures) to test something other than trust: the default, "require", would
# reject them all.  Accounts opt out in DovecotServer.account(); trust tests
# (test_trust*.py) use "require" / "report" with real DKIM and a real DNS server.
UNCHECKED_PARSE = '[parse]\nauthenticate = "off"\n'


def unchecked_config(directory: Path) -> Path:
    """A config file holding only :data:`UNCHECKED_PARSE` (for ``--config``)."""
    path = directory / "unchecked.toml"
    path.write_text(UNCHECKED_PARSE, encoding="utf-8")
    return path


SERVERS = ("dovecot", "cyrus-debian", "cyrus-upstream")
"""The real IMAP servers of the suite (``imap_server`` in conftest.py)."""


def on_every_server(xfail: Mapping[str, str] | None = None) -> pytest.MarkDecorator:
    """Run a test of the IMAP contract with its ``mailbox`` (and ``imap_server``) on each
    server; ``xfail`` maps a server to the product defect (reason) that fails it there."""
    xfail = xfail or {}
    params = [
        pytest.param(name, marks=pytest.mark.xfail(strict=True, reason=xfail[name]))
        if name in xfail
        else name
        for name in SERVERS
    ]
    return pytest.mark.parametrize("imap_server", params, indirect=True)


ON_EVERY_SERVER = on_every_server()
"""A test of the IMAP contract: its ``mailbox`` (and ``imap_server``) is on each server."""


def _account_lines(account: AccountConfig) -> list[str]:
    lines = ["[[accounts]]"]
    for field in fields(account):
        value = getattr(account, field.name)
        if is_dataclass(value) and not isinstance(value, type):  # [accounts.oauth2]
            value = {k: v for k, v in asdict(value).items() if v is not None}
        if field.name not in _SKIP and value is not None:
            lines.append(f"{field.name} = {toml_value(value)}")
    return lines


def write_config(
    path: Path,
    accounts: Sequence[AccountConfig] = (),
    *,
    db: Path,
    sinks: Sequence[Mapping[str, Any]] = (),
    extra: str = "",
) -> Path:
    """A config file with these accounts and sinks (each sink a flat mapping)."""
    lines = ["[database]", f"path = {toml_value(db)}", "", extra]
    for account in accounts:
        lines += [*_account_lines(account), ""]
    for sink in sinks:
        lines += ["[[sinks]]"] + [f"{k} = {toml_value(v)}" for k, v in sink.items()] + [""]
    path.write_text("\n".join(lines), encoding="utf-8")
    return path


def rows(db: Path, query: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
    if not db.exists():
        return []
    with sqlite3.connect(db, timeout=30) as conn:
        return list(conn.execute(query, params))


def count(db: Path, table: str = "messages") -> int:
    try:
        return int(rows(db, f"SELECT count(*) FROM {table}")[0][0]) if db.exists() else 0
    except sqlite3.OperationalError:  # the daemon has not created the schema yet
        return 0


@contextmanager
def in_process_daemon(config_path: Path) -> Iterator[Daemon]:
    """The daemon in a thread of this process (no signal handlers); stopped after."""
    daemon = Daemon(load_config(config_path))
    result: list[int] = []
    thread = threading.Thread(
        target=lambda: result.append(daemon.run(install_signals=False)), daemon=True
    )
    thread.start()
    try:
        yield daemon
    finally:
        daemon.request_stop()
        thread.join(15)
        assert not thread.is_alive(), "the daemon did not stop within 15 s"
    assert result == [0]


class DaemonProcess:
    """``inbound-mail run`` as a real subprocess, its log in a file."""

    def __init__(
        self, config: Path, *, args: Sequence[str] = ("run",), env: Mapping[str, str] | None = None
    ):
        self.log_path = config.with_suffix(f".{os.getpid()}.{id(self)}.log")
        self._log = self.log_path.open("wb")
        full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "inbound_mail", "--config", str(config), *args],
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env=full_env,
        )

    @property
    def log(self) -> str:
        return self.log_path.read_text(encoding="utf-8", errors="replace")

    def wait_log(self, text: str, timeout: float = 20.0, occurrences: int = 1) -> None:
        wait_until(
            lambda: self.log.count(text) >= occurrences or self.proc.poll() is not None,
            timeout,
            message=f"{text!r} in the daemon's log",
        )
        assert self.log.count(text) >= occurrences, f"daemon exited early:\n{self.log}"

    def signal(self, signum: int = signal.SIGTERM) -> None:
        self.proc.send_signal(signum)

    def kill(self) -> None:
        self.proc.kill()
        self.proc.wait(10)

    def wait(self, timeout: float = 10.0) -> int:
        return self.proc.wait(timeout)

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        self._log.close()


Message = dict[str, str]


class NotifyListener:
    """The service manager's end: an AF_UNIX datagram socket (a path, or ``@abstract``)."""

    def __init__(self, address: str) -> None:
        self.address = address
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind("\0" + address[1:] if address.startswith("@") else address)
        self.received: list[Message] = []

    def env(self, watchdog_usec: int | None = None) -> dict[str, str]:
        env = {"NOTIFY_SOCKET": self.address}
        if watchdog_usec is not None:
            env["WATCHDOG_USEC"] = str(watchdog_usec)
        return env

    def read(self, timeout: float) -> Message | None:
        """The next datagram within ``timeout`` seconds, or None."""
        self.sock.settimeout(max(timeout, 0.001))
        try:
            data = self.sock.recv(4096)
        except TimeoutError:
            return None
        message = dict(line.split("=", 1) for line in data.decode().splitlines())
        self.received.append(message)
        return message

    def wait_for(
        self, predicate: Callable[[Message], bool], timeout: float = 15.0, *, seen: bool = False
    ) -> Message:
        """The next datagram that matches (``seen``: or one already received)."""
        if seen and (old := [m for m in self.received if predicate(m)]):
            return old[0]
        deadline = time.monotonic() + timeout
        while (remaining := deadline - time.monotonic()) > 0:
            message = self.read(remaining)
            if message is not None and predicate(message):
                return message
        raise AssertionError(f"no matching notification within {timeout} s: {self.received}")

    def during(self, seconds: float) -> list[Message]:
        """Every datagram that arrives in the next ``seconds``."""
        deadline, got = time.monotonic() + seconds, []
        while (remaining := deadline - time.monotonic()) > 0:
            message = self.read(remaining)
            if message is not None:
                got.append(message)
        return got

    def close(self) -> None:
        self.sock.close()


# -- factories: one numbered SMS record or provider email ---------------------------------
DESTINATION = "+393331234333"


def record(
    i: int = 0, text: str | None = None, *, word: str = "message", **fields: Any
) -> SmsRecord:
    """SMS record number ``i``: its originator ends in ``i``, its text is ``"{word} {i}"``
    unless ``text`` is given; ``fields`` set any other field of :class:`SmsRecord`."""
    values: dict[str, Any] = {
        "originator": f"+3933000{i:05d}",
        "destination": DESTINATION,
        "date_time": "20250525154559",
        "received_at": "2025-05-25T13:45:59Z",
        "text": text if text is not None else f"{word} {i}",
    }
    return SmsRecord(**(values | fields))


def sink_record(i: int = 0, text: str | None = None) -> SmsRecord:
    """What the sink tests send: :func:`record` with a Message-ID, text ``"News ON {i}"``."""
    return record(i, text, word="News ON", message_id=f"<m{i}@example.com>")


def provider_email(n: int, word: str = "sms", **kwargs: Any) -> bytes:
    """Provider email number ``n``: from ``+39347`` and ``n``, text ``"{word} {n}"``;
    ``kwargs`` go to :func:`~inbound_mail.testing.emails.build_provider_email`."""
    return build_provider_email(
        f"+39347{n:07d}", DESTINATION, "20240501120000", f"{word} {n}", **kwargs
    )


# -- the outbox of one sink --------------------------------------------------------------
_keys = itertools.count()


def queue(db: Path, records: Sequence[SmsRecord], sink: str = "bus") -> None:
    """Store ``records`` (each from a new origin) and queue each for ``sink``."""
    items = [
        IngestItem(b"raw", r, EmailOrigin(kind="eml", path="x", key=str(next(_keys))))
        for r in records
    ]
    with Store.open(db) as store:
        store.ingest(items, route=lambda r: [sink])


def statuses(db: Path, sink: str = "bus") -> list[str]:
    """The status of each delivery to ``sink``, in id order."""
    with Store.open(db) as store:
        return [r["status"] for r in store.deliveries(sink=sink)]


def last_errors(db: Path, sink: str = "bus") -> list[str]:
    """The last error of each delivery to ``sink``, in id order."""
    with Store.open(db) as store:
        return [r["last_error"] for r in store.deliveries(sink=sink)]


# -- sink options ------------------------------------------------------------------------
def assert_bad_option(sink_type: str, options: dict[str, Any], key: str, problem: str) -> None:
    """The ConfigError names the file, the sink's key and the problem."""
    options = {k: v for k, v in options.items() if v is not None}
    config = SinkConfig(name="bus", type=sink_type, options=options, file="/etc/im.toml", index=1)
    with pytest.raises(ConfigError) as caught:
        create_sink(config)
    assert f"sinks[1].{key}" in str(caught.value) and "/etc/im.toml" in str(caught.value)
    assert problem in str(caught.value)


# -- harness ---------------------------------------------------------------------------
def run_unprivileged(script: str, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    """Run ``python -c script ROOT`` (ROOT: ``tmp_path/server``) as ``nobody`` when we
    are root, else as ourselves: a harness must work for either."""
    root = tmp_path / "server"
    argv = [sys.executable, "-c", script, str(root)]
    if os.geteuid() == 0:
        nobody = pwd.getpwnam("nobody")
        root.mkdir()
        os.chown(root, nobody.pw_uid, nobody.pw_gid)
        # As nobody (which Cyrus then runs as: cyrus_user).  CAP_DAC_READ_SEARCH only
        # lets it reach the interpreter and this checkout (which may sit under /root);
        # everything it writes is its own.
        capability = "+dac_read_search"
        argv = [
            "setpriv",
            f"--reuid={nobody.pw_uid}",
            f"--regid={nobody.pw_gid}",
            "--clear-groups",
            f"--inh-caps={capability}",
            f"--ambient-caps={capability}",
            *argv,
        ]
    environment = {**os.environ, "HOME": str(tmp_path)}
    return subprocess.run(argv, capture_output=True, text=True, timeout=120, env=environment)
