"""Applying the ``after`` action to stored mail: mark seen, move, or delete.

Called only after the batch is committed.  Every action is idempotent on the
server's side (a flag set twice, a UID already gone) so a crash between the
commit and the acknowledgement only means it is applied again on the next pass.
"""

from __future__ import annotations

import contextlib
from collections import defaultdict
from collections.abc import Sequence

from imapclient import IMAPClient
from imapclient.exceptions import CapabilityError

from ..store import PendingAck

__all__ = ["apply_acks"]

_SEEN = b"\\Seen"
_DELETED = b"\\Deleted"


def apply_acks(client: IMAPClient, folder: str, acks: Sequence[PendingAck]) -> None:
    """Apply every ack to the currently selected ``folder`` (selected read-write)."""
    by_action: dict[str, list[int]] = defaultdict(list)
    for ack in acks:
        by_action[ack.action].append(ack.uid)
    for action, uids in by_action.items():
        if action == "seen":
            client.add_flags(uids, [_SEEN], silent=True)
        elif action == "delete":
            _expunge(client, uids)
        elif action.startswith("move:"):
            _move(client, uids, action.removeprefix("move:"))


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
