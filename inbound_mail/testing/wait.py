"""Poll a condition with a deadline, instead of sleeping a guessed amount of time."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

__all__ = ["wait_until"]

T = TypeVar("T")


def wait_until(
    # ``T | None``: a predicate answering None until ready types the result as a plain T.
    predicate: Callable[[], T | None],
    timeout: float = 10.0,
    interval: float = 0.02,
    *,
    message: str | None = None,
) -> T:
    """Call ``predicate`` until it returns something truthy, and return that value.

    Raises :class:`TimeoutError` (naming ``message`` or the predicate) when
    ``timeout`` seconds pass first.  The predicate is always called at least
    once more after the deadline, so a slow machine that got there just in
    time does not fail.
    """
    deadline = time.monotonic() + timeout
    while True:
        expired = time.monotonic() >= deadline
        result = predicate()
        if result:
            return result
        if expired:
            what = message or getattr(predicate, "__qualname__", repr(predicate))
            raise TimeoutError(f"not true within {timeout:g} s: {what}")
        time.sleep(interval)
