"""The lines of ``inbound-mail check``'s report: one a step, ``ok``, ``warn``
(worth knowing, not a failure) or ``FAIL`` (says what to fix; exit code 1)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

__all__ = ["CheckLevel", "CheckLine", "CheckReport", "LineMaker", "reason"]

CheckLevel = Literal["ok", "warn", "FAIL"]


@dataclass(frozen=True, slots=True)
class CheckLine:
    """One step's outcome."""

    level: CheckLevel
    subject: str
    step: str
    detail: str

    def line(self) -> str:
        return f"{self.level:<4} {self.subject} {self.step}: {self.detail}"


@dataclass(slots=True)
class CheckReport:
    """Every step's line; ``exit_code`` is 1 when any failed."""

    lines: list[CheckLine] = field(default_factory=list)

    @property
    def failures(self) -> list[CheckLine]:
        return [line for line in self.lines if line.level == "FAIL"]

    @property
    def exit_code(self) -> int:
        return 1 if self.failures else 0


LineMaker = Callable[[CheckLevel, str, str], CheckLine]


def reason(exc: BaseException) -> str:
    """A short reason for a network error: "timed out", "Connection refused", ..."""
    if isinstance(exc, TimeoutError):
        return "timed out"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc) or type(exc).__name__
