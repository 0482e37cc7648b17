"""Processes and ports of a locally started server: free ports, readiness, process groups."""

from __future__ import annotations

import os
import signal
import socket
import time
from contextlib import ExitStack, suppress
from pathlib import Path

__all__ = ["free_ports", "greets", "signal_group", "wait_group_gone"]

_GONE_TIMEOUT = 10.0


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
    """True once the server sends its ``* OK`` greeting (auth is up, not just the socket)."""
    try:
        with socket.create_connection((host, port), timeout=2) as conn:
            return conn.makefile("rb").readline().startswith(b"* OK")
    except OSError:
        return False


def signal_group(pgid: int, signum: int) -> None:
    with suppress(ProcessLookupError):
        os.killpg(pgid, signum)


def wait_group_gone(pgid: int) -> None:
    """Wait until no live process of the group is left; SIGKILL stragglers after a while."""
    deadline = time.monotonic() + _GONE_TIMEOUT
    while group_alive(pgid):
        if time.monotonic() > deadline:
            signal_group(pgid, signal.SIGKILL)
            deadline = time.monotonic() + _GONE_TIMEOUT
        time.sleep(0.01)


def group_alive(pgid: int) -> bool:
    """True while a process of the group runs.  Zombies do not count: once the master
    is gone its children's reaper is init, which may take a second or two."""
    try:
        stats = [path for path in Path("/proc").iterdir() if path.name.isdigit()]
    except OSError:
        stats = []
    if not stats:
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return False
        return True
    for path in stats:
        try:
            text = (path / "stat").read_text()
        except OSError:
            continue  # exited meanwhile
        # The command name may hold spaces and parentheses: fields follow the last ")".
        state, _ppid, group = text[text.rindex(")") + 2 :].split()[:3]
        if int(group) == pgid and state != "Z":
            return True
    return False
