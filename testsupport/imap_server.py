"""What the two test IMAP servers (:mod:`.dovecot`, :mod:`.cyrus`) share: ports picked
at the first start and kept by restarts, the lifecycle (start, stop, kill, restart,
close, ``with``), users' passwords and :class:`AccountConfig`\\ s, and reading mail
back over a plain-port session.

A subclass prepares its private directory (``_prepare``), writes its config
(``_write_config``) and launches the server (``_launch``, which raises a
:class:`PortTaken` when a picked port was taken meanwhile: the start picks new
ones, up to three times); ``error`` is the :class:`HarnessError` it raises."""

from __future__ import annotations

import itertools
import os
import re
import socket
import weakref
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any, ClassVar

import imapclient

from inbound_mail.config.model import AccountConfig, TlsMode

from . import HarnessError
from .process import GroupServer, free_ports

__all__ = ["ImapServer", "PortTaken", "append_message"]

_APPENDUID = re.compile(rb"APPENDUID \d+ (\d+)")


class PortTaken(HarnessError):
    """The server could not bind a port we picked: someone took it meanwhile."""


class ImapServer(GroupServer):
    """The base of :class:`~testsupport.dovecot.DovecotServer` and
    :class:`~testsupport.cyrus.CyrusServer` (see the module doc)."""

    host = "127.0.0.1"
    error: ClassVar[type[HarnessError]] = HarnessError

    root: Path
    ca_file: Path
    log_path: Path
    _users: dict[str, str]
    _runtime: Path | None
    _ports: tuple[int, int] | None
    _cleanup: weakref.finalize[Any, Any] | None

    # -- what a server does its own way ------------------------------------------------

    def _prepare(self) -> None:
        raise NotImplementedError

    def _write_config(self) -> None:
        raise NotImplementedError

    def _launch(self) -> None:
        raise NotImplementedError

    def _check_installed(self) -> None:
        """Raise ``error`` saying what to install, before anything is written."""

    # -- lifecycle ---------------------------------------------------------------------

    @property
    def imap_port(self) -> int:
        """The plain-text listener (STARTTLS offered), picked at the first start."""
        return self._require_ports()[0]

    @property
    def imaps_port(self) -> int:
        """The implicit-TLS listener, picked at the first start."""
        return self._require_ports()[1]

    @property
    def runtime_dir(self) -> Path | None:
        """The private directory of sockets, users and mail, once started."""
        return self._runtime

    @property
    def pid(self) -> int | None:
        """The master's pid (also its process group) while it runs."""
        return self._group.pid if self._group is not None and self.running else None

    def start(self) -> None:
        """Start the server and return once it greets IMAP clients.

        The ports are picked at the first start and kept by later starts, so
        clients can reconnect to a restarted server.
        """
        if self.running:
            return
        self._check_installed()
        self._prepare()
        for attempt in itertools.count(1):
            fresh_ports = self._ports is None
            if fresh_ports:
                imap_port, imaps_port = free_ports(2)
                self._ports = (imap_port, imaps_port)
            self._write_config()
            try:
                self._launch()
                return
            except PortTaken:
                # Another process grabbed a port between our probe and the server's bind.
                if not fresh_ports or attempt == 3:
                    raise
                self._ports = None

    def close(self) -> None:
        """Stop the server and delete its private directory (sockets, mail)."""
        self.stop()
        if self._cleanup is not None:
            self._cleanup()

    # -- users and accounts ------------------------------------------------------------

    def password(self, user: str) -> str:
        """The password of ``user``."""
        try:
            return self._users[user]
        except KeyError:
            raise self.error(f"no user {user!r} on this server") from None

    def account(
        self, user: str = "sms", *, tls: TlsMode = "implicit", **overrides: Any
    ) -> AccountConfig:
        """An :class:`AccountConfig` for ``user``: the right port for ``tls``, our CA,
        a 0600 password file and ``authenticate="off"`` (see below).  ``overrides``
        replace any other field."""
        port = self.imaps_port if tls == "implicit" else self.imap_port
        account = AccountConfig(
            name=user,
            host=self.host,
            port=port,
            username=user,
            tls=tls,
            ca_file=self.ca_file,
            password_file=self._password_file(user),
            connect_timeout=10.0,
            # The one place tests opt out of the authenticity check: most tests append
            # unsigned provider emails to exercise everything else.  Trust tests (and
            # benchmarks of it) pass authenticate="require" or "report" with real DKIM
            # signatures and a real DNS server (testsupport.dkim / .dns).
            authenticate="off",
        )
        return replace(account, **overrides)

    # -- mail ------------------------------------------------------------------------

    def append(self, user: str, folder: str, raw: bytes, flags: Iterable[str] = ()) -> int:
        """APPEND ``raw`` to ``folder`` (the server's name; created if missing), return its UID."""
        with self.session(user) as client:
            return append_message(client, folder, raw, flags, self.error)

    def folder_uids(self, user: str, folder: str = "INBOX") -> list[int]:
        """The UIDs in ``folder``, ascending."""
        with self.session(user) as client:
            client.select_folder(folder, readonly=True)
            return sorted(int(uid) for uid in client.search("ALL"))

    def flags(self, user: str, folder: str = "INBOX") -> dict[int, frozenset[str]]:
        """Each message's flags by UID, as strings such as ``"\\\\Seen"``."""
        with self.session(user) as client:
            client.select_folder(folder, readonly=True)
            fetched = client.get_flags(client.search("ALL"))
        return {
            int(uid): frozenset(flag_text(flag) for flag in flags if flag_text(flag) != "\\Recent")
            for uid, flags in fetched.items()
        }

    def message_count(self, user: str, folder: str = "INBOX") -> int:
        """How many messages ``folder`` holds."""
        with self.session(user) as client:
            status = client.folder_status(folder, [b"MESSAGES"])
        return int(status[b"MESSAGES"])

    def uidvalidity(self, user: str, folder: str = "INBOX") -> int:
        """The UIDVALIDITY of ``folder``."""
        with self.session(user) as client:
            status = client.folder_status(folder, [b"UIDVALIDITY"])
        return int(status[b"UIDVALIDITY"])

    @contextmanager
    def session(self, user: str) -> Iterator[Any]:
        """A logged-in :class:`imapclient.IMAPClient` on the plain port, logged out after."""
        with self._client(user, self.password(user)) as client:
            yield client

    def log_tail(self, lines: int = 30) -> str:
        """The last lines of the server's log, for error messages."""
        try:
            text = self.log_path.read_text(encoding="utf-8", errors="replace")
        except FileNotFoundError:
            return "(no log written)"
        return "\n".join(text.splitlines()[-lines:]) or "(empty)"

    # -- internals ----------------------------------------------------------------------

    @contextmanager
    def _client(self, user: str, password: str) -> Iterator[Any]:
        client = imapclient.IMAPClient(self.host, self.imap_port, ssl=False, timeout=30)
        # Without it every command whose CRLF goes in a second write waits ~40 ms
        # for Nagle and the server's delayed ACK.
        client.socket().setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            client.login(user, password)
            yield client
        finally:
            try:
                client.logout()
            except (imapclient.exceptions.IMAPClientError, OSError):
                client.shutdown()

    def _require_ports(self) -> tuple[int, int]:
        if self._ports is None:
            raise self.error("the server has not been started: its ports are not chosen yet")
        return self._ports

    def _password_file(self, user: str) -> Path:
        path = self.root / "secrets" / user
        path.parent.mkdir(mode=0o700, exist_ok=True)
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(descriptor, "w", encoding="utf-8") as file:
            file.write(self.password(user) + "\n")
        return path


def append_message(
    client: Any,
    folder: str,
    raw: bytes,
    flags: Iterable[str],
    error: type[HarnessError] = HarnessError,
) -> int:
    """APPEND over ``client`` to ``folder`` (created if missing); the new message's UID."""
    if folder.upper() != "INBOX" and not client.folder_exists(folder):
        client.create_folder(folder)
    response: bytes = client.append(folder, raw, flags=tuple(flags))
    match = _APPENDUID.search(response)
    if match is None:
        raise error(f"APPEND gave no APPENDUID: {response!r}")
    return int(match.group(1))


def flag_text(flag: bytes | str) -> str:
    """An IMAP flag as text (imapclient gives bytes)."""
    return flag.decode() if isinstance(flag, bytes) else flag
