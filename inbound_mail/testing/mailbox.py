"""One user of a shared test Dovecot, so that tests share a server yet stay isolated."""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ..config import AccountConfig, TlsMode
    from .dovecot import DovecotServer

__all__ = ["Mailbox"]


class Mailbox:
    """The :class:`~inbound_mail.testing.dovecot.DovecotServer` helpers with the user filled
    in; folders default to INBOX.  Made by ``DovecotServer.new_mailbox()``."""

    def __init__(self, server: DovecotServer, user: str) -> None:
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

    def create_folder(self, folder: str) -> None:
        self.server.create_folder(self.user, folder)

    def uids(self, folder: str = "INBOX") -> list[int]:
        return self.server.folder_uids(self.user, folder)

    def flags(self, folder: str = "INBOX") -> dict[int, frozenset[str]]:
        return self.server.flags(self.user, folder)

    def message_count(self, folder: str = "INBOX") -> int:
        return self.server.message_count(self.user, folder)

    def set_uidvalidity(self, value: int, folder: str = "INBOX") -> None:
        self.server.set_uidvalidity(self.user, folder, value)

    def kick(self) -> None:
        self.server.kick(self.user)
