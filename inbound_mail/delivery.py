"""The outbox delivery worker: one per sink, each in its own thread with its own Store.

The store writes one ``deliveries`` row per matching sink in the same
transaction as the SMS (:func:`make_router` decides which sinks match).  A
:class:`DeliveryWorker` sends its sink's pending rows, oldest first:

- sequential (``parallel = 1``): rows go in id order, in batches (up to 100
  rows or 1 s of work, then ``Sink.flush`` and one transaction that records
  the attempts).  When the oldest pending row is not yet due, the worker waits
  for it: younger rows are never sent ahead of it.
- parallel (``parallel = N``): up to N due rows are in flight at once, in a
  thread pool; order is not kept.  Due rows are read in batches, and
  completions are recorded in batches too: one transaction per
  :data:`RECORD_BATCH` completions or :data:`RECORD_SECONDS`, whichever comes
  first, and whenever nothing is left in flight.

A sink with ``deliver_many`` (see :class:`~inbound_mail.sinks.Sink`) gets the
rows of a sequential batch in one call, in order; in parallel, up to
:data:`BATCH_CALLS` calls (at most N) of up to :data:`BATCH_SIZE` due rows
each, since each call has its records in flight together already.  Nothing is
marked delivered before the sink said so; a delivery that went through but is
not yet recorded when the process dies is sent again after the restart
(at-least-once, the same SMS id, as always): batching bounds how many, never whether.

A failure is retried after ``retry_base * 2**(attempt-1)`` seconds, capped at
``retry_cap``, with full jitter (a uniform draw below that), and no sooner
than a sink's ``retry_after``.  After ``max_attempts`` attempts, or once the row
is ``max_age`` old, it is dead, with its last error.  A sink that raises
anything but a DeliveryError counts as a temporary failure.  Every attempt is
recorded and logged (``delivery.attempt``: sink, sms id, attempt, outcome,
duration, error).  All state is in the database, so delivery resumes after
a restart.  ``wake()`` makes an idle worker look at the outbox at once;
otherwise it sleeps until the next row is due.  Another process (``inbound-mail
retry``, ``retry-dead``, ``replay``) cannot wake() it: those commands bump a
counter in the ``state`` table (:meth:`Store.schedule_version`) in the same
transaction, which a waiting worker polls every :data:`SCHEDULE_POLL` seconds
(and it re-reads the outbox every few seconds regardless).

:func:`run_once_concurrently` is the burst mode (``run --once``): one pass of
every sink at the same time, so a slow sink does not hold up the others.
"""

from __future__ import annotations

import logging
import random
import threading
import time
import traceback
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, replace
from pathlib import Path

from .config.model import FILTER_TIMEOUT, RetryPolicy, SinkConfig, SinkFilter
from .errors import DeliveryError, PermanentDeliveryError, StoreError, TemporaryDeliveryError
from .faults import fault_point
from .logs import log_event
from .models import SmsRecord
from .sinks import BatchSink, Sink, create_sink
from .store.db import Store
from .store.rows import AttemptOutcome, AttemptRecord, Delivery

__all__ = [
    "AttemptContext",
    "DeliveryPassResult",
    "DeliveryWorker",
    "OnAttempt",
    "deliver_due",
    "make_router",
    "retry_delay",
    "run_once_concurrently",
]

OnAttempt = Callable[[str, AttemptOutcome, float], None]
"""An observer called after every attempt with (sink name, outcome, duration in seconds)."""

BATCH_SIZE = 100
BATCH_SECONDS = 1.0  # bounds the resends after a crash, and the time before a row is marked
IDLE_RECHECK = 5.0  # rows queued by another process cannot wake() us
SCHEDULE_POLL = 0.5  # how often a waiting worker reads the schedule counter
INFLIGHT_RECHECK = 1.0
BATCH_CALLS = 2  # parallel, a batch sink: deliver_many calls in flight at once
RECORD_BATCH = 100  # parallel: completions recorded in one transaction, at most
RECORD_SECONDS = 0.05  # parallel: how long a completion waits for others to share its commit
STORE_RETRY_CAP = 60.0
ERROR_LIMIT = 4000
_LEVELS: dict[AttemptOutcome, int] = {
    "delivered": logging.INFO,
    "failed": logging.WARNING,
    "dead": logging.ERROR,
}
_log = logging.getLogger(__name__)


def make_router(
    sinks: Sequence[SinkConfig], *, log: logging.Logger | None = None
) -> Callable[[SmsRecord], list[str]]:
    """The ``route`` for :meth:`Store.ingest`: the names of the sinks whose filter matches.

    A ``text_regex`` that runs out of time on a text (see
    :data:`~inbound_mail.config.model.FILTER_TIMEOUT`) counts as not matching, and is
    logged (``filter.timeout``, WARNING) with the sink and the SMS id.
    """
    pairs = [(sink.name, sink.filter) for sink in sinks]
    logger = log or _log

    def matches(name: str, flt: SinkFilter, record: SmsRecord) -> bool:
        try:
            return flt.matches(record)
        except TimeoutError:
            log_event(
                logger,
                logging.WARNING,
                "filter.timeout",
                sink=name,
                id=record.id,
                text_length=len(record.text),
                timeout=FILTER_TIMEOUT,
            )
            return False

    def route(record: SmsRecord) -> list[str]:
        return [name for name, flt in pairs if matches(name, flt, record)]

    return route


def retry_delay(
    policy: RetryPolicy,
    attempt: int,
    *,
    retry_after: float | None = None,
    rand: Callable[[], float] = random.random,
) -> float:
    """Seconds before the retry that follows failed attempt number ``attempt`` (1-based)."""
    ceiling = min(policy.retry_cap, policy.retry_base * 2.0 ** min(attempt - 1, 64))
    delay = rand() * ceiling
    return max(delay, retry_after) if retry_after is not None else delay


@dataclass(frozen=True, slots=True)
class AttemptContext:
    """The :class:`~inbound_mail.sinks.DeliveryContext` a sink receives."""

    delivery_id: int
    attempt: int


@dataclass(slots=True)
class DeliveryPassResult:
    """What a pass did: attempts by outcome."""

    delivered: int = 0
    failed: int = 0
    dead: int = 0

    @property
    def attempted(self) -> int:
        return self.delivered + self.failed + self.dead

    def add(self, outcome: AttemptOutcome) -> None:
        setattr(self, outcome, getattr(self, outcome) + 1)


@dataclass(frozen=True, slots=True)
class _Sent:
    """One ``deliver`` call's result, before it is recorded."""

    delivery: Delivery
    started_at: float
    duration: float
    detail: str | None = None
    error: str | None = None
    permanent: bool = False
    retry_after: float | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


@dataclass(slots=True)
class _Pass:
    """A run_once pass attempts rows due at its start, each once; run() has no such limit."""

    due_by: float | None = None
    attempted: set[int] | None = None

    def eligible(self, row: Delivery, now: float) -> bool:
        due = row.next_attempt_at <= (now if self.due_by is None else self.due_by)
        return due and (self.attempted is None or row.id not in self.attempted)

    def mark(self, row: Delivery) -> None:
        if self.attempted is not None:
            self.attempted.add(row.id)


class DeliveryWorker:
    """Delivers one sink's outbox.  ``run`` in a thread of its own; ``wake`` from any thread."""

    def __init__(
        self,
        db_path: Path,
        sink_config: SinkConfig,
        *,
        sink: Sink | None = None,
        clock: Callable[[], float] = time.time,
        log: logging.Logger | None = None,
        on_attempt: OnAttempt | None = None,
    ) -> None:
        """``sink``: an already built sink (the caller closes it); None builds one
        from ``sink_config``, which :meth:`close` closes."""
        self.db_path = Path(db_path)
        self.sink_config = sink_config
        self.name = sink_config.name
        self.sink = sink if sink is not None else create_sink(sink_config)
        self._owns_sink = sink is None
        self.parallel = max(1, sink_config.parallel)
        self._clock = clock
        self._log = log or _log
        self._on_attempt = on_attempt
        self._wakeup = threading.Event()
        self._batch = self.sink if isinstance(self.sink, BatchSink) else None
        # parallel: sends in flight, due rows read but not yet sent, and finished
        # sends not yet recorded (since when: monotonic).  All three stay pending
        # in the database, so none of their rows is read again meanwhile.
        self._inflight: dict[Future[list[_Sent]], list[Delivery]] = {}
        self._queue: deque[Delivery] = deque()
        self._done: list[_Sent] = []
        self._done_since = 0.0
        self.totals = DeliveryPassResult()
        """Attempts by outcome since this worker's ``run`` started."""
        self.last_tick = time.monotonic()
        """When ``run``'s loop last came round (monotonic): the watchdog's sign of life."""

    def wake(self) -> None:
        """New rows were committed: look at the outbox now."""
        self._wakeup.set()

    def close(self) -> None:
        """Close the sink if this worker built it."""
        if self._owns_sink:
            self.sink.close()

    # -- entry points ------------------------------------------------------------
    def run(self, stop: threading.Event) -> None:
        """Deliver until ``stop`` is set; the batch in flight is finished and recorded."""

        # Relay stop to the wakeup event, so one wait() serves both: no polling.
        def relay() -> None:
            stop.wait()
            self._wakeup.set()

        threading.Thread(target=relay, name=f"sink-{self.name}-stop", daemon=True).start()
        delay = 1.0
        with self._pool() as pool:
            while True:
                try:
                    with Store.open(self.db_path, clock=self._clock) as store:
                        self._serve(store, stop, pool)
                    return
                except Exception as exc:  # the store, or a bug: log, back off, go on
                    trace = None if isinstance(exc, StoreError) else _trace(exc)
                    log_event(self._log, logging.ERROR, "delivery.worker_error", sink=self.name,
                              error=_error_text(exc), traceback=trace, retry_in=delay)  # fmt: skip
                    if stop.is_set():
                        return  # what was in flight is sent again after the restart
                    self._wakeup.wait(delay)
                    delay = min(delay * 2, STORE_RETRY_CAP)

    def run_once(self) -> DeliveryPassResult:
        """One attempt for every delivery due now (sequential: up to the first that
        fails for now, since younger rows must not overtake it), then return."""
        result = DeliveryPassResult()
        never = threading.Event()
        with Store.open(self.db_path, clock=self._clock) as store, self._pool() as pool:
            batch = _Pass(due_by=self._clock(), attempted=set())
            try:
                if pool is None:
                    while self._sequential_step(store, never, batch, result) == 0.0:
                        pass
                else:
                    while (
                        wait := self._parallel_step(store, never, pool, batch, result)
                    ) is not None:
                        self._wakeup.wait(wait)
                        self._wakeup.clear()
            finally:
                self._forget()  # unrecorded results: those rows stay pending
        return result

    # -- the loops -------------------------------------------------------------------
    def _forget(self) -> None:
        """Drop what is not recorded: those rows stay pending and are sent (again)."""
        self._inflight.clear()
        self._queue.clear()
        self._done.clear()

    def _serve(self, store: Store, stop: threading.Event, pool: ThreadPoolExecutor | None) -> None:
        forever = _Pass()
        result = self.totals
        schedule = store.schedule_version()
        self._queue.clear()  # read again: another process may have changed them
        while not stop.is_set() or self._inflight or self._done:
            self.last_tick = time.monotonic()
            self._wakeup.clear()
            if pool is None:
                wait = self._sequential_step(store, stop, forever, result)
            else:
                wait = self._parallel_step(store, stop, pool, forever, result)
            if wait is None:
                return
            # stop may have come after the clear(): then its relay set the event again.
            if wait > 0 and (self._inflight or not stop.is_set()):
                schedule = self._wait(store, wait, schedule)

    def _wait(self, store: Store, seconds: float, schedule: str | None) -> str | None:
        """Sleep up to ``seconds``: less on wake(), or when another process changed
        the schedule (``inbound-mail retry``); returns the schedule version seen."""
        deadline = time.monotonic() + seconds
        while True:
            left = deadline - time.monotonic()
            if left <= 0 or self._wakeup.wait(min(left, SCHEDULE_POLL)):
                return schedule
            self.last_tick = time.monotonic()
            seen = store.schedule_version()
            if seen != schedule:
                return seen

    def _sequential_step(
        self, store: Store, stop: threading.Event, batch: _Pass, result: DeliveryPassResult
    ) -> float | None:
        """Send one batch from the head of the queue; return how long to wait after it."""
        sent: list[_Sent] = []
        budget = time.monotonic() + BATCH_SECONDS
        rows = store.pending_deliveries(self.name, limit=BATCH_SIZE)
        if self._batch is not None:  # the head of the queue, due now, in one call
            now = self._clock()
            due: list[Delivery] = []
            for row in rows:
                if not batch.eligible(row, now) or stop.is_set():
                    break
                batch.mark(row)
                due.append(row)
            sent = self._attempt_many(due) if due else []
        else:
            for row in rows:
                if not batch.eligible(row, self._clock()) or stop.is_set():
                    break
                batch.mark(row)
                sent.append(self._attempt(row))
                if (not sent[-1].ok and not sent[-1].permanent) or time.monotonic() > budget:
                    break
        if sent:
            self._record(store, self._flushed(sent), result)
            return 0.0
        if batch.due_by is not None:  # run_once: nothing left that was due at the start
            return None
        return self._until(rows[0].next_attempt_at if rows else None)

    def _parallel_step(
        self,
        store: Store,
        stop: threading.Event,
        pool: ThreadPoolExecutor,
        batch: _Pass,
        result: DeliveryPassResult,
    ) -> float | None:
        """Collect finished sends, start due ones, record the finished ones when
        enough have gathered; return how long to wait (None: all done)."""
        finished = [future for future in self._inflight if future.done()]
        for future in finished:
            if not self._done:
                self._done_since = time.monotonic()
            self._done += future.result()
            del self._inflight[future]
        if not stop.is_set():
            self._submit_due(store, pool, batch)
        if self._done:
            waited = time.monotonic() - self._done_since
            if (
                not self._inflight
                or stop.is_set()
                or len(self._done) >= RECORD_BATCH
                or waited >= RECORD_SECONDS
            ):
                done, self._done = self._done, []
                self._record(store, self._flushed(done), result)
            else:  # a completion sets the wakeup event sooner
                return min(INFLIGHT_RECHECK, RECORD_SECONDS - waited)
        if self._inflight:
            return INFLIGHT_RECHECK  # a completion sets the wakeup event sooner
        if batch.due_by is not None or stop.is_set():
            return None
        return self._until(store.next_due(self.name))

    def _submit_due(self, store: Store, pool: ThreadPoolExecutor, batch: _Pass) -> None:
        room = self._calls() - len(self._inflight)
        if room <= 0:
            return
        now = self._clock()
        # A batch sink gets full batches (each call is concurrent within itself);
        # any other sink one row a call.
        share = 1 if self._batch is None else BATCH_SIZE
        if not self._queue:
            # One read for many sends: rows in flight or not yet recorded are still
            # pending in the database, and must not be sent twice.
            busy = {row.id for rows in self._inflight.values() for row in rows}
            busy.update(sent.delivery.id for sent in self._done)
            due_by = now if batch.due_by is None else batch.due_by
            # The read includes the busy rows (the oldest): read well ahead of them.
            wanted = max(BATCH_SIZE, 4 * self.parallel, 4 * share * self._calls())
            rows = store.pending_deliveries(self.name, limit=wanted + len(busy), due_by=due_by)
            self._queue.extend(r for r in rows if r.id not in busy and batch.eligible(r, now))
        while room > 0 and self._queue:
            rows = [self._queue.popleft() for _ in range(min(share, len(self._queue)))]
            for row in rows:
                batch.mark(row)
            future = pool.submit(self._attempt_rows, rows)
            self._inflight[future] = rows
            future.add_done_callback(lambda _: self._wakeup.set())
            room -= 1

    def _calls(self) -> int:
        """How many sends may be in flight: ``parallel``; for a batch sink fewer
        calls, as each holds up to BATCH_SIZE records in flight by itself."""
        return self.parallel if self._batch is None else min(self.parallel, BATCH_CALLS)

    def _until(self, due: float | None) -> float:
        return IDLE_RECHECK if due is None else min(max(due - self._clock(), 0.0), IDLE_RECHECK)

    def _pool(self) -> AbstractContextManager[ThreadPoolExecutor | None]:
        if self.parallel == 1:
            return nullcontext()
        return ThreadPoolExecutor(self.parallel, thread_name_prefix=f"sink-{self.name}")

    # -- one attempt ---------------------------------------------------------------
    def _attempt(self, row: Delivery) -> _Sent:
        started_at = self._clock()
        begin = time.monotonic()
        context = AttemptContext(delivery_id=row.id, attempt=row.attempts + 1)
        try:
            detail = self.sink.deliver(row.record, context)
        except Exception as exc:
            sent = _Sent(row, started_at, time.monotonic() - begin)
            return self._failed(sent, exc)
        return _Sent(row, started_at, time.monotonic() - begin, detail=detail)

    def _attempt_rows(self, rows: list[Delivery]) -> list[_Sent]:
        if self._batch is None:
            return [self._attempt(row) for row in rows]
        return self._attempt_many(rows)

    def _attempt_many(self, rows: list[Delivery]) -> list[_Sent]:
        """One ``deliver_many`` call for ``rows``; each outcome becomes its row's result."""
        assert self._batch is not None
        started_at = self._clock()
        begin = time.monotonic()
        items = [(row.record, AttemptContext(row.id, row.attempts + 1)) for row in rows]
        try:
            outcomes = self._batch.deliver_many(items)
            if len(outcomes) != len(rows):  # a bug in the sink: trust none of them
                raise RuntimeError(
                    f"deliver_many returned {len(outcomes)} outcomes for {len(rows)} records"
                )
        except Exception as exc:
            duration = time.monotonic() - begin
            # Logged (if a bug) once for the batch, not once a row.
            first = self._failed(_Sent(rows[0], started_at, duration), exc)
            return [first] + [replace(first, delivery=row) for row in rows[1:]]
        duration = time.monotonic() - begin  # each record waited for the whole batch
        sent: list[_Sent] = []
        for row, outcome in zip(rows, outcomes, strict=True):
            one = _Sent(row, started_at, duration)
            if isinstance(outcome, Exception):
                sent.append(self._failed(one, outcome))
            else:
                sent.append(replace(one, detail=outcome))
        return sent

    def _failed(self, sent: _Sent, exc: Exception) -> _Sent:
        if isinstance(exc, DeliveryError):
            return replace(
                sent,
                error=str(exc) or type(exc).__name__,
                permanent=isinstance(exc, PermanentDeliveryError),
                retry_after=exc.retry_after if isinstance(exc, TemporaryDeliveryError) else None,
            )
        # A bug in the sink, or an error it did not translate: retry, and say what it was.
        log_event(self._log, logging.WARNING, "delivery.sink_raised", sink=self.name,
                  error_type=type(exc).__name__, error=str(exc), traceback=_trace(exc))  # fmt: skip
        return replace(sent, error=_error_text(exc))

    def _flushed(self, sent: list[_Sent]) -> list[_Sent]:
        """Flush the sink; if that fails, the batch's successes become failures."""
        if not any(s.ok for s in sent):
            return sent
        try:
            self.sink.flush()
        except Exception as exc:
            return [self._failed(s, exc) if s.ok else s for s in sent]
        # ---- FAULT POINT "after-sink-2xx": the sink accepted (and flushed) the batch,
        # ---- the outbox rows are not yet marked delivered.  A crash here resends.
        fault_point("after-sink-2xx")
        return sent

    def _record(self, store: Store, sent: list[_Sent], result: DeliveryPassResult) -> None:
        now = self._clock()
        records = [self._decide(s, now) for s in sent]
        store.record_attempts(records)
        for s, record in zip(sent, records, strict=True):
            result.add(record.outcome)
            self._report(s, record)

    def _decide(self, sent: _Sent, now: float) -> AttemptRecord:
        row = sent.delivery
        if sent.error is None:
            return AttemptRecord(row.id, "delivered", sent.started_at, sent.duration)
        attempt = row.attempts + 1
        policy = self.sink_config.retry
        error = sent.error[:ERROR_LIMIT]
        give_up = None
        if sent.permanent:
            give_up = ""
        elif attempt >= policy.max_attempts:
            give_up = f"gave up after {attempt} attempts; last error: "
        elif now - row.created_at >= policy.max_age:
            give_up = f"gave up after {(now - row.created_at) / 3600:.1f}h; last error: "
        if give_up is not None:
            return AttemptRecord(row.id, "dead", sent.started_at, sent.duration, give_up + error)
        delay = retry_delay(policy, attempt, retry_after=sent.retry_after)
        return AttemptRecord(row.id, "failed", sent.started_at, sent.duration, error, now + delay)

    def _report(self, sent: _Sent, record: AttemptRecord) -> None:
        retry_in = None
        if record.outcome == "failed" and record.next_attempt_at is not None:
            retry_in = round(max(record.next_attempt_at - self._clock(), 0.0), 3)
        fields = {
            "sink": self.name,
            "sms": sent.delivery.record.id,
            "delivery": sent.delivery.id,
            "attempt": sent.delivery.attempts + 1,
            "outcome": record.outcome,
            "duration_ms": round(sent.duration * 1000, 1),
            "error": record.error,
            "detail": sent.detail if record.error is None else None,
            "retry_in": retry_in,
        }
        level = _LEVELS[record.outcome]
        log_event(
            self._log,
            level,
            "delivery.attempt",
            **{k: v for k, v in fields.items() if v is not None},
        )
        if self._on_attempt is not None:
            try:
                self._on_attempt(self.name, record.outcome, sent.duration)
            except Exception as exc:  # an observer must never stop delivery
                log_event(self._log, logging.WARNING, "delivery.observer_failed", sink=self.name,
                          error=_error_text(exc))  # fmt: skip


def _error_text(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"


def _trace(exc: BaseException) -> str:
    return "".join(traceback.format_exception(exc, limit=8))


def deliver_due(
    db_path: Path,
    sink_configs: Sequence[SinkConfig],
    *,
    sinks: Mapping[str, Sink] | None = None,
    clock: Callable[[], float] = time.time,
    log: logging.Logger | None = None,
    on_attempt: OnAttempt | None = None,
) -> dict[str, DeliveryPassResult]:
    """``run_once`` for every sink, concurrently (a slow sink does not hold up the
    others).  ``sinks`` maps names to already built sinks; the others are built
    from their config and closed afterwards."""
    workers: list[DeliveryWorker] = []
    try:
        for config in sink_configs:
            sink = (sinks or {}).get(config.name)
            workers.append(DeliveryWorker(db_path, config, sink=sink, clock=clock, log=log,
                                          on_attempt=on_attempt))  # fmt: skip
        return run_once_concurrently(workers)
    finally:
        for worker in workers:
            worker.close()


def run_once_concurrently(workers: Sequence[DeliveryWorker]) -> dict[str, DeliveryPassResult]:
    """:meth:`DeliveryWorker.run_once` of every worker at the same time, each in a
    thread; returns each sink's result once all are done.  An error of one worker
    is raised after the others have finished their pass."""
    if not workers:
        return {}
    with ThreadPoolExecutor(len(workers), thread_name_prefix="deliver-due") as pool:
        futures = {w.name: pool.submit(w.run_once) for w in workers}
        return {name: future.result() for name, future in futures.items()}
