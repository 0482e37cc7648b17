"""A private, throwaway Dovecot IMAP server for the tests, the benchmarks and the demo.

Each :class:`DovecotServer` runs its own ``dovecot`` master with a whole config
of its own (nothing from ``/etc/dovecot``), on free ports of 127.0.0.1, with a
fresh certificate authority.  It works as root (CI) and as a normal user::

    with DovecotServer(tmp_path) as server:
        uid = server.append("sms", "INBOX", raw_email)
        account = server.account("sms")          # an AccountConfig that trusts server.ca_file

``root`` holds what a person may want to read: ``dovecot.conf``,
``dovecot.log``, the certificates (``tls/``) and the password files that
:meth:`DovecotServer.account` hands out (``secrets/``).  Sockets, Dovecot's
user list and the mail live in a short private directory under the system
temp dir (:attr:`~DovecotServer.runtime_dir`): Unix socket paths are limited
to 108 bytes, and as root Dovecot's unprivileged processes must be able to
walk to the mail, which pytest's 0700 temp dirs forbid.  :meth:`close`
removes it.
"""

from __future__ import annotations

import itertools
import os
import re
import shutil
import signal
import subprocess
import tempfile
import time
import uuid
import weakref
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from types import MappingProxyType, TracebackType
from typing import Any

import imapclient

from inbound_mail.config.model import AccountConfig, TlsMode

from . import HarnessError
from .certs import make_certificates
from .dovecot_conf import ServerIdentity, render_config
from .mailbox import Mailbox
from .maildir import ensure_maildir, write_messages
from .process import ProcessGroup, free_ports, greets

__all__ = ["DEFAULT_USERS", "DovecotError", "DovecotFactory", "DovecotServer", "Mailbox"]

DEFAULT_USERS: Mapping[str, str] = MappingProxyType({"sms": "secret"})
_START_TIMEOUT = 10.0
_DOVEADM_NOT_FOUND = 68  # EX_NOHOST, which doveadm uses for "not found"
_APPENDUID = re.compile(rb"APPENDUID \d+ (\d+)")
_USER_NAME = re.compile(r"[A-Za-z0-9_@+-][A-Za-z0-9._@+-]*")


class DovecotError(HarnessError):
    """The test Dovecot could not be started, stopped or driven."""


class DovecotServer:
    """One private Dovecot instance; a context manager that starts and removes it."""

    host = "127.0.0.1"
    # What the master starts for each IMAP login: in dovecot-imapd, while the master
    # is in dovecot-core, so Dovecot starts without it and fails at the first login.
    imap_binary = Path("/usr/lib/dovecot/imap")

    def __init__(
        self,
        root: Path,
        *,
        users: Mapping[str, str] = DEFAULT_USERS,
        idle: bool = True,
        vsz_limit_mb: int = 1024,
        extra_conf: str = "",
        oauth2_introspection: str | None = None,
    ) -> None:
        self.root = Path(root).absolute()
        self.idle = idle
        self.vsz_limit_mb = vsz_limit_mb
        self.extra_conf = extra_conf
        # With an introspection URL (``OAuthServer.introspection_url``), logins also take
        # SASL XOAUTH2 and OAUTHBEARER with a bearer token that Dovecot's oauth2 passdb
        # checks at that RFC 7662 endpoint; passwords keep working.
        self.oauth2_introspection = oauth2_introspection
        self.config_path = self.root / "dovecot.conf"
        self.log_path = self.root / "dovecot.log"
        self._users: dict[str, str] = {}
        for user, password in users.items():
            self._check_user(user, password)
            self._users[user] = password
        self._identity = ServerIdentity.current()
        self._runtime: Path | None = None
        self._ports: tuple[int, int] | None = None
        self._process: ProcessGroup | None = None
        self._cleanup: weakref.finalize[Any, DovecotServer] | None = None
        self.ca_file = self.root / "tls" / "ca.pem"

    # -- lifecycle ---------------------------------------------------------------

    @property
    def imap_port(self) -> int:
        """The plain-text listener (STARTTLS offered), picked at the first start."""
        return self._require_ports()[0]

    @property
    def imaps_port(self) -> int:
        """The implicit-TLS listener, picked at the first start."""
        return self._require_ports()[1]

    @property
    def running(self) -> bool:
        """True while the master process is alive."""
        return self._process is not None and self._process.running

    @property
    def runtime_dir(self) -> Path | None:
        """The private directory of sockets, users and mail, once started (see the module doc)."""
        return self._runtime

    @property
    def pid(self) -> int | None:
        """The master's pid (also its process group) while it runs."""
        return self._process.pid if self._process is not None and self.running else None

    def start(self) -> None:
        """Start the master and return once it greets IMAP clients (well under 2 s).

        The ports are picked at the first start and kept by later starts, so
        clients can reconnect to a restarted server.
        """
        if self.running:
            return
        if not os.access(self.imap_binary, os.X_OK):
            raise DovecotError(
                f"Dovecot's IMAP server {self.imap_binary} is not installed: run "
                "scripts/ensure-deps.sh (apt-get install dovecot-imapd)"
            )
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
            except _PortTaken:
                # Another process grabbed a port between our probe and Dovecot's bind.
                if not fresh_ports or attempt == 3:
                    raise
                self._ports = None

    def stop(self) -> None:
        """Shut down like an administrator would: every client gets ``* BYE``, and no
        process of the instance is left when this returns."""
        # SIGTERM to the whole group: the master alone waits up to 6 s for its
        # children and leaves IDLEing imap processes running after it exits.
        self._end(signal.SIGTERM)

    def kill(self) -> None:
        """SIGKILL the master and all its children at once, as a crash would."""
        self._end(signal.SIGKILL)

    def restart(self) -> None:
        """Stop and start again, on the same ports and with the same mail."""
        self.stop()
        self.start()

    def close(self) -> None:
        """Stop the server and delete its private directory (sockets, mail)."""
        self.stop()
        if self._cleanup is not None:
            self._cleanup()

    def __enter__(self) -> DovecotServer:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # -- users and accounts --------------------------------------------------------

    def add_user(self, user: str, password: str) -> None:
        """Add (or change) a user; a running server sees it at the next login."""
        self._check_user(user, password)
        self._users[user] = password
        if self._runtime is not None:
            self._write_user(user)

    def password(self, user: str) -> str:
        """The password of ``user``."""
        try:
            return self._users[user]
        except KeyError:
            raise DovecotError(f"no user {user!r} on this server") from None

    def new_mailbox(self, prefix: str = "user") -> Mailbox:
        """A new user with an empty mailbox, so a test can share the server yet stay isolated."""
        user = f"{prefix}-{uuid.uuid4().hex[:10]}"
        self.add_user(user, uuid.uuid4().hex)
        return Mailbox(self, user)

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
        """APPEND ``raw`` to ``folder`` (created if missing) and return its UID."""
        with self.session(user) as client:
            if folder.upper() != "INBOX" and not client.folder_exists(folder):
                client.create_folder(folder)
            response: bytes = client.append(folder, raw, flags=tuple(flags))
        match = _APPENDUID.search(response)
        if match is None:
            raise DovecotError(f"APPEND gave no APPENDUID: {response!r}")
        return int(match.group(1))

    def deliver_files(self, user: str, folder: str, raws: Iterable[bytes]) -> None:
        """Bulk-load messages by writing Maildir files directly, then let Dovecot index them.

        Far faster than APPEND for thousands of messages.  The messages arrive
        as new mail, without flags, in the order given.
        """
        self.password(user)  # rejects unknown users
        if self._runtime is None:
            raise DovecotError("start the server once before delivering mail")
        home = self._runtime / "mail" / user
        write_messages(ensure_maildir(home / "Maildir", folder, self._own), raws, self._own)
        self.doveadm("mailbox", "status", "-u", user, "messages", folder)

    def folder(self, name: str) -> str:
        """The server's name of folder ``name``: the same, as the personal namespace has
        no prefix here (unlike Debian's Cyrus, see ``cyrus.py``)."""
        return name

    def list_folders(self, user: str) -> list[str]:
        """Every folder of ``user``."""
        with self.session(user) as client:
            return sorted(str(name) for _flags, _sep, name in client.list_folders())

    def create_folder(self, user: str, folder: str) -> None:
        """Create (and subscribe) ``folder`` for ``user``; an existing folder is fine."""
        with self.session(user) as client:
            if not client.folder_exists(folder):
                client.create_folder(folder)
                client.subscribe_folder(folder)

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
            int(uid): frozenset(_text(flag) for flag in flags if _text(flag) != "\\Recent")
            for uid, flags in fetched.items()
        }

    def message_count(self, user: str, folder: str = "INBOX") -> int:
        """How many messages ``folder`` holds."""
        with self.session(user) as client:
            status = client.folder_status(folder, [b"MESSAGES"])
        return int(status[b"MESSAGES"])

    @contextmanager
    def session(self, user: str) -> Iterator[Any]:
        """A logged-in :class:`imapclient.IMAPClient` on the plain port, logged out after."""
        client = imapclient.IMAPClient(self.host, self.imap_port, ssl=False, timeout=30)
        try:
            client.login(user, self.password(user))
            yield client
        finally:
            try:
                client.logout()
            except (imapclient.exceptions.IMAPClientError, OSError):
                client.shutdown()

    # -- faults and administration ----------------------------------------------------

    def kick(self, user: str) -> None:
        """Drop every session of ``user``: clients see ``* BYE`` and a closed connection."""
        result = self.doveadm("kick", user, check=False)
        if result.returncode not in (0, _DOVEADM_NOT_FOUND):  # nobody was connected
            raise DovecotError(f"doveadm kick {user} exited {result.returncode}: {result.stderr}")

    def set_uidvalidity(self, user: str, folder: str, value: int) -> int:
        """Give ``folder`` the UIDVALIDITY ``value`` (returned), as a server that rebuilt
        its index would."""
        self.doveadm("mailbox", "update", "-u", user, "--uid-validity", str(value), folder)
        return value

    def doveadm(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        """Run ``doveadm`` against this instance; raise :class:`DovecotError` if it fails."""
        argv = [_binary("doveadm"), "-c", str(self.config_path), *args]
        result = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)
        if check and result.returncode != 0:
            detail = (result.stderr or result.stdout).strip()
            raise DovecotError(f"doveadm {' '.join(args)} exited {result.returncode}: {detail}")
        return result

    def log_tail(self, lines: int = 30) -> str:
        """The last lines of the Dovecot log, for error messages."""
        try:
            text = self.log_path.read_text(encoding="utf-8", errors="replace")
        except FileNotFoundError:
            return "(no log written)"
        return "\n".join(text.splitlines()[-lines:])

    # -- internals ----------------------------------------------------------------------

    def _require_ports(self) -> tuple[int, int]:
        if self._ports is None:
            raise DovecotError("the server has not been started: its ports are not chosen yet")
        return self._ports

    def _end(self, signum: signal.Signals) -> None:
        if self._process is not None:
            self._process.end(signum)
            self._process = None

    def _prepare(self) -> None:
        if self._runtime is not None:
            return
        self.root.mkdir(parents=True, exist_ok=True)
        make_certificates(self.root / "tls")
        runtime = Path(tempfile.mkdtemp(prefix="dovecot-"))
        self._cleanup = weakref.finalize(self, shutil.rmtree, runtime, ignore_errors=True)
        # Dovecot's unprivileged processes (auth, imap as the mail user) walk this path.
        runtime.chmod(0o755)
        for sub, mode in (("run", 0o755), ("state", 0o755), ("users", 0o755), ("mail", 0o700)):
            (runtime / sub).mkdir()
            (runtime / sub).chmod(mode)  # whatever the umask
        self._own(runtime / "mail")
        self._runtime = runtime
        for user in self._users:
            self._write_user(user)

    def _write_config(self) -> None:
        assert self._runtime is not None and self._ports is not None
        text = render_config(
            instance=f"inbound-mail-test-{os.getpid()}-{self._runtime.name}",
            runtime=self._runtime,
            log_path=self.log_path,
            tls_dir=self.root / "tls",
            identity=self._identity,
            ports=self._ports,
            idle=self.idle,
            vsz_limit_mb=self.vsz_limit_mb,
            extra_conf=self._oauth2_conf() + self.extra_conf,
        )
        self.config_path.write_text(text, encoding="utf-8")

    def _oauth2_conf(self) -> str:
        if not self.oauth2_introspection:
            return ""
        # Dovecot 2.3's oauth2 passdb: POST token=... to the introspection URL (its
        # userinfo carries the client's credentials, sent as Basic auth).
        args = self.root / "dovecot-oauth2.conf.ext"
        args.write_text(
            "introspection_mode = post\n"
            f"introspection_url = {self.oauth2_introspection}\n"
            "force_introspection = yes\n"
            "username_attribute = username\n"
            "active_attribute = active\n"
            "active_value = true\n",
            encoding="utf-8",
        )
        args.chmod(0o644)
        return (
            "auth_mechanisms = plain login oauthbearer xoauth2\n"
            "passdb {\n"
            "  driver = oauth2\n"
            "  mechanisms = xoauth2 oauthbearer\n"
            f"  args = {args}\n"
            "}\n"
        )

    def _launch(self) -> None:
        log_start = self.log_path.stat().st_size if self.log_path.exists() else 0
        # -F keeps the master in the foreground, as our child.
        argv = [_binary("dovecot"), "-F", "-c", str(self.config_path)]
        self._process = ProcessGroup(argv, self.log_path)
        try:
            self._wait_ready(log_start)
        except BaseException:
            self.kill()
            raise

    def _wait_ready(self, log_start: int) -> None:
        assert self._process is not None
        deadline = time.monotonic() + _START_TIMEOUT
        while time.monotonic() < deadline:
            if not self._process.running:
                break
            # The master binds every listener before any process can greet.
            if greets(self.host, self.imap_port):
                return
            time.sleep(0.01)
        new_log = self.log_path.read_bytes()[log_start:].decode("utf-8", errors="replace")
        if "Address already in use" in new_log:
            raise _PortTaken(new_log)
        state = "did not answer" if self._process.running else "exited"
        raise DovecotError(
            f"dovecot {state} within {_START_TIMEOUT:g} s "
            f"(config {self.config_path}); end of {self.log_path}:\n{self.log_tail()}"
        )

    def _write_user(self, user: str) -> None:
        assert self._runtime is not None
        path = self._runtime / "users" / user
        staged = path.with_name(f".{user}.new")
        staged.write_text(f"{user}:{{PLAIN}}{self._users[user]}::::::\n", encoding="utf-8")
        staged.chmod(0o644)  # read by the auth process, which runs as the dovecot user
        staged.replace(path)

    def _password_file(self, user: str) -> Path:
        path = self.root / "secrets" / user
        path.parent.mkdir(mode=0o700, exist_ok=True)
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(descriptor, "w", encoding="utf-8") as file:
            file.write(self.password(user) + "\n")
        return path

    def _own(self, path: Path) -> None:
        if os.geteuid() == 0:
            os.chown(path, self._identity.uid, self._identity.gid)

    @staticmethod
    def _check_user(user: str, password: str) -> None:
        # The user names a file; neither may break a passwd-file line.
        if not _USER_NAME.fullmatch(user):
            raise DovecotError(f"user name {user!r} must match {_USER_NAME.pattern}")
        if not password or any(ch in password for ch in ":\r\n"):
            raise DovecotError(f"the password of {user!r} must be non-empty, without : or newlines")


DovecotFactory = Callable[..., DovecotServer]
"""The ``fresh_dovecot`` fixture: ``DovecotServer`` options in, a started server out."""


class _PortTaken(DovecotError):
    """Dovecot could not bind a port we picked: someone took it meanwhile."""


def _binary(name: str) -> str:
    found = shutil.which(name) or shutil.which(name, path="/usr/sbin:/usr/bin")
    if found is None:
        raise DovecotError(
            f"{name} is not installed: run scripts/ensure-deps.sh (apt-get install dovecot-imapd)"
        )
    return found


def _text(flag: bytes | str) -> str:
    return flag.decode() if isinstance(flag, bytes) else flag
