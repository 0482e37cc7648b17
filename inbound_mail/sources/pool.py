"""Parsing on every core: a pool of parse processes behind ONE writer.

Parsing holds the GIL (pure Python), so ``backfill`` and ``import`` parse in worker
processes while the one writer process reads (IMAP FETCH, files), stores and
acknowledges, in order.  Every durability rule of the inline path holds,
because only the parse moves:

* emails are recorded in flight (:mod:`inbound_mail.sources.inflight`) by the writer
  before they are shipped, and stored and acknowledged by the writer, in order,
  after their outcomes come back;
* a worker that dies (a crash, SIGKILL, the OOM killer) breaks the pool
  (``BrokenProcessPool``): every email of the tasks that were in flight is
  then parsed again ALONE in a fresh worker, one at a time, so the crash is
  counted against the one email that caused it; an email that killed
  :data:`~inbound_mail.sources.inflight.MAX_PARSE_CRASHES` workers on its own becomes
  the same ``parser_crash`` reject as after process crashes, raw bytes kept.
  The writer never parses an email that killed a worker.  If the writer itself
  dies, the in-flight rows count the crash as before.

What does not go to the pool: a group under :data:`INLINE_BELOW` emails (the
daemon's one email per push gets no hop), and an email whose top header block
names none of the configured senders (mail from another sender is classified
by the parser's gate from its headers alone, without the full parse: shipping it
would cost more than that) -- both only while no other group is in flight (see
:class:`Parsing`).  A backfill keeps two groups in flight (the next is fetched
and shipped before the last is stored), an import up to :attr:`ParsePool.depth`.

Workers (:mod:`.parse_worker`) are started with ``forkserver`` (never ``fork``
after threads), once per pool; each has its own DNS cache if it ever verifies
(the writer verifies).
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import re
import threading
from collections.abc import Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from types import TracebackType

from ..config.model import ParseOptions
from ..logs import log_event
from ..models import ParseOutcome
from .inflight import MAX_PARSE_CRASHES, crash_reject
from .parse_worker import init_worker, parse_all, parse_task

__all__ = [
    "CHUNK",
    "GROUP",
    "INLINE_BELOW",
    "MAX_AUTO_WORKERS",
    "ParsePool",
    "Parsing",
    "auto_workers",
]

#: ``workers = 0`` (auto): one per core, at most this many (more rarely pays:
#: the one writer's fetch and store become the limit).
MAX_AUTO_WORKERS = 4
#: A group smaller than this is parsed in the writer: shipping it costs more
#: than it saves, and the daemon's push path must not get a hop.
INLINE_BELOW = 32
#: Emails per task sent to a worker: big enough to amortise the IPC, small
#: enough to keep every worker busy and a crash's re-parse short.
CHUNK = 100
#: Emails an import reads, records in flight (one commit) and ships at once, in
#: tasks of CHUNK: a commit per task cost the writer more than the tasks' IPC.
GROUP = 800
_END_OF_HEADER = re.compile(rb"\r?\n\r?\n")
_HEADER_SCAN = 64 * 1024  # bytes of an email searched for a sender, at most
_log = logging.getLogger("inbound_mail.pool")


def auto_workers(setting: int = 0) -> int:
    """The number of parse processes for ``setting`` (``[parse] workers`` or
    ``--workers``): itself when positive, else one per core, at most
    :data:`MAX_AUTO_WORKERS`."""
    if setting > 0:
        return setting
    return max(1, min(os.cpu_count() or 1, MAX_AUTO_WORKERS))


class ParsePool:
    """``workers`` parse processes, started by :meth:`start` or at the first task;
    ``workers <= 1`` parses inline (the single-process path)."""

    def __init__(self, options: ParseOptions, workers: int) -> None:
        self.options = options
        self.workers = max(1, workers)
        self._executor: ProcessPoolExecutor | None = None
        self.crashes = 0  # workers lost: for tests and logs
        self.outstanding = 0  # groups submitted whose outcomes are not collected yet

    @property
    def depth(self) -> int:
        """Groups of :data:`GROUP` emails to keep in flight: enough that the workers
        keep parsing while the writer commits a transaction (2,000 emails by
        default, up to 100,000 with ``--batch-size``), ~5 MB of emails with two
        workers."""
        return max(6, self.workers * 3)

    def start(self) -> None:
        """Start the workers now, in the background, rather than at the first task:
        the forkserver imports the parser (a few tenths of a second) while the
        writer logs in, searches and fetches.  Nothing to do when parsing inline."""
        if self.workers <= 1 or self._executor is not None:
            return
        executor = self._new_executor()
        # A spawn waits for the forkserver to fork the worker: not the writer's wait.
        threading.Thread(
            target=_spawn_workers, args=(executor, self.workers), name="parse-pool-start",
            daemon=True,
        ).start()  # fmt: skip

    def submit(self, raws: Sequence[bytes], *, alone: frozenset[int] = frozenset()) -> Parsing:
        """Start parsing ``raws`` (already recorded in flight); the outcomes come
        from :meth:`Parsing.outcomes`, in order.  Indexes in ``alone`` (emails a
        dead process was parsing) are parsed in a task of their own."""
        return Parsing(self, raws, alone)

    def close(self) -> None:
        if self._executor is not None:
            self._executor.shutdown(wait=True, cancel_futures=True)
            self._executor = None

    def __enter__(self) -> ParsePool:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # -- internals ----------------------------------------------------------
    def _submit(self, raws: list[bytes]) -> Future[list[ParseOutcome]]:
        executor = self._executor or self._new_executor()
        try:
            return executor.submit(parse_task, raws)
        except BrokenProcessPool:
            self._broken()
            return self._submit(raws)

    def _new_executor(self) -> ProcessPoolExecutor:
        context = multiprocessing.get_context("forkserver")
        # The server imports the parser once (and only what parsing needs); each
        # worker is forked from it ready.  A worker also re-runs the imports of the
        # main script (multiprocessing's rule): the console script's inbound_mail.cli
        # must stay light.
        context.set_forkserver_preload(["inbound_mail.sources.parse_worker"])
        self._executor = ProcessPoolExecutor(
            self.workers,
            mp_context=context,
            initializer=init_worker,
            initargs=(self.options, os.getpid()),
        )
        return self._executor

    def _broken(self) -> None:
        """Forget a broken executor (its futures all fail); the next task starts a new one."""
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)
            self._executor = None

    def _alone(self, raw: bytes) -> ParseOutcome:
        """Parse one email of a task a worker died in, in a task of its own, until
        it parses or has killed MAX_PARSE_CRASHES workers by itself."""
        for crashes in range(MAX_PARSE_CRASHES):
            future = self._submit([raw])
            try:
                return future.result()[0]
            except BrokenProcessPool:
                self._broken()
                self.crashes += 1
                log_event(_log, logging.ERROR, "parse.worker_died", crashes=crashes + 1,
                          action="parsing the email alone again" if crashes + 1 < MAX_PARSE_CRASHES
                          else "stored as a parser_crash reject")  # fmt: skip
        return crash_reject(MAX_PARSE_CRASHES)


def _spawn_workers(executor: ProcessPoolExecutor, workers: int) -> None:
    """Give each of ``workers`` processes a no-op task: the executor spawns a process
    per task while none is idle.  A pool broken or closed meanwhile is the writer's
    to see at its next task."""
    try:
        for _ in range(workers):
            executor.submit(os.getpid)
    except (BrokenProcessPool, RuntimeError):  # RuntimeError: shut down already
        pass


class Parsing:
    """One group being parsed; :meth:`outcomes` waits for it.

    The writer parses (a small group, mail from another sender) only when no other
    group is in flight, and at once: if that parse kills the process, the only
    emails recorded in flight are this group's, so a restart counts the crash
    against them alone, as on the inline path.  Otherwise everything is shipped."""

    def __init__(self, pool: ParsePool, raws: Sequence[bytes], alone: frozenset[int]) -> None:
        self._pool = pool
        self._raws = list(raws)
        self._tasks: list[tuple[list[int], Future[list[ParseOutcome]]]] = []
        indexes = range(len(self._raws))
        if pool.workers <= 1:
            shipped: list[int] = []
        elif pool.outstanding:  # other groups in flight: the writer parses nothing
            shipped = list(indexes)
        elif len(self._raws) < INLINE_BELOW:  # a crashed one never runs in the writer
            shipped = [i for i in indexes if i in alone]
        else:
            shipped = [i for i in indexes if i in alone or _for_parser(self._raws[i], pool.options)]
        chosen = set(shipped)
        run: list[int] = []
        for i in shipped:
            if i in alone:
                self._tasks.append(([i], pool._submit([self._raws[i]])))
                continue
            run.append(i)
            if len(run) >= CHUNK:
                self._tasks.append((run, pool._submit([self._raws[j] for j in run])))
                run = []
        if run:
            self._tasks.append((run, pool._submit([self._raws[j] for j in run])))
        pool.outstanding += 1
        self._results: list[ParseOutcome | None] = [None] * len(self._raws)
        inline = [i for i in indexes if i not in chosen]  # while the workers parse the rest
        parsed = parse_all([self._raws[i] for i in inline], pool.options)
        for i, outcome in zip(inline, parsed, strict=True):
            self._results[i] = outcome

    def outcomes(self) -> list[ParseOutcome]:
        """Every email's outcome, in order."""
        results = self._results
        try:
            for indexes, future in self._tasks:
                try:
                    outcomes = future.result()
                except BrokenProcessPool:
                    self._pool._broken()
                    outcomes = [self._pool._alone(self._raws[i]) for i in indexes]
                for i, outcome in zip(indexes, outcomes, strict=True):
                    results[i] = outcome
        finally:
            self._pool.outstanding -= 1
        self._raws = []
        self._tasks = []
        return [outcome for outcome in results if outcome is not None]


def _for_parser(raw: bytes, options: ParseOptions) -> bool:
    """Does the top header block name a configured sender anywhere?  Else the
    parser's gate classifies the email from its headers alone: not worth a trip to
    a worker.  A plain byte search (the writer must stay cheap: a header parse here
    costs as much as the store); a wrong guess only moves a parse, never changes it."""
    end = _END_OF_HEADER.search(raw, 0, _HEADER_SCAN)
    head = raw[: end.start() if end else _HEADER_SCAN].lower()
    return any(sender.encode("utf-8", "replace") in head for sender in options.senders)
