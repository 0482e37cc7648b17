"""Prometheus metrics for the daemon, on ``[metrics] listen = "HOST:PORT"``.

Needs the optional ``prometheus-client`` package (``pip install
'inbound-mail[metrics]'``); nothing here imports it until metrics are asked for.
Everything lives in a registry of its own, never the library's global one.

Counted in the daemon as it works (reset by a restart, as Prometheus expects):

``inbound_mail_sms_stored_total{account}``          new SMS stored
``inbound_mail_sms_duplicates_total{account}``      emails whose SMS was already stored
``inbound_mail_emails_skipped_total{account}``      emails from other senders
``inbound_mail_deliveries_total{sink,outcome}``     attempts: delivered, failed, dead
``inbound_mail_delivery_duration_seconds{sink}``    attempt durations (histogram)
``inbound_mail_reconnects_total{account}``          sessions that ended in an error
``inbound_mail_idle_refreshes_total{account}``      IDLE re-issued after ``idle_refresh``
``inbound_mail_ack_failures_total{account}``        ``after`` actions the server refused
``inbound_mail_acks_owed{account}``                 acknowledgements owed because of them
``inbound_mail_account_connected{account}``         1 while logged in
``inbound_mail_account_last_sync_timestamp_seconds{account}``

Read from the database at each scrape (so they hold across restarts):

``inbound_mail_rejects_total{reason}``              rejects by reason category (a
                                                    fixed set, see :func:`reject_category`)
``inbound_mail_delivery_backlog{sink}``             deliveries still owed
``inbound_mail_deliveries_dead{sink}``              deliveries given up on
``inbound_mail_last_sms_timestamp_seconds{destination}``  the latest SMS to each number
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..config.model import Config
from ..errors import ConfigError, InboundMailError
from ..logs import log_event
from ..models import REJECT_CODES
from ..store.db import Store
from ..store.rows import ATTEMPT_OUTCOMES, IngestResult, epoch_of

if TYPE_CHECKING:
    from prometheus_client.metrics_core import Metric

    from ..sources.imap.worker import AccountHealth

__all__ = ["Metrics", "create_metrics", "reject_category"]

_log = logging.getLogger("inbound_mail.metrics")  # a log field: kept across the move
LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
OUTCOMES = ATTEMPT_OUTCOMES

AccountsView = Callable[[], Iterable[tuple[str, "AccountHealth"]]]


# The metric's names for two codes (kept from before the codes existed); every
# other code is its own category.
_CODE_CATEGORIES: dict[str, str] = {"oversized": "too_large", "malformed": "other"}


def reject_category(code: str) -> str:
    """A reject's metric category, from its ``code`` column only: a fixed set of names
    (a label never takes unbounded values), ``other`` for the rest."""
    if code in _CODE_CATEGORIES:
        return _CODE_CATEGORIES[code]
    return code if code in REJECT_CODES else "other"


def create_metrics(config: Config, accounts: AccountsView) -> Metrics | None:
    """The daemon's metrics, serving on ``[metrics] listen``; None when it is unset.

    ``accounts`` returns the running workers' (name, health) pairs at scrape time.
    Raises ConfigError when prometheus-client is missing or the address cannot be bound.
    """
    if config.metrics.listen is None:
        return None
    try:
        import prometheus_client  # noqa: F401
    except ImportError:
        raise ConfigError(
            "is set, but the prometheus-client package is not installed: "
            "pip install 'inbound-mail[metrics]', or remove the key",
            file=str(config.path) if config.path else None,
            key="metrics.listen",
        ) from None
    metrics = Metrics(config.database.path, accounts)
    metrics.configure(config)
    return metrics


class Metrics:
    """The daemon's collectors in a registry of their own, and the HTTP endpoint."""

    def __init__(self, db_path: Path, accounts: AccountsView) -> None:
        from prometheus_client import CollectorRegistry, Counter, Histogram

        self.registry = CollectorRegistry()
        self._server: Any = None
        self._listen: str | None = None
        self.address: tuple[str, int] | None = None
        """The bound (host, port) once serving: port 0 in the config picks a free one."""

        def counter(name: str, doc: str, labels: list[str]) -> Counter:
            return Counter(name, doc, labels, registry=self.registry)

        self.stored = counter("inbound_mail_sms_stored", "New SMS stored.", ["account"])
        self.duplicates = counter(
            "inbound_mail_sms_duplicates", "Emails whose SMS was already stored.", ["account"]
        )
        self.skipped = counter(
            "inbound_mail_emails_skipped", "Emails from other senders.", ["account"]
        )
        self.deliveries = counter(
            "inbound_mail_deliveries", "Delivery attempts by outcome.", ["sink", "outcome"]
        )
        self.latency = Histogram(
            "inbound_mail_delivery_duration_seconds",
            "Delivery attempt durations.",
            ["sink"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.accounts = _AccountCollector(accounts)
        self.registry.register(self.accounts)
        self.registry.register(_DatabaseCollector(db_path))

    def configure(self, config: Config) -> None:
        """Create every (account) and (sink) series at zero, so that a rate() has a start."""
        for account in config.accounts:
            for family in (self.stored, self.duplicates, self.skipped):
                family.labels(account.name)
        for sink in config.sinks:
            self.latency.labels(sink.name)
            for outcome in OUTCOMES:
                self.deliveries.labels(sink.name, outcome)

    # -- hooks the daemon calls ------------------------------------------------------
    def batch_stored(self, account: str, result: IngestResult) -> None:
        """An IMAP worker committed a batch."""
        self.stored.labels(account).inc(len(result.new))
        self.duplicates.labels(account).inc(len(result.duplicates))
        self.skipped.labels(account).inc(result.skipped)

    def attempt(self, sink: str, outcome: str, duration: float) -> None:
        """A delivery worker recorded an attempt (``DeliveryWorker``'s ``on_attempt``)."""
        self.deliveries.labels(sink, outcome).inc()
        self.latency.labels(sink).observe(duration)

    def retire(self, workers: Iterable[tuple[str, AccountHealth]]) -> None:
        """Workers are being replaced (a reload): keep their counts in the totals."""
        self.accounts.retire(workers)

    # -- the endpoint --------------------------------------------------------------------
    def serve(self, listen: str, *, config_file: str | None = None) -> None:
        """Serve ``/metrics`` on ``listen`` (``HOST:PORT``), moving there if elsewhere."""
        if listen == self._listen:
            return
        from prometheus_client import start_http_server

        host, _, port = listen.rpartition(":")
        host = host.strip("[]")  # "[::1]:9464"
        self.close()
        try:
            server, _thread = start_http_server(int(port), addr=host, registry=self.registry)
        except OSError as exc:
            raise ConfigError(
                f"cannot listen on {listen}: {exc.strerror or exc}",
                file=config_file,
                key="metrics.listen",
            ) from exc
        self._server, self._listen = server, listen
        self.address = (host, int(server.server_address[1]))
        log_event(_log, logging.INFO, "metrics.listening", address=f"{host}:{self.address[1]}")

    def close(self) -> None:
        """Stop serving (idempotent)."""
        server, self._server, self._listen, self.address = self._server, None, None, None
        if server is not None:
            server.shutdown()
            server.server_close()


class _AccountCollector:
    """Connection figures read from the running workers' AccountHealth at scrape time."""

    def __init__(self, accounts: AccountsView) -> None:
        self._accounts = accounts
        self._lock = threading.Lock()
        self._retired: dict[str, tuple[int, int, int]] = {}

    def retire(self, workers: Iterable[tuple[str, AccountHealth]]) -> None:
        with self._lock:
            for name, health in workers:
                reconnects, refreshes, ack_failures = self._retired.get(name, (0, 0, 0))
                self._retired[name] = (
                    reconnects + health.reconnects,
                    refreshes + health.idle_refreshes,
                    ack_failures + health.ack_failures,
                )

    def describe(self) -> list[Metric]:
        return []  # nothing to check at registration: the names are fixed here

    def collect(self) -> Iterator[Metric]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        connected = GaugeMetricFamily(
            "inbound_mail_account_connected", "1 while logged in.", labels=["account"]
        )
        last_sync = GaugeMetricFamily(
            "inbound_mail_account_last_sync_timestamp_seconds",
            "The last successful sync pass.",
            labels=["account"],
        )
        reconnects = CounterMetricFamily(
            "inbound_mail_reconnects", "Sessions ended by an error.", labels=["account"]
        )
        refreshes = CounterMetricFamily(
            "inbound_mail_idle_refreshes", "IDLE re-issued after idle_refresh.", labels=["account"]
        )
        ack_failures = CounterMetricFamily(
            "inbound_mail_ack_failures",
            "After actions (seen, move, delete) the server refused.",
            labels=["account"],
        )
        acks_owed = GaugeMetricFamily(
            "inbound_mail_acks_owed",
            "Acknowledgements owed because the server refused the after action.",
            labels=["account"],
        )
        expired = GaugeMetricFamily(
            "inbound_mail_account_authorization_expired",
            "1 while the account's OAuth2 grant is refused: run `inbound-mail auth NAME`.",
            labels=["account"],
        )
        with self._lock:
            retired = dict(self._retired)
        for name, health in self._accounts():
            old_reconnects, old_refreshes, old_ack_failures = retired.get(name, (0, 0, 0))
            ack_failures.add_metric([name], old_ack_failures + health.ack_failures)
            acks_owed.add_metric([name], health.acks_owed)
            expired.add_metric([name], 1.0 if health.state == "authorization_expired" else 0.0)
            connected.add_metric([name], 1.0 if health.connected else 0.0)
            if health.last_sync_at is not None:
                last_sync.add_metric([name], health.last_sync_at)
            reconnects.add_metric([name], old_reconnects + health.reconnects)
            refreshes.add_metric([name], old_refreshes + health.idle_refreshes)
        yield from (
            connected,
            last_sync,
            reconnects,
            refreshes,
            ack_failures,
            acks_owed,
            expired,
        )


class _DatabaseCollector:
    """Figures the database holds, read at scrape time with a connection of its own."""

    def __init__(self, db_path: Path) -> None:
        self.db_path = db_path

    def describe(self) -> list[Metric]:
        return []

    def collect(self) -> Iterator[Metric]:
        try:
            with Store.open(self.db_path) as store:
                backlog = store.backlog()
                last_sms = store.last_message_by_destination()
                reasons = list(
                    store.database.query("SELECT code, count(*) AS n FROM rejects GROUP BY code")
                )
                unauthenticated = store.trust_counts(0.0)["unauthenticated_sms"]
        except InboundMailError as exc:
            log_event(_log, logging.WARNING, "metrics.database_failed", error=str(exc))
            return
        yield from _database_families(backlog, last_sms, reasons)
        from prometheus_client.core import CounterMetricFamily

        # authenticate = "report": SMS stored and delivered without proof of origin.
        family = CounterMetricFamily(
            "inbound_mail_sms_unauthenticated",
            "SMS stored without proof that the provider sent them (authenticate = report).",
        )
        family.add_metric([], unauthenticated)
        yield family


def _database_families(
    backlog: dict[str, dict[str, int]], last_sms: dict[str, str], reasons: list[dict[str, Any]]
) -> Iterator[Metric]:
    from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

    pending = GaugeMetricFamily(
        "inbound_mail_delivery_backlog", "Deliveries still owed.", labels=["sink"]
    )
    dead = GaugeMetricFamily(
        "inbound_mail_deliveries_dead", "Deliveries given up on.", labels=["sink"]
    )
    for sink, counts in sorted(backlog.items()):
        pending.add_metric([sink], counts.get("pending", 0))
        dead.add_metric([sink], counts.get("dead", 0))
    last = GaugeMetricFamily(
        "inbound_mail_last_sms_timestamp_seconds",
        "The latest SMS to each number.",
        labels=["destination"],
    )
    for destination, received_at in sorted(last_sms.items()):
        last.add_metric([destination], epoch_of(received_at))
    rejects = CounterMetricFamily(
        "inbound_mail_rejects", "Rejected emails in the database, by reason.", labels=["reason"]
    )
    by_category: dict[str, int] = {}
    for row in reasons:
        category = reject_category(str(row["code"]))
        by_category[category] = by_category.get(category, 0) + int(row["n"])
    for category, count in sorted(by_category.items()):
        rejects.add_metric([category], count)
    yield from (pending, dead, last, rejects)
