"""Fault hooks for the fault-injection suite; inert unless ``INBOUND_MAIL_FAULT`` is set.

``INBOUND_MAIL_FAULT=after-commit:3`` kills this process with SIGKILL the third
time it reaches the point named ``after-commit``.  Several points may be armed,
separated by commas.  The points where :func:`fault_point` kills:

``after-fetch``     IMAP bodies fetched, nothing committed yet
``after-commit``    a batch committed, its ``after`` action (seen/move/delete) not yet applied
``after-sink-2xx``  a sink accepted a batch, the outbox rows not yet marked delivered
``backfill-batch``  a backfill batch committed

and, through :func:`fault_email`, two that act only on an email that carries
the header ``X-Inbound-Mail-Fault: NAME`` (any other email passes, so a test can
crash or stall the parser on one chosen email, run after run):

``crash-parse``     kills: about to parse such an email, its in-flight row committed
``stall-parse``     hangs there instead, as a parse that never ends would

and the one where :func:`fault_stall` hangs the calling thread for good, the
way a wedged socket read would (the systemd watchdog test needs it):

``stall-idle``      an IMAP worker waiting in IDLE

When the variable is unset, :func:`fault_point` is one dictionary lookup on an
empty dict: nothing to pay in production.
"""

from __future__ import annotations

import os
import signal
import threading

__all__ = ["fault_email", "fault_point", "fault_stall"]


def _parse(spec: str) -> dict[str, int]:
    armed: dict[str, int] = {}
    for part in filter(None, (p.strip() for p in spec.split(","))):
        name, _, count = part.partition(":")
        armed[name] = int(count) if count.isdigit() else 1
    return armed


_ARMED = _parse(os.environ.get("INBOUND_MAIL_FAULT", ""))
_lock = threading.Lock()


def _reached(name: str) -> bool:
    if name not in _ARMED:
        return False
    with _lock:
        _ARMED[name] -= 1
        return _ARMED[name] <= 0


def fault_point(name: str) -> None:
    """Die here (SIGKILL, no cleanup) when ``name`` is armed and its count is reached."""
    if _reached(name):
        os.kill(os.getpid(), signal.SIGKILL)


def fault_stall(name: str) -> None:
    """Block the calling thread forever when ``name`` is armed and its count is reached."""
    if _reached(name):
        threading.Event().wait()


def fault_email(name: str, raw: bytes) -> None:
    """For emails carrying ``X-Inbound-Mail-Fault: <name>`` only: :func:`fault_stall`
    when ``name`` starts with ``stall``, else :func:`fault_point`."""
    if name in _ARMED and f"X-Inbound-Mail-Fault: {name}".encode() in raw:
        (fault_stall if name.startswith("stall") else fault_point)(name)
