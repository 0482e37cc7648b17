"""Writing messages straight into a Maildir++ tree, for bulk loads faster than APPEND."""

from __future__ import annotations

import itertools
import os
import time
from collections.abc import Callable, Iterable
from pathlib import Path

__all__ = ["ensure_maildir", "write_messages"]

_SEQUENCE = itertools.count()


def ensure_maildir(maildir: Path, folder: str, own: Callable[[Path], None]) -> Path:
    """The directory of ``folder`` under ``maildir`` (``~/Maildir``), created if missing.

    Dovecot's Maildir++ layout: INBOX is ``maildir`` itself, any other folder
    is ``maildir/.NAME`` marked by a ``maildirfolder`` file.  ``own`` gives each
    new entry to the mail user.
    """
    path = maildir if folder.upper() == "INBOX" else maildir / f".{folder}"
    for directory in (maildir.parent, maildir, path, path / "cur", path / "new", path / "tmp"):
        if not directory.is_dir():
            directory.mkdir(mode=0o700)
            own(directory)
    marker = path / "maildirfolder"
    if path != maildir and not marker.exists():
        marker.touch(mode=0o600)
        own(marker)
    return path


def write_messages(path: Path, raws: Iterable[bytes], own: Callable[[Path], None]) -> int:
    """Deliver each message as new mail in ``path``; return how many were written."""
    stamp = f"{int(time.time())}.P{os.getpid()}"
    count = 0
    for raw in raws:
        # Zero-padded: Dovecot gives new mail its UIDs in name order ("Q10000" < "Q9999").
        name = f"{stamp}Q{next(_SEQUENCE):012d}.inbound-mail-test"
        staged = path / "tmp" / name
        staged.write_bytes(raw)
        own(staged)
        # Into new/ only once complete, as Maildir requires: a reader never sees half a file.
        staged.rename(path / "new" / name)
        count += 1
    return count
