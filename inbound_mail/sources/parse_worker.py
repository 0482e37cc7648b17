"""Inside a parse process of :class:`~inbound_mail.sources.pool.ParsePool`.

The pool's forkserver preloads this module, and every worker is forked from it,
so it imports only what parsing needs (the parser, its options, the outcome
types, the fault hooks): never the store, the sinks, the CLI or the IMAP code.
``tests/test_package.py`` holds it to that.
"""

from __future__ import annotations

import os
import select
import signal
import threading
import time
from collections.abc import Sequence

from ..config.model import ParseOptions
from ..faults import fault_email
from ..models import ParseOutcome
from ..parse.message import parse_email

__all__ = ["init_worker", "parse_all", "parse_task"]

# In a worker: the options, set once when it starts (a dict, so no `global`).
_worker: dict[str, ParseOptions] = {}


def init_worker(options: ParseOptions, writer: int) -> None:
    """The pool's ``initializer``: keep ``options``, ignore Ctrl-C, end with ``writer``."""
    _worker["options"] = options
    # Ctrl-C reaches the whole process group: the writer decides what it means
    # (commit what is parsed, then stop), so a worker must not die of it.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # A worker blocks on its task queue, of which it holds both ends: if the writer
    # is killed (kill -9, the OOM killer), nothing would ever end it.  So it ends
    # itself when the writer is gone.
    threading.Thread(target=_exit_with, args=(writer,), daemon=True).start()


def _exit_with(writer: int) -> None:
    """End this process (``os._exit``) once process ``writer`` has exited."""
    try:
        handle: int | None = os.pidfd_open(writer)
    except OSError:  # gone already, or no pidfd here: poll instead
        handle = None
    if handle is not None:
        # Readable once the writer has exited (a zombie not reaped yet counts: its
        # parent may be waiting for our end of their shared output pipes).
        select.select([handle], [], [])
    else:
        while _alive(writer):
            time.sleep(1.0)
    os._exit(0)


def _alive(pid: int) -> bool:
    """Does process ``pid`` exist (ours to signal or not)?"""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def parse_task(raws: list[bytes]) -> list[ParseOutcome]:
    """In a worker: :func:`parse_all` with the options it was started with."""
    return parse_all(raws, _worker["options"])


def parse_all(raws: Sequence[bytes], options: ParseOptions) -> list[ParseOutcome]:
    """Parse each email, in a worker or in the writer; the fault hooks fire here."""
    outcomes = []
    for raw in raws:
        fault_email("crash-parse", raw)
        fault_email("stall-parse", raw)
        outcomes.append(parse_email(raw, options))
    return outcomes
