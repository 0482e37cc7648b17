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

import os
import re
import shutil
import subprocess
import tempfile
import time
import uuid
import weakref
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from types import MappingProxyType
from typing import Any

from . import HarnessError
from .certs import make_certificates
from .dovecot_conf import ServerIdentity, render_config
from .imap_server import ImapServer, PortTaken
from .mailbox import Mailbox
from .maildir import ensure_maildir, write_messages
from .process import ProcessGroup, greets

__all__ = ["DEFAULT_USERS", "DovecotError", "DovecotFactory", "DovecotServer", "Mailbox"]

DEFAULT_USERS: Mapping[str, str] = MappingProxyType({"sms": "secret"})
_START_TIMEOUT = 10.0
_DOVEADM_NOT_FOUND = 68  # EX_NOHOST, which doveadm uses for "not found"
_USER_NAME = re.compile(r"[A-Za-z0-9_@+-][A-Za-z0-9._@+-]*")


class DovecotError(HarnessError):
    """The test Dovecot could not be started, stopped or driven."""


class DovecotServer(ImapServer):
    """One private Dovecot instance; a context manager that starts and removes it."""

    error = DovecotError
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
        self._group: ProcessGroup | None = None
        self._cleanup: weakref.finalize[Any, DovecotServer] | None = None
        self.ca_file = self.root / "tls" / "ca.pem"

    # -- lifecycle ---------------------------------------------------------------

    def _check_installed(self) -> None:
        if not os.access(self.imap_binary, os.X_OK):
            raise DovecotError(
                f"Dovecot's IMAP server {self.imap_binary} is not installed: run "
                "scripts/ensure-deps.sh (apt-get install dovecot-imapd)"
            )

    # -- users and accounts --------------------------------------------------------

    def add_user(self, user: str, password: str) -> None:
        """Add (or change) a user; a running server sees it at the next login."""
        self._check_user(user, password)
        self._users[user] = password
        if self._runtime is not None:
            self._write_user(user)

    def new_mailbox(self, prefix: str = "user") -> Mailbox:
        """A new user with an empty mailbox, so a test can share the server yet stay isolated."""
        user = f"{prefix}-{uuid.uuid4().hex[:10]}"
        self.add_user(user, uuid.uuid4().hex)
        return Mailbox(self, user)

    # -- mail ------------------------------------------------------------------------

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

    # -- internals ----------------------------------------------------------------------

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
        self._group = ProcessGroup(argv, self.log_path)
        try:
            self._wait_ready(log_start)
        except BaseException:
            self.kill()
            raise

    def _wait_ready(self, log_start: int) -> None:
        assert self._group is not None
        deadline = time.monotonic() + _START_TIMEOUT
        while time.monotonic() < deadline:
            if not self._group.running:
                break
            # The master binds every listener before any process can greet.
            if greets(self.host, self.imap_port):
                return
            time.sleep(0.01)
        new_log = self.log_path.read_bytes()[log_start:].decode("utf-8", errors="replace")
        if "Address already in use" in new_log:
            raise _PortTaken(new_log)
        state = "did not answer" if self._group.running else "exited"
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


class _PortTaken(DovecotError, PortTaken):
    """Dovecot could not bind a port we picked: someone took it meanwhile."""


def _binary(name: str) -> str:
    found = shutil.which(name) or shutil.which(name, path="/usr/sbin:/usr/bin")
    if found is None:
        raise DovecotError(
            f"{name} is not installed: run scripts/ensure-deps.sh (apt-get install dovecot-imapd)"
        )
    return found
