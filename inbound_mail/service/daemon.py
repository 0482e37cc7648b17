"""The daemon: one worker thread per account and per sink, a scheduler, a stop flag.

``Daemon.run()`` is the long-running mode; ``Daemon.run_once()`` the burst mode
(one catch-up pass of every account, then one attempt for every due delivery).
The first SIGTERM or SIGINT asks for a warm stop: workers finish the batch in
hand, commit, log out, and the process exits 0.  A second signal forces the exit.

SIGHUP makes every pending delivery due now (a receiver may be back), then
re-reads the config.  An invalid one (or one whose secrets cannot be read) is
refused with a log line, and the running config stays.  A valid one replaces
every worker (:class:`~inbound_mail.service.generation.Generation`): the old
ones stop warmly (batch committed, attempts recorded), then new ones start from
the new config, in the same process.  Sink files are reopened either way
(logrotate).  ``database.path`` and ``metrics.listen`` need a restart.

Under systemd (``Type=notify``) the main thread tells the service manager how
things stand (:mod:`inbound_mail.service.notify`): READY=1 once every account has
connected or is retrying, a STATUS= line, and WATCHDOG=1 only while every
worker shows a recent sign of life.  The heartbeat job writes what
``inbound-mail status`` reads.
"""

from __future__ import annotations

import faulthandler
import json
import logging
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from datetime import UTC, datetime
from types import FrameType

from apscheduler.schedulers.background import BackgroundScheduler

from ..config.model import AccountConfig, Config
from ..config.reader import load_config
from ..delivery import DeliveryWorker, run_once_concurrently
from ..errors import ConfigError, ImapError, InboundMailError, StoreError
from ..logs import log_event
from ..oauth import read_client_secret
from ..secrets import exposed_secrets_warning, read_password
from ..sinks import Sink
from ..sources.imap.worker import AccountHealth, AccountWorker
from ..store.db import Store
from ..store.lock import daemon_lock
from ..store.rows import AttemptOutcome, IngestResult
from .generation import Generation, account_stalled
from .metrics import Metrics, create_metrics
from .notify import Health, Notifier, Supervisor, watchdog_interval
from .status import (
    ACCOUNT_PREFIX,
    DAEMON_KEY,
    HEARTBEAT_KEY,
    HeartbeatFile,
    account_state,
    daemon_state,
)

__all__ = ["Daemon", "OnceResult"]

_log = logging.getLogger("inbound_mail.service")
STOP_GRACE = 4.0
RELOAD_GRACE = 35.0  # a sink's default 30 s timeout, and a little: nothing in flight is abandoned
HEARTBEAT_INTERVAL = 10.0


@dataclass(slots=True)
class OnceResult:
    """What ``run --once`` did; ``failures`` maps account names to their error."""

    failures: dict[str, str] = field(default_factory=dict)

    @property
    def exit_code(self) -> int:
        return 1 if self.failures else 0


class Daemon:
    """Wires config, store, workers, the scheduler, metrics and systemd together.

    ``reload`` returns a freshly read config for SIGHUP (default: the same file
    again); ``configure_logging`` applies a reloaded config's ``[log]``.
    """

    def __init__(
        self,
        config: Config,
        *,
        reload: Callable[[], Config] | None = None,
        configure_logging: Callable[[Config], None] | None = None,
        notifier: Notifier | None = None,
    ) -> None:
        self.db_path = config.database.path
        self.stop = threading.Event()
        self.notifier = notifier or Notifier.from_environ()
        self.metrics: Metrics | None = None
        self._reload_config = reload or _same_file(config)
        self._configure_logging = configure_logging
        self._gen = Generation.accounts_only(config, on_batch=self._batch_stored)
        self._scheduler: BackgroundScheduler | None = None
        self._signals = 0
        self._reload_pending = False
        self._started_at = time.time()
        self._written: dict[str, str] = {}
        self._next_heartbeat = 0.0
        self._heartbeat_error: str | None = None
        self._written_storage: str | None = None
        self._beacon = HeartbeatFile(self.db_path)
        self._beacon_error: str | None = None
        self._beat_lock = threading.Lock()
        self._stopped = False
        self._lock = threading.Lock()
        self._stored = 0
        self._outcomes: dict[AttemptOutcome, int] = {"delivered": 0, "failed": 0, "dead": 0}

    # -- the running generation ------------------------------------------------------
    @property
    def config(self) -> Config:
        return self._gen.config

    @property
    def account_workers(self) -> list[AccountWorker]:
        return self._gen.account_workers

    @property
    def delivery_workers(self) -> list[DeliveryWorker]:
        return self._gen.delivery_workers

    @property
    def sinks(self) -> dict[str, Sink]:
        return self._gen.sinks

    # -- public entry points -----------------------------------------------------------
    def run(self, *, install_signals: bool = True) -> int:
        """Serve until a signal (or ``request_stop``) asks for a stop; returns the exit
        code (0 on a warm stop).  Signals can only be installed from the main thread."""
        if install_signals:  # first of all: a SIGTERM during start-up is a warm stop too
            self._install_signal_handlers()
        with self._prepared(), self._heartbeats():
            self._scheduler = scheduler = self._start_scheduler()
            self._gen.start(scheduler)
            log_event(
                _log,
                logging.INFO,
                "daemon.started",
                accounts=len(self.account_workers),
                sinks=len(self.delivery_workers),
                db=str(self.db_path),
            )
            self._supervise(Supervisor(self.notifier, watchdog=watchdog_interval()))
            log_event(_log, logging.INFO, "daemon.stopping", reason="signal")
            self.notifier.stopping()
            self._gen.stop_and_join(scheduler, STOP_GRACE)
            scheduler.shutdown(wait=False)
            self._record_stop()
        log_event(_log, logging.INFO, "daemon.stopped")
        return 0

    def run_once(self) -> OnceResult:
        """One catch-up pass of every account, then one attempt for every due delivery."""
        result = OnceResult()
        with self._prepared(serve_metrics=False):
            for worker in self.account_workers:
                try:
                    worker.run_once()
                except InboundMailError as exc:
                    # The CLI and the log line name the account: keep it out of the reason.
                    named = isinstance(exc, ImapError) and exc.account == worker.account.name
                    reason = exc.reason if isinstance(exc, ImapError) and named else str(exc)
                    result.failures[worker.account.name] = reason
                    log_event(
                        _log,
                        logging.ERROR,
                        "imap.failed",
                        account=worker.account.name,
                        error=reason,
                    )
            # Every sink at once: a slow one does not hold up the others.
            run_once_concurrently(self.delivery_workers)
        return result

    def request_stop(self) -> None:
        """Ask for a warm stop (from any thread)."""
        self.stop.set()
        self._gen.stop.set()

    def request_reload(self) -> None:
        """Ask for what SIGHUP does; the main loop re-reads the config."""
        self._reload_pending = True

    # -- wiring ------------------------------------------------------------------------
    @contextmanager
    def _prepared(self, *, serve_metrics: bool = True) -> Iterator[None]:
        exposed = exposed_secrets_warning(self.config)
        if exposed is not None:
            log_event(_log, logging.WARNING, "config.secrets_exposed", problem=exposed)
        with daemon_lock(self.db_path):
            Store.open(self.db_path, raw_retention_days=self._retention_days()).close()
            if serve_metrics:
                self.metrics = create_metrics(self.config, self._account_healths)
            try:
                if self.metrics is not None:
                    self.metrics.serve(
                        str(self.config.metrics.listen), config_file=_file(self.config)
                    )
                self._gen.build_sinks(_log, self._attempted)
                yield
            finally:
                self._gen.close_sinks()
                if self.metrics is not None:
                    self.metrics.close()

    def _retention_days(self) -> float | None:
        return self.config.database.raw_retention_days

    def _batch_stored(self, account: AccountConfig, folder: str, result: IngestResult) -> None:
        with self._lock:
            self._stored += len(result.new)
        if self.metrics is not None:
            self.metrics.batch_stored(account.name, result)
        if result.new:
            for worker in self.delivery_workers:
                worker.wake()

    def _attempted(self, sink: str, outcome: AttemptOutcome, duration: float) -> None:
        with self._lock:
            self._outcomes[outcome] = self._outcomes.get(outcome, 0) + 1
        if self.metrics is not None:
            self.metrics.attempt(sink, outcome, duration)

    def _account_healths(self) -> list[tuple[str, AccountHealth]]:
        return [(w.account.name, w.health) for w in self.account_workers]

    def _start_scheduler(self) -> BackgroundScheduler:
        scheduler = BackgroundScheduler(
            job_defaults={"coalesce": True, "max_instances": 1, "misfire_grace_time": 30}
        )
        scheduler.add_job(self._heartbeat, "interval", seconds=1, id="heartbeat")
        scheduler.add_job(self._prune, "interval", hours=6, id="prune-raw", next_run_time=_now_dt())
        scheduler.start()
        return scheduler

    @contextmanager
    def _heartbeats(self) -> Iterator[None]:
        """The heartbeat file open, and a first beat written at once: until then
        ``status`` would read the previous run's "stopped"."""
        try:
            self._beacon.open()
        except OSError as exc:
            self._beacon_failed(exc)
        try:
            self._heartbeat()
            yield
        finally:
            with self._beat_lock:  # no beat may write to a closed (or reused) descriptor
                self._stopped = True
                self._beacon.close()

    def _heartbeat(self) -> None:
        """Write what ``status`` reads (each account's state, the daemon's, the time)
        every HEARTBEAT_INTERVAL, and at once when an account's state or the storage
        failure changes."""
        workers, now = self.account_workers, time.monotonic()
        states = {
            w.account.name: account_state(w.health, stalled=account_stalled(w, now))
            for w in workers
        }
        storage = self._storage_error(workers)
        if (
            states == self._written
            and storage == self._written_storage
            and now < self._next_heartbeat
            and self._heartbeat_error is None
        ):
            return
        if self._beat(states, storage):
            self._written, self._written_storage = states, storage
            self._next_heartbeat = now + HEARTBEAT_INTERVAL

    def _storage_error(self, workers: list[AccountWorker]) -> str | None:
        """The database failure the daemon meets now: its own heartbeat's, else a worker's."""
        if self._heartbeat_error is not None:
            return self._heartbeat_error
        return next((w.health.storage_error for w in workers if w.health.storage_error), None)

    def _beat(
        self, states: dict[str, str], storage: str | None, *, stopped_at: float | None = None
    ) -> bool:
        """One beat to the database, then to the heartbeat file (which has it even when
        the database cannot take it); True when the database took it."""
        with self._beat_lock:
            if self._stopped:
                return True  # the stop is the last word: a late beat must not hide it
            self._stopped = stopped_at is not None
            beat, pid = time.time(), os.getpid()
            daemon = daemon_state(
                pid, self._started_at, list(states), storage_error=storage, stopped_at=stopped_at
            )
            stored = True
            try:
                with Store.open(self.db_path) as store:
                    for name, value in states.items():
                        store.set_state(ACCOUNT_PREFIX + name, value)
                    store.set_state(DAEMON_KEY, json.dumps(daemon))
                    store.set_state(HEARTBEAT_KEY, str(beat))
            except StoreError as exc:  # a full disk, say: one line, not a traceback every 10 s
                if str(exc) != self._heartbeat_error:
                    log_event(_log, logging.ERROR, "daemon.heartbeat_failed", error=str(exc))
                self._heartbeat_error = daemon["storage_error"] = str(exc)
                stored = False
            else:
                self._heartbeat_error = None
            try:
                self._beacon.write({**daemon, "heartbeat_at": beat})
            except OSError as exc:
                self._beacon_failed(exc)
            return stored

    def _record_stop(self) -> None:
        """Tell ``status`` the daemon stopped cleanly, and when."""
        states = {
            w.account.name: account_state(w.health, stalled=False) for w in self.account_workers
        }
        self._beat(states, self._storage_error(self.account_workers), stopped_at=time.time())

    def _beacon_failed(self, exc: OSError) -> None:
        if str(exc) != self._beacon_error:  # once per distinct error
            log_event(
                _log,
                logging.WARNING,
                "daemon.heartbeat_file_failed",
                path=str(self._beacon.path),
                error=str(exc),
                effect="status reads the heartbeat from the database alone",
            )
        self._beacon_error = str(exc)

    def _prune(self) -> None:
        with Store.open(self.db_path, raw_retention_days=self._retention_days()) as store:
            pruned = store.prune_raw()
        if pruned:
            log_event(_log, logging.INFO, "store.pruned_raw", emails=pruned)

    # -- the main loop: supervision and reloads -----------------------------------------
    def _supervise(self, supervisor: Supervisor) -> None:
        while not self.stop.is_set():
            if self._reload_pending:
                self._reload_pending = False
                self._reload(supervisor)
            supervisor.tick(self._health())
            self.stop.wait(supervisor.period)

    def _health(self) -> Health:
        gen = self._gen
        with self._lock:
            stored, out = self._stored, dict(self._outcomes)
        status = (
            f"accounts: {gen.state_summary()}; since start: {stored} SMS stored, "
            f"{out['delivered']} delivered, {out['failed']} failed, {out['dead']} dead"
        )
        return Health(ready=gen.ready, stalled=tuple(gen.stalled(time.monotonic())), status=status)

    def _reload(self, supervisor: Supervisor) -> None:
        log_event(_log, logging.INFO, "daemon.reload_requested")
        self._deliveries_due_now()
        try:
            new = self._next_generation(self._reload_config())
        except InboundMailError as exc:
            log_event(
                _log,
                logging.ERROR,
                "daemon.reload_failed",
                error=str(exc),
                effect="the running config stays in force; fix it and reload again",
            )
            self._reopen_files()
            return
        supervisor.reloading()
        self._gen.stop_and_join(self._scheduler, RELOAD_GRACE, tick=supervisor.keepalive)
        if self.metrics is not None:
            self.metrics.retire(self._account_healths())
            self.metrics.configure(new.config)
        self._gen = new
        if self.stop.is_set():  # a stop signal came meanwhile: the new workers stop at once
            new.stop.set()
        log_event(
            _log,
            logging.INFO,
            "daemon.reloaded",
            accounts=len(new.account_workers),
            sinks=len(new.delivery_workers),
        )
        if self._configure_logging is not None:  # after that line: a new level may hide it
            self._configure_logging(new.config)
        assert self._scheduler is not None
        new.start(self._scheduler)

    def _deliveries_due_now(self) -> None:
        """SIGHUP also means "try the sinks again": a receiver that is back, or whose
        config was just fixed, should not wait out a backoff of up to retry_cap."""
        try:
            with Store.open(self.db_path) as store:
                due = store.retry_now().due
        except StoreError as exc:
            log_event(_log, logging.ERROR, "daemon.reschedule_failed", error=str(exc))
            return
        log_event(_log, logging.INFO, "daemon.deliveries_due", deliveries=due)

    def _next_generation(self, config: Config) -> Generation:
        """A generation for ``config``, sinks built: raises if anything in it is invalid."""
        for key, old, new in (
            ("database.path", self.db_path, config.database.path),
            ("metrics.listen", self.config.metrics.listen, config.metrics.listen),
        ):
            if old != new:
                raise ConfigError(
                    f"changed from {old} to {new}, which needs a restart "
                    "(systemctl restart inbound-mail)",
                    file=_file(config),
                    key=key,
                )
        for account in config.accounts:
            # A secret that cannot be read makes the config invalid.
            if account.auth == "oauth2":
                read_client_secret(account)
            else:
                read_password(account)
        gen = Generation.accounts_only(config, on_batch=self._batch_stored)
        gen.build_sinks(_log, self._attempted)
        return gen

    def _reopen_files(self) -> None:
        for sink in self.sinks.values():
            reopen = getattr(sink, "reopen", None)
            if callable(reopen):
                reopen()
        log_event(_log, logging.INFO, "daemon.reopened_files")

    # -- signals -----------------------------------------------------------------------
    def _install_signal_handlers(self) -> None:
        signal.signal(signal.SIGTERM, self._on_stop_signal)
        signal.signal(signal.SIGINT, self._on_stop_signal)
        signal.signal(signal.SIGHUP, self._on_hup)
        # A watchdog kill (SIGABRT) then shows where every thread was stuck.
        with suppress(OSError, ValueError, AttributeError):  # stderr without a descriptor
            faulthandler.enable(all_threads=True)

    def _on_stop_signal(self, signum: int, frame: FrameType | None) -> None:
        self._signals += 1
        if self._signals > 1:
            log_event(
                _log, logging.WARNING, "daemon.forced_exit", signal=signal.Signals(signum).name
            )
            os._exit(1)
        log_event(
            _log,
            logging.INFO,
            "daemon.stop_requested",
            signal=signal.Signals(signum).name,
            hint="send it again to force the exit",
        )
        self.request_stop()

    def _on_hup(self, signum: int, frame: FrameType | None) -> None:
        self.request_reload()  # the main loop does it: never inside a signal handler


def _same_file(config: Config) -> Callable[[], Config]:
    def reload() -> Config:
        if config.path is None:
            raise ConfigError("the daemon runs on built-in defaults: no config file to re-read")
        return load_config(config.path, db_override=config.database.path)

    return reload


def _file(config: Config) -> str | None:
    return str(config.path) if config.path else None


def _now_dt() -> datetime:
    return datetime.now(UTC)
