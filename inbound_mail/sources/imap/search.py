"""IMAP SEARCH criteria shared by the sync and ``check``."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

__all__ = ["senders_criteria"]


def senders_criteria(senders: Sequence[str]) -> list[Any]:
    """``FROM a`` or ``OR FROM a FROM b ...``: the server narrows, the parser decides."""
    criteria: list[Any] = ["FROM", senders[0]]
    for sender in senders[1:]:
        criteria = ["OR", criteria, ["FROM", sender]]
    return criteria if len(senders) == 1 else [criteria]
