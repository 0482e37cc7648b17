"""A locally started server's processes and ports: free ports, a greeting probe, and a
command run as a process group that can be ended whole; and :class:`Started`, what makes
every harness a ``with`` block."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
import weakref
from collections.abc import Sequence
from contextlib import ExitStack, suppress
from pathlib import Path
from types import TracebackType
from typing import Self

__all__ = ["ProcessGroup", "free_ports", "greets"]

_END_TIMEOUT = 10.0


def free_ports(count: int) -> tuple[int, ...]:
    """``count`` distinct TCP ports of 127.0.0.1 that were free a moment ago.

    The probes stay bound together so the kernel cannot hand out one port twice;
    the caller must still cope with a port taken between here and its own bind.
    """
    with ExitStack() as stack:
        probes = [stack.enter_context(socket.socket()) for _ in range(count)]
        for probe in probes:
            probe.bind(("127.0.0.1", 0))
        return tuple(int(probe.getsockname()[1]) for probe in probes)


def greets(host: str, port: int) -> bool:
    """True once a server on ``port`` sends an IMAP ``* OK`` greeting."""
    try:
        with socket.create_connection((host, port), timeout=2) as conn:
            return conn.makefile("rb").readline().startswith(b"* OK")
    except OSError:
        return False


class ProcessGroup:
    """``argv`` started in a session of its own, output appended to ``log_path``.

    Its pid is the process group of everything it forks, so :meth:`end` reaches
    every process, and no process is left when it returns.  If the owner forgets
    to end it, the group is killed when the interpreter exits.
    """

    def __init__(self, argv: Sequence[str], log_path: Path) -> None:
        with open(log_path, "ab") as log:
            # stdio detached: a server that keeps inherited descriptors would
            # otherwise hang a caller reading ours through a pipe.
            self._process = subprocess.Popen(
                list(argv),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.pid = self._process.pid
        self._reaper = weakref.finalize(self, _signal_group, self.pid, signal.SIGKILL)

    @property
    def running(self) -> bool:
        """True while the group leader (the command itself) is alive."""
        return self._process.poll() is None

    def end(self, signum: signal.Signals) -> None:
        """Send ``signum`` to the whole group; SIGKILL whatever outlives a grace period."""
        _signal_group(self.pid, signum)
        try:
            self._process.wait(timeout=_END_TIMEOUT)
        except subprocess.TimeoutExpired:
            _signal_group(self.pid, signal.SIGKILL)
            self._process.wait()
        deadline = time.monotonic() + _END_TIMEOUT
        while _group_alive(self.pid):
            if time.monotonic() > deadline:
                _signal_group(self.pid, signal.SIGKILL)
                deadline = time.monotonic() + _END_TIMEOUT
            time.sleep(0.01)
        self._reaper.detach()


def _signal_group(pgid: int, signum: int) -> None:
    with suppress(ProcessLookupError):
        os.killpg(pgid, signum)


def _group_alive(pgid: int) -> bool:
    """True while a process of the group runs.  Zombies do not count: once the leader
    is gone its children's reaper is init, which may take a second or two."""
    try:
        entries = [path for path in Path("/proc").iterdir() if path.name.isdigit()]
    except OSError:
        entries = []
    if not entries:  # no /proc: ask the kernel, zombies included
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return False
        return True
    for entry in entries:
        try:
            text = (entry / "stat").read_text()
        except OSError:
            continue  # exited meanwhile
        # The command name may hold spaces and parentheses: fields follow the last ")".
        state, _ppid, group = text[text.rindex(")") + 2 :].split()[:3]
        if int(group) == pgid and state != "Z":
            return True
    return False


class Started:
    """A harness used as ``with X(...) as x``: :meth:`start` on entering, :meth:`close`
    on leaving, whatever happened inside."""

    def start(self) -> None:
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


class GroupServer(Started):
    """A server run as one :class:`ProcessGroup`: stopping, killing or restarting it
    signals the whole group, so no process of it is left when the call returns
    (Dovecot's master alone waits up to 6 s for its children, and leaves IDLEing
    imap processes running after it exits)."""

    _group: ProcessGroup | None = None

    @property
    def running(self) -> bool:
        """True while the group leader (the server's master) is alive."""
        return self._group is not None and self._group.running

    def stop(self) -> None:
        """Shut down as an administrator would (SIGTERM to the group: clients get
        their goodbye, data is written)."""
        self._end(signal.SIGTERM)

    def kill(self) -> None:
        """SIGKILL the whole group at once, no shutdown, as a crash would."""
        self._end(signal.SIGKILL)

    def restart(self) -> None:
        """Stop and start again, on the same ports and with the same data."""
        self.stop()
        self.start()

    def _end(self, signum: signal.Signals) -> None:
        if self._group is not None:
            self._group.end(signum)
            self._group = None
