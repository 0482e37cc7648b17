"""One user of a shared test server (Dovecot or Cyrus), so that tests share a server yet
stay isolated."""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from contextlib import AbstractContextManager
    from pathlib import Path

    from inbound_mail.config.model import AccountConfig, TlsMode

__all__ = ["MailServer", "Mailbox"]


class MailServer(Protocol):
    """What the test servers (``DovecotServer``, ``CyrusServer``) share: a test written
    against it runs on either.  Folder arguments are the server's own names
    (see :meth:`folder`)."""

    host: str
    root: Path
    ca_file: Path

    @property
    def imap_port(self) -> int: ...
    @property
    def imaps_port(self) -> int: ...
    @property
    def runtime_dir(self) -> Path | None: ...
    def session(self, user: str) -> AbstractContextManager[Any]:
        """A logged-in ``imapclient.IMAPClient`` on the plain port, logged out after."""
        ...

    def folder(self, name: str) -> str:
        """The server's name of folder ``name``: ``Processed`` may be ``INBOX.Processed``."""
        ...

    def new_mailbox(self, prefix: str = "user") -> Mailbox: ...
    def start(self) -> None: ...
    def password(self, user: str) -> str: ...
    def account(
        self, user: str = "sms", *, tls: TlsMode = "implicit", **overrides: Any
    ) -> AccountConfig: ...
    def append(self, user: str, folder: str, raw: bytes, flags: Iterable[str] = ()) -> int: ...
    def deliver_files(self, user: str, folder: str, raws: Iterable[bytes]) -> None: ...
    def create_folder(self, user: str, folder: str) -> None: ...
    def list_folders(self, user: str) -> list[str]: ...
    def folder_uids(self, user: str, folder: str = "INBOX") -> list[int]: ...
    def flags(self, user: str, folder: str = "INBOX") -> dict[int, frozenset[str]]: ...
    def message_count(self, user: str, folder: str = "INBOX") -> int: ...
    def set_uidvalidity(self, user: str, folder: str, value: int) -> int: ...
    def kick(self, user: str) -> None: ...


class Mailbox:
    """The :class:`MailServer` helpers with the user filled in; folders default to INBOX.
    Made by ``DovecotServer.new_mailbox()`` or ``CyrusServer.new_mailbox()``."""

    def __init__(self, server: MailServer, user: str) -> None:
        self.server = server
        self.user = user

    @property
    def password(self) -> str:
        return self.server.password(self.user)

    def account(self, *, tls: TlsMode = "implicit", **overrides: Any) -> AccountConfig:
        """An account config for this user; see ``DovecotServer.account``."""
        return self.server.account(self.user, tls=tls, **overrides)

    def append(self, raw: bytes, folder: str = "INBOX", flags: Iterable[str] = ()) -> int:
        return self.server.append(self.user, folder, raw, flags)

    def deliver_files(self, raws: Iterable[bytes], folder: str = "INBOX") -> None:
        self.server.deliver_files(self.user, folder, raws)

    def folder(self, name: str) -> str:
        """The server's name of folder ``name`` (``INBOX.Processed`` on Debian's Cyrus)."""
        return self.server.folder(name)

    def folders(self) -> list[str]:
        """Every folder of this user, by the server's names."""
        return self.server.list_folders(self.user)

    def create_folder(self, folder: str) -> None:
        self.server.create_folder(self.user, folder)

    def uids(self, folder: str = "INBOX") -> list[int]:
        return self.server.folder_uids(self.user, folder)

    def flags(self, folder: str = "INBOX") -> dict[int, frozenset[str]]:
        return self.server.flags(self.user, folder)

    def message_count(self, folder: str = "INBOX") -> int:
        return self.server.message_count(self.user, folder)

    def set_uidvalidity(self, value: int, folder: str = "INBOX") -> int:
        """Give ``folder`` a new UIDVALIDITY and return it: ``value`` where the server can
        be told one (Dovecot), another new one where it cannot (Cyrus)."""
        return self.server.set_uidvalidity(self.user, folder, value)

    def kick(self) -> None:
        self.server.kick(self.user)
