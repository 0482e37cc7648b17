"""What the one-port test servers (:mod:`.redis_server`, :mod:`.nats_server`) share:
a Debian binary run as our child process group, its output in ``log_path``; ``start``
waits until it is ready, ``stop`` (SIGTERM) and ``kill`` (SIGKILL) leave no process
behind, ``restart`` keeps the port and the data, and ``with`` starts and stops it.

A subclass names its ``program`` (found on ``PATH``, else at ``fallback``) and the
Debian ``package`` that has it, builds the command line (``_argv``, which may write a
config first) and says when the server is ready (``_ready``); ``error`` is the
:class:`HarnessError` it raises."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import ClassVar

from inbound_mail.testing.wait import wait_until

from . import HarnessError
from .process import GroupServer, ProcessGroup

__all__ = ["ChildServer"]

_START_TIMEOUT = 30.0


class ChildServer(GroupServer):
    """The base of :class:`~testsupport.redis_server.RedisServer` and
    :class:`~testsupport.nats_server.NatsServer` (see the module doc)."""

    program: ClassVar[str]
    fallback: ClassVar[str]
    package: ClassVar[str]
    error: ClassVar[type[HarnessError]] = HarnessError

    log_path: Path

    def _argv(self, binary: str) -> list[str]:
        raise NotImplementedError

    def _ready(self, log_start: int) -> bool:
        """Whether the server serves yet; ``log_start``: where this start's log begins."""
        raise NotImplementedError

    def start(self) -> None:
        """Start the server (a no-op while it runs) and wait until it is ready."""
        if self.running:
            return
        binary = shutil.which(self.program) or self.fallback
        if not Path(binary).exists():
            raise self.error(f"{self.program} is missing: apt-get install {self.package}")
        argv = self._argv(binary)
        log_start = self.log_path.stat().st_size if self.log_path.exists() else 0
        self._group = ProcessGroup(argv, self.log_path)

        def ready() -> bool:
            if not self.running:
                raise self.error(f"{self.program} exited:\n{self.log_tail()}")
            return self._ready(log_start)

        try:
            wait_until(ready, _START_TIMEOUT, interval=0.05, message=f"{self.program} ready")
        except TimeoutError:
            self.stop()
            raise self.error(f"{self.program} did not start:\n{self.log_tail()}") from None

    def close(self) -> None:
        self.stop()

    def log_tail(self, lines: int = 30) -> str:
        try:
            text = self.log_path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])
