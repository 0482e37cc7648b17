"""The ``jsonl`` sink: one JSON object a line, appended to a file or written to stdout.

Each line is ``record.to_dict()`` (UTF-8, non-ASCII kept readable).  ``deliver``
writes the line with one ``write(2)`` on an ``O_APPEND`` descriptor, so
concurrent writers never interleave inside a line; ``flush`` fsyncs once per
batch, before the batch is marked delivered.  A new file is created with mode
0600: the lines carry phone numbers and message texts, as private as the
database itself (also 0600).  An existing file keeps its mode, so an operator
or logrotate's ``create 0640 ...`` can choose otherwise.

For logrotate, :meth:`JsonlSink.reopen` (called by the daemon on SIGHUP)
closes the file and opens ``path`` again, which picks up a renamed-away file's
successor; ``copytruncate`` is not needed.

A symlink at ``path`` is followed; a dangling one is a temporary failure
("a symbolic link to a missing file"), retried with the sink's backoff.
"""

from __future__ import annotations

import errno
import os
import threading
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import TemporaryDeliveryError
from . import SinkOptions, record_json

if TYPE_CHECKING:
    from ..config.model import SinkConfig
    from ..models import SmsRecord
    from . import DeliveryContext

__all__ = ["FILE_MODE", "JsonlSink"]

FILE_MODE = 0o600
STDOUT = "-"
STDOUT_FD = 1  # the descriptor, not sys.stdout: nothing else buffers these lines
# fsync on a pipe, a tty or /dev/null fails with one of these: nothing to make durable.
_NOT_SYNCABLE = frozenset({errno.EINVAL, errno.ENOTSUP, errno.EROFS})
_OPEN_TRIES = 3  # open, else create: retried when another process races us


class JsonlSink:
    """Appends records to ``path`` (``"-"``: standard output), one JSON object a line."""

    def __init__(self, name: str, path: str | Path) -> None:
        self.name = name
        self.path = str(path)
        # deliver() may run in several threads (parallel > 1) and reopen() in a
        # signal handler, which can interrupt this very thread: a reentrant lock.
        self._lock = threading.RLock()
        self._deferred: TemporaryDeliveryError | None = None
        self._fd: int | None = None
        self._dirty = False
        self._created = False

    @classmethod
    def from_config(cls, config: SinkConfig) -> JsonlSink:
        """Build from ``[[sinks]]`` options: ``path`` (relative to the config file, or ``"-"``)."""
        opts = SinkOptions(config)
        raw = opts.required_str("path")
        path: str | Path = raw if raw == STDOUT else opts.path("path")
        opts.finish()
        return cls(config.name, path)

    def __repr__(self) -> str:
        return f"JsonlSink({self.name!r}, {self.path!r})"

    def deliver(self, record: SmsRecord, context: DeliveryContext) -> str | None:
        """Append one line; it is durable only after :meth:`flush`."""
        line = (record_json(record) + "\n").encode("utf-8")
        with self._lock:
            fd = self._open()
            try:
                _write_all(fd, line)
            except OSError as exc:
                raise TemporaryDeliveryError(f"cannot write to {self.path}: {exc}") from exc
            self._dirty = True
        return None

    def flush(self) -> None:
        """fsync what was written since the last flush (and, once, the new file's directory)."""
        with self._lock:
            error, self._deferred = self._deferred, None
            if error is not None:  # the lines went to a file reopen() could not sync
                raise error
            if self._fd is not None and self._dirty:
                self._sync(self._fd)

    def reopen(self) -> None:
        """Close ``path``, to be opened again by the next write: call after logrotate
        renamed the file (SIGHUP).  Never raises: a failed sync of the old file
        makes the next :meth:`flush` fail, so that batch is retried."""
        with self._lock:
            if self.path == STDOUT:
                return
            try:
                self._release()
            except TemporaryDeliveryError as exc:
                self._deferred = exc

    def close(self) -> None:
        """Flush and close the file (standard output stays open)."""
        with self._lock:
            self._release()

    def _release(self) -> None:
        fd, self._fd = self._fd, None
        if fd is None:
            return
        try:
            if self._dirty:
                self._sync(fd)
        finally:
            if fd != STDOUT_FD:
                os.close(fd)

    def _open(self) -> int:
        if self._fd is not None:
            return self._fd
        if self.path == STDOUT:
            self._fd = STDOUT_FD
            return self._fd
        try:
            self._fd, self._created = _open_append(self.path)
        except OSError as exc:
            raise TemporaryDeliveryError(f"cannot open {self.path}: {exc}") from exc
        return self._fd

    def _sync(self, fd: int) -> None:
        try:
            os.fsync(fd)
            if self._created:
                # A new file's directory entry must be durable too.
                _fsync_dir(os.path.dirname(os.path.abspath(self.path)))
                self._created = False
        except OSError as exc:
            if exc.errno not in _NOT_SYNCABLE:
                raise TemporaryDeliveryError(f"cannot fsync {self.path}: {exc}") from exc
        self._dirty = False


def _open_append(path: str) -> tuple[int, bool]:
    """Open for appending; create with FILE_MODE if missing.  Returns (fd, created).

    A symlink to an existing file is followed.  A dangling one fails both opens
    (missing, yet existing): an error, so the worker backs off instead of spinning.
    """
    flags = os.O_WRONLY | os.O_APPEND | os.O_CLOEXEC
    for _ in range(_OPEN_TRIES):
        try:
            return os.open(path, flags), False
        except FileNotFoundError:
            pass
        try:
            return os.open(path, flags | os.O_CREAT | os.O_EXCL, FILE_MODE), True
        except FileExistsError:
            continue  # another process created it between the two calls
    if os.path.islink(path) and not os.path.exists(path):
        raise OSError(
            errno.ENOENT,
            f"a symbolic link to a missing file ({os.readlink(path)}): "
            "create its target or remove the link",
        )
    raise OSError(errno.EAGAIN, "created and removed over and over by another process")


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


def _fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
