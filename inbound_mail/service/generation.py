"""The workers one config produces, for :mod:`inbound_mail.service.daemon`.

A :class:`Generation` holds an IMAP worker per account, a sink and a delivery
worker per sink, their threads and their scheduled jobs, all sharing one stop
event.  The daemon runs one generation at a time; a reload builds the next one
(which validates it), stops the running one warmly, then starts the new one.

It also says whether its workers are alive: every loop leaves a monotonic
``last_tick``, and a loop that has been silent for longer than anything it
can legitimately block on is stalled (see :meth:`Generation.stalled`).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from apscheduler.schedulers.base import BaseScheduler

from ..config.model import AccountConfig, Config, ParseOptions, SinkConfig, parse_duration
from ..delivery import DeliveryWorker, OnAttempt, make_router
from ..logs import log_event
from ..parse.authenticity import KeyResolver, Verifier
from ..sinks import Sink, create_sink
from ..sources.imap.worker import (
    RESTING_STATES,
    SETTLING_STATES,
    AccountState,
    AccountWorker,
)
from ..store.rows import IngestResult

__all__ = ["Generation", "account_stalled"]

_log = logging.getLogger("inbound_mail.service")
OnBatch = Callable[[AccountConfig, str, IngestResult], None]
# An account worker ticks at least every second while it IDLEs or polls, and after
# every parsed email and stored batch; each blocking call it makes is bounded by the socket timeout
# (connect_timeout).  Silence for three timeouts means it is stuck.
MIN_STALL = 5.0
# A delivery worker's loop comes round after each batch: sends within a 1 s budget,
# the last of which may take the sink's whole timeout.
DELIVERY_STALL_SLACK = 60.0
_STATE_WORDS: dict[AccountState, str] = {"backoff": "retrying", "connected": "syncing"}


@dataclass(slots=True)
class Generation:
    """Workers, sinks, threads and jobs built from one config."""

    config: Config
    stop: threading.Event = field(default_factory=threading.Event)
    account_workers: list[AccountWorker] = field(default_factory=list)
    sinks: dict[str, Sink] = field(default_factory=dict)
    delivery_workers: list[DeliveryWorker] = field(default_factory=list)
    threads: list[threading.Thread] = field(default_factory=list)
    _jobs: list[str] = field(default_factory=list)

    @classmethod
    def accounts_only(cls, config: Config, *, on_batch: OnBatch) -> Generation:
        """The account workers (no I/O yet); :meth:`build_sinks` adds the rest."""
        gen = cls(config)
        route = make_router(config.sinks)
        db_path = config.database.path
        resolver = KeyResolver.from_config(config.parse)  # one key cache for every account
        for account in config.accounts:
            options = ParseOptions.from_config(config.parse, account.senders)
            worker = AccountWorker(
                account,
                db_path=db_path,
                parse_options=options,
                stop=gen.stop,
                route=route,
                on_batch=on_batch,
                verifier=Verifier.from_config(config.parse, account, resolver),
            )
            gen.account_workers.append(worker)
        return gen

    def build_sinks(self, log: logging.Logger, on_attempt: OnAttempt) -> None:
        """Build every sink and its delivery worker; on a failure, close what was built."""
        try:
            for sink_config in self.config.sinks:
                sink = self.sinks[sink_config.name] = create_sink(sink_config)
                self.delivery_workers.append(
                    DeliveryWorker(
                        self.config.database.path,
                        sink_config,
                        sink=sink,
                        log=log,
                        on_attempt=on_attempt,
                    )
                )
        except BaseException:
            self.close_sinks()
            raise

    # -- running -----------------------------------------------------------------------
    def start(self, scheduler: BaseScheduler) -> None:
        """Start a thread per worker and each account's poll and resync jobs."""
        for worker in self.account_workers:
            self._spawn(f"imap-{worker.account.name}", worker.run)
        for delivery in self.delivery_workers:
            self._spawn(f"sink-{delivery.name}", _runner(delivery, self.stop))
        for worker in self.account_workers:
            account = worker.account
            # Whether the server has IDLE is only known once connected: the poll job
            # is a no-op while the worker IDLEs, the resync job runs either way.
            poll, resync = f"poll-{account.name}", f"resync-{account.name}"
            scheduler.add_job(
                worker.poll_due, "interval", id=poll, seconds=max(account.poll_interval, 0.5)
            )
            scheduler.add_job(
                worker.request_sync,
                "interval",
                id=resync,
                seconds=max(account.resync_interval, 1.0),
                jitter=min(account.resync_interval / 10, 30),
            )
            self._jobs += [poll, resync]

    def _spawn(self, name: str, target: Callable[[], object]) -> None:
        # Daemon threads: a forced exit must not wait for a sink stuck in a 30 s timeout.
        thread = threading.Thread(target=target, name=name, daemon=True)
        thread.start()
        self.threads.append(thread)

    def stop_and_join(
        self, scheduler: BaseScheduler | None, grace: float, tick: Callable[[], None] | None = None
    ) -> None:
        """Stop warmly; wait up to ``grace`` seconds (calling ``tick``); close the sinks."""
        self.stop.set()
        if scheduler is not None:
            for job in self._jobs:
                if scheduler.get_job(job) is not None:
                    scheduler.remove_job(job)
        deadline = time.monotonic() + grace
        for thread in self.threads:
            while thread.is_alive() and time.monotonic() < deadline:
                thread.join(min(0.5, max(0.0, deadline - time.monotonic())))
                if tick is not None:
                    tick()
        late = [t.name for t in self.threads if t.is_alive()]
        if late:
            log_event(
                _log,
                logging.WARNING,
                "daemon.stop_timeout",
                threads=",".join(late),
                effect="their in-flight work is redone later",
            )
        self.close_sinks()

    def close_sinks(self) -> None:
        for sink in self.sinks.values():
            try:
                sink.close()
            except Exception as exc:
                log_event(
                    _log, logging.WARNING, "sink.close_failed", sink=sink.name, error=str(exc)
                )
        self.sinks.clear()

    # -- health ------------------------------------------------------------------------
    @property
    def ready(self) -> bool:
        """Every account has connected, or failed and is retrying."""
        return all(
            w.health.state not in SETTLING_STATES or w.health.reconnects
            for w in self.account_workers
        )

    def stalled(self, now: float) -> list[str]:
        """The names of the loops showing no sign of life (``imap-main``, ``sink-crm``)."""
        names = [f"imap-{w.account.name}" for w in self.account_workers if account_stalled(w, now)]
        names += [f"sink-{d.name}" for d in self.delivery_workers if _delivery_stalled(d, now)]
        if not self.stop.is_set():
            names += [f"{t.name} (ended)" for t in self.threads if not t.is_alive()]
        return names

    def state_summary(self) -> str:
        """``1 idle, 1 retrying``: the accounts by connection state."""
        words: dict[str, int] = {}
        for worker in self.account_workers:
            word = _STATE_WORDS.get(worker.health.state, worker.health.state)
            words[word] = words.get(word, 0) + 1
        return ", ".join(f"{n} {word}" for word, n in sorted(words.items())) or "none"


def account_stalled(worker: AccountWorker, now: float) -> bool:
    """True when an account worker has been silent for longer than it may block."""
    health = worker.health
    if health.state in RESTING_STATES:
        return False
    return now - health.last_tick > max(MIN_STALL, 3 * worker.account.connect_timeout)


def _delivery_stalled(worker: DeliveryWorker, now: float) -> bool:
    return now - worker.last_tick > 2 * _sink_timeout(worker.sink_config) + DELIVERY_STALL_SLACK


def _sink_timeout(config: SinkConfig) -> float:
    """The sink's ``timeout`` option when it has one (webhook, command, redis and nats
    do; jsonl and plug-ins may not), else 30 s."""
    try:
        return parse_duration(config.options.get("timeout", 30.0))
    except ValueError:
        return 30.0


def _runner(worker: DeliveryWorker, stop: threading.Event) -> Callable[[], None]:
    return lambda: worker.run(stop)
