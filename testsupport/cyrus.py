"""A private, throwaway Cyrus IMAP 3.6 server for the tests: a second real server.

Each :class:`CyrusServer` runs its own ``cyrmaster`` in the foreground, as our
child, with an ``imapd.conf`` and a ``cyrus.conf`` of its own (nothing from
``/etc``), on free ports of 127.0.0.1: a plain port that offers STARTTLS and an
implicit-TLS port, both with a certificate from a fresh test CA.  ``idled``
runs, so IDLE reports new mail at once (without it Cyrus polls once a minute).
Logins are SASL PLAIN/LOGIN against a private sasldb.  It offers what the tests
use of :class:`~testsupport.dovecot.DovecotServer`::

    with CyrusServer(tmp_path, layout="debian") as server:
        mailbox = server.new_mailbox("sms")        # a Mailbox, as with Dovecot
        mailbox.append(raw_email, folder=mailbox.folder("Archive"))   # INBOX.Archive

Two namespace layouts, because real servers ship both:

- ``"debian"``: Debian's ``imapd.conf`` (``altnamespace: no``,
  ``unixhierarchysep: no``): every folder is under INBOX, ``INBOX.Processed``;
  ``CREATE Processed`` is refused.
- ``"upstream"``: Cyrus 3's own defaults (``altnamespace: yes``,
  ``unixhierarchysep: yes``): ``Processed`` beside INBOX.

:meth:`CyrusServer.folder` turns a folder name into the server's own.

Debian's ``cyrus-imapd`` package, which holds ``imapd`` and ``idled``,
conflicts with ``dovecot-imapd``, so it is never installed:
``scripts/ensure-deps.sh`` installs ``cyrus-common`` (``cyrmaster`` and the
libraries), ``cyrus-admin`` and ``sasl2-bin`` (``saslpasswd2``), and unpacks
``cyrus-imapd``'s .deb into ``.cache/cyrus-imapd/`` of the repository
(``INBOUND_MAIL_CYRUS_IMAPD`` names another folder).

``root`` holds what a person may want to read: ``master.log`` (cyrmaster's
output; Cyrus itself logs to syslog), the CA (``tls/``) and the password
files of :meth:`CyrusServer.account` (``secrets/``).  Configuration, sockets,
the sasldb and the mail live in a short private directory under the system temp
dir (:attr:`CyrusServer.runtime_dir`) that the ``cyrus`` user, which Cyrus's
processes drop to when started as root, can reach; :meth:`close` removes it.
"""

from __future__ import annotations

import os
import pwd
import re
import shutil
import signal
import subprocess
import tempfile
import time
import uuid
import weakref
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager, suppress
from pathlib import Path
from types import MappingProxyType
from typing import Any, Literal, get_args

from . import HarnessError
from .certs import make_certificates
from .imap_server import ImapServer, PortTaken, append_message, flag_text
from .mailbox import Mailbox
from .process import ProcessGroup, greets

__all__ = [
    "DEFAULT_USERS",
    "CyrusError",
    "CyrusFactory",
    "CyrusLayout",
    "CyrusServer",
    "Mailbox",
    "cyrus_imapd_dir",
]

CyrusLayout = Literal["debian", "upstream"]
"""The namespace layout: Debian's (``INBOX.Sub``) or upstream Cyrus 3's (``Sub``)."""

DEFAULT_USERS: Mapping[str, str] = MappingProxyType({"sms": "secret"})
_START_TIMEOUT = 20.0
_CYRUS_USER = "cyrus"  # made by cyrus-common; root-started Cyrus drops to it
_ADMIN = "cyrusadmin"
_SERVERNAME = "localhost"  # also the sasldb realm that logins without a realm use
# Cyrus user names end up in mailbox names (user.NAME): no separators, no dots.
_USER_NAME = re.compile(r"[a-z0-9_][a-z0-9_-]*")
_REPO = Path(__file__).resolve().parents[1]
_INSTALL_HINT = (
    "run scripts/ensure-deps.sh: it installs cyrus-common, cyrus-admin and sasl2-bin "
    "and unpacks cyrus-imapd into .cache/cyrus-imapd (never apt-get install cyrus-imapd: "
    "it removes dovecot-imapd)"
)
_SYSTEM_BINARIES = {
    "cyrmaster": ("/usr/sbin/cyrmaster", "cyrus-common"),
    "saslpasswd2": ("/usr/sbin/saslpasswd2", "sasl2-bin"),
}


class CyrusError(HarnessError):
    """The test Cyrus could not be started, stopped or driven."""


def cyrus_imapd_dir() -> Path:
    """Where cyrus-imapd's .deb was unpacked (see the module doc)."""
    override = os.environ.get("INBOUND_MAIL_CYRUS_IMAPD")
    return Path(override) if override else _REPO / ".cache" / "cyrus-imapd"


class CyrusServer(ImapServer):
    """One private Cyrus instance; a context manager that starts and removes it.

    ``idle=False`` leaves ``idled`` out, as Debian's stock ``cyrus.conf`` does: IDLE is
    still offered, but imapd then looks for new mail only once a minute.
    """

    error = CyrusError

    def __init__(
        self,
        root: Path,
        *,
        layout: CyrusLayout = "debian",
        users: Mapping[str, str] = DEFAULT_USERS,
        idle: bool = True,
    ) -> None:
        if layout not in get_args(CyrusLayout):
            raise CyrusError(f"layout {layout!r} must be one of {get_args(CyrusLayout)}")
        self.root = Path(root).absolute()
        self.layout: CyrusLayout = layout
        self.idle = idle
        self.log_path = self.root / "master.log"
        self.ca_file = self.root / "tls" / "ca.pem"
        self._users: dict[str, str] = {}
        for user, password in users.items():
            self._check_user(user, password)
            self._users[user] = password
        self._admin_password = uuid.uuid4().hex
        self._runtime: Path | None = None
        self._ports: tuple[int, int] | None = None
        self._group: ProcessGroup | None = None
        self._cleanup: weakref.finalize[Any, CyrusServer] | None = None
        self._created: set[str] = set()  # users whose INBOX exists

    # -- namespace -----------------------------------------------------------------

    @property
    def separator(self) -> str:
        """The hierarchy separator the server shows clients."""
        return "/" if self.layout == "upstream" else "."

    @property
    def personal_prefix(self) -> str:
        """The personal namespace prefix of NAMESPACE: ``"INBOX."`` or ``""``."""
        return "" if self.layout == "upstream" else "INBOX."

    def folder(self, name: str) -> str:
        """The server's name of folder ``name`` (``"Processed"`` -> ``"INBOX.Processed"``)."""
        if name.upper() == "INBOX" or name.upper().startswith("INBOX" + self.separator):
            return name
        return self.personal_prefix + name

    # -- users and accounts --------------------------------------------------------

    def add_user(self, user: str, password: str) -> None:
        """Add (or change) a login; its INBOX is created once the server runs."""
        self._check_user(user, password)
        self._users[user] = password
        if self._runtime is not None:
            self._write_login(user, password)
        if self.running:
            self._ensure_inbox(user)

    def new_mailbox(self, prefix: str = "user") -> Mailbox:
        """A new user with an empty INBOX, so a test can share the server yet stay isolated."""
        user = f"{prefix.lower()}-{uuid.uuid4().hex[:10]}"
        self.add_user(user, uuid.uuid4().hex)
        return Mailbox(self, user)

    # -- mail ------------------------------------------------------------------------

    def deliver_files(self, user: str, folder: str, raws: Iterable[bytes]) -> None:
        """Load many messages at once (one session of APPENDs: Cyrus has no doveadm)."""
        with self.session(user) as client:
            for raw in raws:
                append_message(client, folder, raw, (), CyrusError)

    def create_folder(self, user: str, folder: str) -> None:
        """Create (and subscribe) ``folder`` for ``user``; an existing folder is fine."""
        with self.session(user) as client:
            if not client.folder_exists(folder):
                client.create_folder(folder)
                client.subscribe_folder(folder)

    def list_folders(self, user: str) -> list[str]:
        """Every folder of ``user``, by the server's names."""
        with self.session(user) as client:
            return sorted(str(name) for _flags, _sep, name in client.list_folders())

    # -- faults and administration ----------------------------------------------------

    def kick(self, user: str) -> None:
        """Drop every session of ``user``: its imapd processes end, clients see the
        connection close."""
        pids = self._session_pids(user)
        for pid in pids:
            with suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + 10
        while pids and time.monotonic() < deadline:
            pids = [pid for pid in pids if _alive(pid)]
            time.sleep(0.01)
        for pid in pids:
            with suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)

    def set_uidvalidity(self, user: str, folder: str, value: int) -> int:
        """Give ``folder`` a new UIDVALIDITY, as a server that rebuilt its mailbox would,
        keeping its messages (with their flags, under new UIDs); return the new value.

        Cyrus cannot be told a value: the folder is deleted and created again, which
        always gives a new one (``value`` is ignored; it is there for the same call as
        on Dovecot).  Deleting a folder deletes the folders under it (for INBOX on
        Cyrus: all the user's folders), so they are rebuilt with their messages too,
        and get new UIDVALIDITYs as well."""
        del value
        with self.session(user) as client:
            names = [str(name) for _flags, _sep, name in client.list_folders()]
            rebuilt = [
                name
                for name in names
                if folder.upper() == "INBOX"
                or name == folder
                or name.startswith(folder + self.separator)
            ]
            kept = {name: _messages(client, name) for name in rebuilt}
        with self._admin() as admin:
            top = self._admin_name(user, folder)
            # Cyrus admins may change any ACL; deleting needs the x right.
            admin.setacl(top, _ADMIN, "lrswipkxtecda")
            admin.delete_folder(top)
            admin.create_folder(top)  # with the owner's default ACL again
        with self.session(user) as client:
            for name, messages in kept.items():
                if not client.folder_exists(name):
                    client.create_folder(name)
                for raw, flags, when in messages:
                    client.append(name, raw, flags=flags, msg_time=when)
        return self.uidvalidity(user, folder)

    # -- internals ----------------------------------------------------------------------

    @contextmanager
    def _admin(self) -> Iterator[Any]:
        with self._client(_ADMIN, self._admin_password) as client:
            yield client

    def _admin_name(self, user: str, folder: str = "INBOX") -> str:
        """How an admin names ``user``'s ``folder``: ``user.NAME`` or ``user/NAME/Sub``."""
        sep = self.separator
        base = f"user{sep}{user}"
        if folder.upper() == "INBOX":
            return base
        inbox_prefix = "INBOX" + sep
        if folder.upper().startswith(inbox_prefix):
            folder = folder[len(inbox_prefix) :]
        return f"{base}{sep}{folder}"

    def _ensure_inbox(self, user: str) -> None:
        if user in self._created:
            return
        with self._admin() as admin:
            name = self._admin_name(user)
            if not admin.folder_exists(name):
                admin.create_folder(name)
        self._created.add(user)

    def _session_pids(self, user: str) -> list[int]:
        """The imapd processes serving ``user``, from Cyrus's proc files."""
        assert self._runtime is not None
        pids = []
        for entry in (self._runtime / "run" / "proc").glob("*"):
            try:
                fields = entry.read_text(encoding="utf-8", errors="replace").split("\t")
            except OSError:
                continue  # the session ended meanwhile
            if user in fields and entry.name.isdigit():
                pids.append(int(entry.name))
        return pids

    def _prepare(self) -> None:
        if self._runtime is not None:
            return
        for name, (binary, package) in _SYSTEM_BINARIES.items():
            if not os.access(binary, os.X_OK):
                raise CyrusError(f"{name} is missing (package {package}): {_INSTALL_HINT}")
        for name in ("imapd", "idled"):
            if not os.access(self._binary(name), os.X_OK):
                raise CyrusError(f"{self._binary(name)} is missing: {_INSTALL_HINT}")
        self.root.mkdir(parents=True, exist_ok=True)
        certs = make_certificates(self.root / "tls")
        runtime = Path(tempfile.mkdtemp(prefix="cyrus-"))
        self._cleanup = weakref.finalize(self, shutil.rmtree, runtime, ignore_errors=True)
        runtime.chmod(0o755)  # Cyrus's processes, as the cyrus user, walk this path
        for sub in (
            *(f"config/{d}" for d in ("db", "proc", "socket", "log", "msg", "user", "quota")),
            "config/lock",
            "spool/stage.",
            "run/proc",
            "run/lock",
            "run/socket",
            "sieve",
            "tls",
        ):
            (runtime / sub).mkdir(parents=True, exist_ok=True)
        shutil.copyfile(certs.cert_file, runtime / "tls" / "server.pem")
        shutil.copyfile(certs.key_file, runtime / "tls" / "server.key")
        (runtime / "tls" / "server.key").chmod(0o600)
        self._runtime = runtime
        self._write_login(_ADMIN, self._admin_password)
        for user, password in self._users.items():
            self._write_login(user, password)
        for path in (runtime, *runtime.rglob("*")):
            self._own(path)

    def _binary(self, name: str) -> Path:
        return cyrus_imapd_dir() / "usr" / "lib" / "cyrus" / "bin" / name

    def _write_config(self) -> None:
        assert self._runtime is not None and self._ports is not None
        runtime = self._runtime
        namespace = "yes" if self.layout == "upstream" else "no"
        imapd_conf = f"""\
# A private Cyrus of inbound-mail's tests ({self.layout} namespace layout).
configdirectory: {runtime}/config
defaultpartition: default
partition-default: {runtime}/spool
servername: {_SERVERNAME}
cyrus_user: {_cyrus_user()}
admins: {_ADMIN}
altnamespace: {namespace}
unixhierarchysep: {namespace}
sasl_pwcheck_method: auxprop
sasl_auxprop_plugin: sasldb
sasl_sasldb_path: {runtime}/sasldb2
sasl_mech_list: PLAIN LOGIN
allowplaintext: yes
tls_server_cert: {runtime}/tls/server.pem
tls_server_key: {runtime}/tls/server.key
proc_path: {runtime}/run/proc
mboxname_lockpath: {runtime}/run/lock
idlesocket: {runtime}/run/socket/idle
notifysocket: {runtime}/run/socket/notify
lmtpsocket: {runtime}/run/socket/lmtp
sievedir: {runtime}/sieve
syslog_prefix: inbound-mail-test-cyrus
"""
        imapd = self._binary("imapd")
        config = runtime / "imapd.conf"
        daemons = f'  idled cmd="{self._binary("idled")} -C {config}"\n' if self.idle else ""
        cyrus_conf = f"""\
START {{
}}
SERVICES {{
  imap cmd="{imapd} -C {config}" listen="{self.host}:{self.imap_port}" prefork=1
  imaps cmd="{imapd} -s -C {config}" listen="{self.host}:{self.imaps_port}" prefork=0
}}
EVENTS {{
}}
DAEMON {{
{daemons}}}
"""
        config.write_text(imapd_conf, encoding="utf-8")
        (runtime / "cyrus.conf").write_text(cyrus_conf, encoding="utf-8")

    def _launch(self) -> None:
        assert self._runtime is not None
        log_start = self.log_path.stat().st_size if self.log_path.exists() else 0
        argv = [
            _SYSTEM_BINARIES["cyrmaster"][0],
            "-C",
            str(self._runtime / "imapd.conf"),
            "-M",
            str(self._runtime / "cyrus.conf"),
            "-p",
            str(self._runtime / "run" / "master.pid"),
            "-D",  # foreground, output to our log
        ]
        self._group = ProcessGroup(argv, self.log_path)
        try:
            self._wait_ready(log_start)
            for user in self._users:
                self._ensure_inbox(user)
        except BaseException:
            self.kill()
            raise

    def _wait_ready(self, log_start: int) -> None:
        assert self._group is not None and self._runtime is not None
        idle_socket = self._runtime / "run" / "socket" / "idle"
        deadline = time.monotonic() + _START_TIMEOUT
        while time.monotonic() < deadline:
            if not self._group.running:
                break
            if (not self.idle or idle_socket.exists()) and greets(self.host, self.imap_port):
                return
            time.sleep(0.02)
        new_log = self.log_path.read_bytes()[log_start:].decode("utf-8", errors="replace")
        if "Address already in use" in new_log:
            raise _PortTaken(new_log)
        state = "did not answer" if self._group.running else "exited"
        raise CyrusError(
            f"cyrmaster {state} within {_START_TIMEOUT:g} s "
            f"(config {self._runtime}/imapd.conf); end of {self.log_path}:\n{self.log_tail()}"
        )

    def _write_login(self, user: str, password: str) -> None:
        assert self._runtime is not None
        sasldb = self._runtime / "sasldb2"
        argv = [_SYSTEM_BINARIES["saslpasswd2"][0], "-p", "-c", "-f", str(sasldb)]
        result = subprocess.run(
            [*argv, "-u", _SERVERNAME, user],
            input=password,
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        if result.returncode != 0:
            detail = (result.stderr or result.stdout).strip()
            raise CyrusError(f"saslpasswd2 for {user!r} exited {result.returncode}: {detail}")
        self._own(sasldb)

    @staticmethod
    def _own(path: Path) -> None:
        if os.geteuid() == 0:
            entry = pwd.getpwnam(_CYRUS_USER)
            os.chown(path, entry.pw_uid, entry.pw_gid, follow_symlinks=False)

    @staticmethod
    def _check_user(user: str, password: str) -> None:
        if not _USER_NAME.fullmatch(user) or user == _ADMIN:
            raise CyrusError(f"user name {user!r} must match {_USER_NAME.pattern}")
        if not password or any(ch in password for ch in "\r\n"):
            raise CyrusError(f"the password of {user!r} must be non-empty, without newlines")


CyrusFactory = Callable[..., CyrusServer]
"""A fixture that starts servers of one test: ``CyrusServer`` options in, a started server out."""


class _PortTaken(CyrusError, PortTaken):
    """cyrmaster could not bind a port we picked: someone took it meanwhile."""


def _cyrus_user() -> str:
    # As root cyrmaster drops to the cyrus user; anyone else runs Cyrus as themselves.
    if os.geteuid() == 0:
        return _CYRUS_USER
    return pwd.getpwuid(os.geteuid()).pw_name


def _messages(client: Any, folder: str) -> list[tuple[bytes, tuple[bytes, ...], Any]]:
    """Every message of ``folder``: its bytes, flags (less \\Recent) and INTERNALDATE."""
    client.select_folder(folder, readonly=True)
    uids = client.search("ALL")
    fetched = client.fetch(uids, ["FLAGS", "BODY.PEEK[]", "INTERNALDATE"]) if uids else {}
    client.unselect_folder()
    return [
        (
            fetched[uid][b"BODY[]"],
            tuple(f for f in fetched[uid][b"FLAGS"] if flag_text(f) != "\\Recent"),
            fetched[uid][b"INTERNALDATE"],
        )
        for uid in sorted(fetched)
    ]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True
