"""Applying the ``after`` action to stored mail: mark seen, move, or delete.

Called only after the batch is committed.  Every action is idempotent on the
server's side (a flag set twice, a UID already gone) so a crash between the
commit and the acknowledgement only means it is applied again on the next pass.

An acknowledgement the server refuses (a ``move:`` target it will not create,
a read-only mailbox, a quota) never stops new mail: the acks stay owed in the
database and :class:`AckRetries` says when the folder's owed acks may be tried
again, with exponential backoff per folder, so that a pass neither fails nor
repeats a refused command every time.  The worker shows what is owed, and why,
in its health (``status``, metrics).
"""

from __future__ import annotations

import contextlib
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

from imapclient import IMAPClient
from imapclient.exceptions import CapabilityError

from ...store.rows import PendingAck

__all__ = ["AckFailure", "AckRetries", "apply_acks"]

_SEEN = b"\\Seen"
_DELETED = b"\\Deleted"
ACK_RETRY_BASE = 10.0
ACK_RETRY_CAP = 300.0


def apply_acks(
    client: IMAPClient,
    folder: str,
    acks: Sequence[PendingAck],
    resolve: Callable[[str], str] = str,
) -> None:
    """Apply every ack to the currently selected ``folder`` (selected read-write).

    ``resolve`` maps a ``move:`` target onto the server's name for it (see
    :mod:`inbound_mail.sources.imap.namespace`): it is applied now, not when the ack
    was stored, so acks owed under an older config or version resolve too.
    """
    by_action: dict[str, list[int]] = defaultdict(list)
    for ack in acks:
        by_action[ack.action].append(ack.uid)
    for action, uids in by_action.items():
        if action == "seen":
            client.add_flags(uids, [_SEEN], silent=True)
        elif action == "delete":
            _expunge(client, uids)
        elif action.startswith("move:"):
            _move(client, uids, resolve(action.removeprefix("move:")))


@dataclass(frozen=True, slots=True)
class AckFailure:
    """The last refusal of one folder's acknowledgements."""

    folder: str
    action: str
    answer: str
    failures: int
    retry_at: float  # time.monotonic()
    owed: int


class AckRetries:
    """When each folder's refused acknowledgements may be tried again.

    Owned by the worker, so the schedule survives the reconnects; read by the
    heartbeat and the metrics from other threads (each read is one attribute).
    """

    def __init__(
        self,
        delay: Callable[[int], float] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._delay = delay or _plain_backoff
        self._clock = clock
        self._failed: dict[str, AckFailure] = {}
        self.failures_total = 0
        """Every refusal since start: a counter for the metrics."""

    def due(self, folder: str) -> bool:
        """True when ``folder``'s acks may be applied now (never refused, or backoff over)."""
        failure = self._failed.get(folder)
        return failure is None or self._clock() >= failure.retry_at

    def any_due(self) -> bool:
        """True when some refused folder's backoff is over: a pass should retry it."""
        now = self._clock()
        return any(now >= failure.retry_at for failure in list(self._failed.values()))

    def refused(self, folder: str, action: str, answer: str, owed: int) -> AckFailure:
        """Record a refusal; returns it with the time of the next attempt."""
        previous = self._failed.get(folder)
        failures = (previous.failures if previous else 0) + 1
        retry_at = self._clock() + self._delay(failures - 1)
        failure = AckFailure(folder, action, answer, failures, retry_at, owed)
        self._failed[folder] = failure
        self.failures_total += 1
        return failure

    def deferred(self, folder: str, owed: int) -> None:
        """More acks are owed while ``folder`` waits for its retry."""
        failure = self._failed.get(folder)
        if failure is not None:
            self._failed[folder] = replace(failure, owed=owed)

    def succeeded(self, folder: str) -> None:
        """``folder``'s owed acks were all applied."""
        self._failed.pop(folder, None)

    def forget(self, folder: str) -> None:
        """Nothing is owed in ``folder`` any more (e.g. its UIDVALIDITY changed)."""
        self._failed.pop(folder, None)

    @property
    def failing(self) -> list[AckFailure]:
        """The folders whose acks are owed because the server refused them."""
        return sorted(self._failed.values(), key=lambda failure: failure.folder)


def _plain_backoff(attempt: int) -> float:
    return float(min(ACK_RETRY_CAP, ACK_RETRY_BASE * 2.0 ** min(attempt, 30)))


def _move(client: IMAPClient, uids: list[int], target: str) -> None:
    if not client.folder_exists(target):
        client.create_folder(target)
    if client.has_capability("MOVE"):
        client.move(uids, target)
        return
    # Without MOVE: COPY, then delete only these UIDs.  A crash between the two
    # leaves a copy behind and the ack owed, so the retry copies again: mail may
    # be doubled in the target folder, never lost.
    client.copy(uids, target)
    _expunge(client, uids)


def _expunge(client: IMAPClient, uids: list[int]) -> None:
    client.add_flags(uids, [_DELETED], silent=True)
    # Without UIDPLUS a plain EXPUNGE would also remove other \Deleted mail of
    # a person sharing the mailbox: leave the flag and let their client expunge.
    with contextlib.suppress(CapabilityError):
        client.uid_expunge(uids)
