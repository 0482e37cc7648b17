"""The daemon lock: one inbound-mail daemon per database."""

from __future__ import annotations

import errno
import fcntl
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from ..errors import StoreError, StoreLockedError
from .schema import check_private_file

__all__ = ["daemon_lock", "take_lock"]


@contextmanager
def daemon_lock(db_path: str | Path) -> Iterator[None]:
    """Hold the exclusive, non-blocking lock ``<db>.lock`` (created 0600) for the
    ``with`` block, or raise :class:`StoreLockedError` naming the holder's pid.

    ``flock`` locks die with their process, so a crashed daemon never leaves a
    stale lock; the file itself stays, holding the last holder's pid.  A symlink
    there, or a file of another user or open to others, is refused.
    """
    fd = take_lock(Path(db_path))
    try:
        yield
    finally:
        os.close(fd)


def take_lock(db_path: Path) -> int:
    lock_path = f"{db_path}.lock"
    try:
        # O_NOFOLLOW: a symlink planted there would have its target truncated below.
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise StoreError(
                f"the lock file {lock_path} is a symbolic link; refusing to follow it: remove it"
            ) from None
        raise StoreError(f"cannot open the lock file {lock_path}: {exc.strerror}") from exc
    try:
        # On the open file, so a swap between check and use cannot fool it.
        check_private_file(os.fstat(fd), lock_path, f"the lock file {lock_path}")
    except StoreError:
        os.close(fd)
        raise
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        holder = os.pread(fd, 32, 0).decode("ascii", "replace").strip() or "unknown"
        os.close(fd)
        raise StoreLockedError(
            f"another inbound-mail daemon (pid {holder}) is running on {db_path}; stop it first"
        ) from exc
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    except OSError as exc:  # a full disk, say: say so instead of crashing
        os.close(fd)
        raise StoreError(f"cannot write the lock file {lock_path}: {exc.strerror}") from exc
    return fd
