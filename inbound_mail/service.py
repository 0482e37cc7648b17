"""The daemon: one worker thread per account and per sink, a scheduler, a stop flag.

``Daemon.run()`` is the long-running mode; ``Daemon.run_once()`` the burst mode
(one catch-up pass of every account, then one attempt for every due delivery).
The first SIGTERM or SIGINT asks for a warm stop: workers finish the batch in
hand, commit, log out, and the process exits 0.  A second signal forces the exit.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from types import FrameType

from apscheduler.schedulers.background import BackgroundScheduler

from .config import AccountConfig, Config
from .delivery import DeliveryWorker, make_router
from .errors import InboundMailError
from .imap.worker import AccountWorker
from .logs import log_event
from .parse import ParseOptions
from .sinks import Sink, create_sink
from .store import IngestResult, Store, daemon_lock

__all__ = ["Daemon", "OnceResult"]

_log = logging.getLogger("inbound_mail.service")
STOP_GRACE = 4.0


@dataclass(slots=True)
class OnceResult:
    """What ``run --once`` did; ``failures`` maps account names to their error."""

    failures: dict[str, str] = field(default_factory=dict)

    @property
    def exit_code(self) -> int:
        return 1 if self.failures else 0


class Daemon:
    """Wires config, store, IMAP workers, delivery workers and the scheduler."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.db_path = config.database.path
        self.stop = threading.Event()
        self.route = make_router(config.sinks)
        self.sinks: dict[str, Sink] = {}
        self.delivery_workers: list[DeliveryWorker] = []
        self.account_workers = [self._account_worker(account) for account in config.accounts]
        self._threads: list[threading.Thread] = []
        self._signals = 0

    # -- public entry points -------------------------------------------------
    def run(self, *, install_signals: bool = True) -> int:
        """Serve until a signal (or ``request_stop``) asks for a stop; returns the exit
        code (0 on a warm stop).  Signals can only be installed from the main thread."""
        with self._prepared():
            if install_signals:
                self._install_signal_handlers()
            scheduler = self._start_scheduler()
            self._start_threads()
            log_event(_log, logging.INFO, "daemon.started", accounts=len(self.account_workers),
                      sinks=len(self.delivery_workers), db=str(self.db_path))
            while not self.stop.wait(0.5):
                pass
            log_event(_log, logging.INFO, "daemon.stopping", reason="signal")
            scheduler.shutdown(wait=False)
            self._join_threads()
        log_event(_log, logging.INFO, "daemon.stopped")
        return 0

    def run_once(self) -> OnceResult:
        """One catch-up pass of every account, then one attempt for every due delivery."""
        result = OnceResult()
        with self._prepared():
            for worker in self.account_workers:
                try:
                    worker.run_once()
                except InboundMailError as exc:
                    result.failures[worker.account.name] = str(exc)
                    log_event(_log, logging.ERROR, "imap.failed", account=worker.account.name, error=str(exc))
            for delivery in self.delivery_workers:
                delivery.run_once()
        return result

    def request_stop(self) -> None:
        self.stop.set()

    # -- wiring ---------------------------------------------------------------
    @contextmanager
    def _prepared(self) -> Iterator[None]:
        with daemon_lock(self.db_path):
            Store.open(self.db_path, raw_retention_days=self._retention_days()).close()
            self._build_sinks()
            try:
                self._build_workers()
                yield
            finally:
                for sink in self.sinks.values():
                    _close_quietly(sink)

    def _retention_days(self) -> float | None:
        return self.config.database.raw_retention / 86400 or None

    def _build_sinks(self) -> None:
        for sink_config in self.config.sinks:
            self.sinks[sink_config.name] = create_sink(sink_config)

    def _account_worker(self, account: AccountConfig) -> AccountWorker:
        options = ParseOptions.from_config(self.config.parse, account.senders)
        return AccountWorker(account, db_path=self.db_path, parse_options=options, stop=self.stop,
                             route=self.route, on_batch=self._batch_stored)

    def _build_workers(self) -> None:
        for sink_config in self.config.sinks:
            self.delivery_workers.append(
                DeliveryWorker(self.db_path, sink_config, sink=self.sinks[sink_config.name], log=_log)
            )

    def _batch_stored(self, account: AccountConfig, folder: str, result: IngestResult) -> None:
        if result.new:
            for worker in self.delivery_workers:
                worker.wake()

    def _start_threads(self) -> None:
        for worker in self.account_workers:
            self._spawn(f"imap-{worker.account.name}", worker.run)
        for delivery in self.delivery_workers:
            self._spawn(f"sink-{delivery.sink_config.name}", lambda d=delivery: d.run(self.stop))

    def _spawn(self, name: str, target: object) -> None:
        # Daemon threads: a forced exit must not wait for a sink stuck in a 30 s timeout.
        thread = threading.Thread(target=target, name=name, daemon=True)  # type: ignore[arg-type]
        thread.start()
        self._threads.append(thread)

    def _join_threads(self) -> None:
        deadline = time.monotonic() + STOP_GRACE
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        late = [t.name for t in self._threads if t.is_alive()]
        if late:
            log_event(_log, logging.WARNING, "daemon.stop_timeout", threads=",".join(late),
                      effect="their in-flight work is redone after the restart")

    def _start_scheduler(self) -> BackgroundScheduler:
        scheduler = BackgroundScheduler(job_defaults={"coalesce": True, "max_instances": 1,
                                                      "misfire_grace_time": 30})
        for worker in self.account_workers:
            account = worker.account
            # Whether the server has IDLE is only known once connected: the poll job
            # is a no-op while the worker IDLEs, the resync job runs either way.
            scheduler.add_job(worker.poll_due, "interval", seconds=max(account.poll_interval, 0.5),
                              id=f"poll-{account.name}")
            scheduler.add_job(worker.request_sync, "interval", seconds=max(account.resync_interval, 1.0),
                              jitter=min(account.resync_interval / 10, 30), id=f"resync-{account.name}")
        scheduler.add_job(self._heartbeat, "interval", seconds=10, id="heartbeat", next_run_time=_now_dt())
        scheduler.add_job(self._prune, "interval", hours=6, id="prune-raw", next_run_time=_now_dt())
        scheduler.start()
        return scheduler

    def _heartbeat(self) -> None:
        with Store.open(self.db_path) as store:
            store.set_state("heartbeat", str(time.time()))

    def _prune(self) -> None:
        with Store.open(self.db_path, raw_retention_days=self._retention_days()) as store:
            pruned = store.prune_raw()
        if pruned:
            log_event(_log, logging.INFO, "store.pruned_raw", emails=pruned)

    # -- signals ----------------------------------------------------------------
    def _install_signal_handlers(self) -> None:
        signal.signal(signal.SIGTERM, self._on_stop_signal)
        signal.signal(signal.SIGINT, self._on_stop_signal)
        signal.signal(signal.SIGHUP, self._on_hup)

    def _on_stop_signal(self, signum: int, frame: FrameType | None) -> None:
        self._signals += 1
        if self._signals > 1:
            log_event(_log, logging.WARNING, "daemon.forced_exit", signal=signal.Signals(signum).name)
            os._exit(1)
        log_event(_log, logging.INFO, "daemon.stop_requested", signal=signal.Signals(signum).name,
                  hint="send it again to force the exit")
        self.stop.set()

    def _on_hup(self, signum: int, frame: FrameType | None) -> None:
        for sink in self.sinks.values():
            reopen = getattr(sink, "reopen", None)
            if callable(reopen):
                reopen()
        log_event(_log, logging.INFO, "daemon.reopened_files")


def _now_dt() -> datetime:
    return datetime.now(UTC)


def _close_quietly(sink: Sink) -> None:
    try:
        sink.close()
    except Exception as exc:
        log_event(_log, logging.WARNING, "sink.close_failed", sink=sink.name, error=str(exc))

