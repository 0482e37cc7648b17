"""Folder names as the server spells them: the personal namespace (RFC 2342).

A server whose personal namespace has a prefix keeps every folder of the user
under it: Cyrus with Debian's ``altnamespace: no`` and Courier name them
``INBOX.Processed``, and refuse ``CREATE Processed``.  The config may say
``folders = ["Sub"]`` or ``after = "move:Processed"`` on any server, so every
configured name goes through :meth:`FolderNames.resolve` before it reaches the
server:

- ``INBOX`` (in any case) stays ``INBOX``: it is outside every namespace;
- a name that already starts with a namespace prefix (the personal one, or
  another user's or a shared one) is kept as it is;
- any other name gets the personal prefix: ``Processed`` -> ``INBOX.Processed``.

A server without the NAMESPACE capability, or with an empty personal prefix
(Dovecot's default, upstream Cyrus), keeps every name unchanged.  Sync, the
``after`` action, ``backfill`` and ``check`` all resolve through here, so the
folder they name in the database and in their messages is the server's.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from imapclient import IMAPClient

__all__ = ["FolderNames", "folder_names"]

_INBOX = "INBOX"


@dataclass(frozen=True, slots=True)
class FolderNames:
    """How configured folder names map onto one server's names."""

    prefix: str = ""
    """The personal namespace prefix (``"INBOX."``), empty when there is none."""
    separator: str | None = None
    """The personal namespace's hierarchy separator (``"."``, ``"/"``), if known."""
    other_prefixes: tuple[str, ...] = ()
    """Other users' and shared namespaces' prefixes: names under them are kept."""

    def resolve(self, name: str) -> str:
        """The server's name for the configured folder ``name``."""
        if name.upper() == _INBOX or not self.prefix:
            return name
        for prefix in (self.prefix, *self.other_prefixes):
            if prefix and _starts_with(name, prefix):
                return name
        return self.prefix + name

    def describe(self, name: str) -> str:
        """``'Processed' -> 'INBOX.Processed'`` or ``'INBOX'``, for messages."""
        resolved = self.resolve(name)
        return repr(name) if resolved == name else f"{name!r} -> {resolved!r}"


def folder_names(client: IMAPClient) -> FolderNames:
    """Ask the server for its namespaces (one NAMESPACE command), if it has any."""
    if not client.has_capability("NAMESPACE"):
        return FolderNames()
    namespaces = client.namespace()
    personal = _pairs(namespaces.personal)
    others = tuple(prefix for prefix, _sep in _pairs(namespaces.other) + _pairs(namespaces.shared))
    if not personal:
        return FolderNames(other_prefixes=others)
    # RFC 2342: the first personal namespace is the one new folders go in.
    prefix, separator = personal[0]
    return FolderNames(prefix=prefix, separator=separator, other_prefixes=others)


def _pairs(namespace: Sequence[Sequence[object]] | None) -> list[tuple[str, str | None]]:
    pairs: list[tuple[str, str | None]] = []
    for entry in namespace or ():
        if len(entry) < 2:
            continue
        prefix, separator = entry[0], entry[1]
        prefix = prefix.decode("utf-8", "replace") if isinstance(prefix, bytes) else str(prefix)
        sep = separator.decode("ascii", "replace") if isinstance(separator, bytes) else separator
        pairs.append((prefix, sep if isinstance(sep, str) else None))
    return pairs


def _starts_with(name: str, prefix: str) -> bool:
    # INBOX is case-insensitive (RFC 3501 5.1), so "inbox.Sub" is under "INBOX.".
    if prefix[: len(_INBOX)].upper() == _INBOX and name[: len(_INBOX)].upper() == _INBOX:
        return name[len(_INBOX) :].startswith(prefix[len(_INBOX) :])
    return name.startswith(prefix)
