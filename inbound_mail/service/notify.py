"""The systemd notification protocol (``sd_notify``), spoken without libsystemd.

Under ``Type=notify`` systemd passes ``$NOTIFY_SOCKET``: a path, or an abstract
socket name written with a leading ``@``.  Each notification is one datagram of
``KEY=VALUE`` lines: ``READY=1``, ``STATUS=...``, ``WATCHDOG=1``,
``RELOADING=1``, ``STOPPING=1``.  Outside systemd the variable is unset and
:class:`Notifier` does nothing, so callers never need to ask.

``$WATCHDOG_USEC`` (with ``$WATCHDOG_PID``, when set, naming this process)
asks for a ``WATCHDOG=1`` at least that often; :func:`watchdog_interval`
reads it and callers ping at half of it, as sd_watchdog_enabled(3) advises.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from ..logs import log_event

__all__ = ["Health", "Notifier", "Supervisor", "watchdog_interval"]

_log = logging.getLogger("inbound_mail.notify")  # a log field: kept across the move


def _address(value: str) -> str | None:
    """The ``sendto`` address for ``$NOTIFY_SOCKET``; None for an unusable value."""
    if value.startswith("@"):
        return "\0" + value[1:]  # Linux abstract namespace
    if value.startswith("/"):
        return value
    return None  # vsock and relative paths: not something systemd gives a service


def watchdog_interval(environ: Mapping[str, str] | None = None) -> float | None:
    """Seconds from ``$WATCHDOG_USEC``, or None when no watchdog is asked of this process."""
    env = os.environ if environ is None else environ
    usec = env.get("WATCHDOG_USEC", "")
    pid = env.get("WATCHDOG_PID", "")
    if not usec.isdigit() or int(usec) == 0:
        return None
    if pid and (not pid.isdigit() or int(pid) != os.getpid()):
        return None  # inherited from a parent that was the one being watched
    return int(usec) / 1_000_000


class Notifier:
    """Sends notifications to systemd; a no-op when ``address`` is None."""

    def __init__(self, address: str | None) -> None:
        self.address = _address(address) if address else None
        self._socket: socket.socket | None = None
        self._lock = threading.Lock()
        self._warned = False

    @classmethod
    def from_environ(cls, environ: Mapping[str, str] | None = None) -> Notifier:
        """A notifier for ``$NOTIFY_SOCKET`` (disabled when it is unset)."""
        env = os.environ if environ is None else environ
        return cls(env.get("NOTIFY_SOCKET") or None)

    @property
    def enabled(self) -> bool:
        return self.address is not None

    def notify(self, **fields: object) -> bool:
        """Send one datagram of ``KEY=VALUE`` lines; True if it was sent.

        A failure is logged once and otherwise ignored: systemd going away must
        not take the daemon down with it.
        """
        if self.address is None:
            return False
        payload = "\n".join(f"{key}={_one_line(value)}" for key, value in fields.items())
        try:
            with self._lock:
                if self._socket is None:
                    self._socket = socket.socket(
                        socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC
                    )
                self._socket.sendto(payload.encode("utf-8"), self.address)
        except OSError as exc:
            if not self._warned:
                self._warned = True
                log_event(
                    _log,
                    logging.WARNING,
                    "notify.failed",
                    error=str(exc),
                    effect="systemd may consider the service hung",
                )
            return False
        return True

    def ready(self, status: str) -> bool:
        return self.notify(READY=1, STATUS=status)

    def status(self, status: str) -> bool:
        return self.notify(STATUS=status)

    def watchdog(self) -> bool:
        return self.notify(WATCHDOG=1)

    def reloading(self) -> bool:
        # MONOTONIC_USEC lets Type=notify-reload (systemd >= 253) match this to its SIGHUP.
        return self.notify(
            RELOADING=1, MONOTONIC_USEC=time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        )

    def stopping(self) -> bool:
        return self.notify(STOPPING=1, STATUS="stopping")

    def close(self) -> None:
        with self._lock:
            if self._socket is not None:
                self._socket.close()
                self._socket = None


def _one_line(value: object) -> str:
    return " ".join(str(value).split())


@dataclass(frozen=True, slots=True)
class Health:
    """What the daemon tells the supervisor on every tick."""

    ready: bool
    """Every account has connected or is retrying."""
    stalled: tuple[str, ...]
    """The loops that show no sign of life (empty when all is well)."""
    status: str
    """One line for ``systemctl status``."""


class Supervisor:
    """Turns the daemon's :class:`Health` into READY, STATUS and WATCHDOG notifications.

    READY=1 is sent once, when ``ready`` first holds.  WATCHDOG=1 goes out every
    half ``watchdog`` seconds, but only while nothing is stalled: a stuck loop
    silences it, and systemd restarts the service after ``WatchdogSec``.
    """

    def __init__(
        self,
        notifier: Notifier,
        *,
        watchdog: float | None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.notifier = notifier
        self._ping_every = watchdog / 2 if watchdog else None
        self.period = 0.5 if watchdog is None else min(0.5, watchdog / 4)
        """How often :meth:`tick` should be called, in seconds."""
        self._clock = clock
        self._next_ping = 0.0
        self._ready = False
        self._status: str | None = None
        self._stalled: tuple[str, ...] = ()

    def tick(self, health: Health) -> None:
        """Notify what changed since the last tick, and ping the watchdog if all is well."""
        self._log_transition(health.stalled)
        status = health.status
        if health.stalled:
            status = f"STALLED: {', '.join(health.stalled)}; {status}"
        if not self._ready and health.ready:
            self._ready = True
            self.notifier.ready(status)
        elif status != self._status:
            self.notifier.status(status)
        self._status = status
        if not health.stalled:
            self.keepalive()

    def keepalive(self) -> None:
        """Ping the watchdog if a ping is due (also while a reload waits for workers)."""
        now = self._clock()
        if self._ping_every is not None and now >= self._next_ping:
            self.notifier.watchdog()
            self._next_ping = now + self._ping_every

    def reloading(self) -> None:
        """A reload starts: READY=1 follows once the new workers have settled."""
        self.notifier.reloading()
        self._ready = False

    def _log_transition(self, stalled: tuple[str, ...]) -> None:
        if stalled and not self._stalled:
            effect = (
                "the watchdog pings stop, so systemd restarts the service"
                if self._ping_every
                else "restart the service: no watchdog will"
            )
            log_event(
                _log, logging.CRITICAL, "daemon.stalled", loops=", ".join(stalled), effect=effect
            )
        elif self._stalled and not stalled:
            log_event(_log, logging.WARNING, "daemon.recovered", loops=", ".join(self._stalled))
        self._stalled = stalled
