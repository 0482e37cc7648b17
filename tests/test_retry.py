"""Resuming deliveries on demand (`retry`, SIGHUP), the outbox's one status vocabulary,
and `run --once` delivering every sink at the same time.

Real parts: a real Store, the webhook receiver on 127.0.0.1, a private Dovecot for
the daemon's account, the daemon as a real process where another process matters.
"""

from __future__ import annotations

import json
import signal
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result

import inbound_mail.delivery as delivery_module
from inbound_mail.cli import cli
from inbound_mail.config.model import RetryPolicy, SinkConfig
from inbound_mail.config.reader import load_config
from inbound_mail.delivery import DeliveryWorker
from inbound_mail.errors import TemporaryDeliveryError
from inbound_mail.models import EmailOrigin, SmsRecord
from inbound_mail.service.daemon import Daemon
from inbound_mail.sinks import DeliveryContext, DeliveryOutcome
from inbound_mail.store.db import Store
from inbound_mail.store.rows import IngestItem
from inbound_mail.testing.webhook_receiver import Answer, WebhookReceiver
from testsupport.mailbox import Mailbox

from helpers import DaemonProcess, record, wait_until, write_config

HOUR = RetryPolicy(retry_base=3600.0, retry_cap=3600.0, max_attempts=100, max_age=7 * 86400)
FAST_ACCOUNT: dict[str, Any] = {"idle_deadline": 5.0, "connect_timeout": 5.0, "poll_interval": 1.0}


def queue(db: Path, n: int, sinks: tuple[str, ...] = ("hook",), start: int = 0) -> None:
    items = [
        IngestItem(b"raw", record(i), EmailOrigin(kind="eml", path="x", key=f"k{i}"))
        for i in range(start, start + n)
    ]
    with Store.open(db) as store:
        store.ingest(items, route=lambda r: sinks)


def outbox(db: Path, sink: str = "hook", **kwargs: Any) -> list[dict[str, Any]]:
    with Store.open(db) as store:
        return list(store.deliveries(sink=sink, **kwargs))


def invoke(config: Path, *args: str) -> Result:
    return CliRunner().invoke(cli, ["--config", str(config), *args])


@pytest.fixture
def receiver() -> Iterator[WebhookReceiver]:
    with WebhookReceiver() as server:
        yield server


def _hook(receiver: WebhookReceiver, **extra: Any) -> dict[str, Any]:
    return {"name": "hook", "type": "webhook", "url": receiver.url, "retry_base": "1h",
            "retry_cap": "1h", **extra}  # fmt: skip


def _outage(receiver: WebhookReceiver) -> None:
    """The receiver is "down": 503 with a Retry-After of an hour, so the backoff
    alone would keep the rows waiting for an hour."""
    receiver.default = Answer(status=503, body="down", headers=(("Retry-After", "3600"),))


# -- item 8: retry, as another process than the daemon --------------------------------------
def test_retry_command_makes_a_running_daemons_failed_deliveries_due_at_once(
    mailbox: Mailbox, receiver: WebhookReceiver, tmp_path: Path
) -> None:
    db = tmp_path / "sms.db"
    queue(db, 3)
    _outage(receiver)
    config = write_config(
        tmp_path / "c.toml", [mailbox.account(**FAST_ACCOUNT)], db=db, sinks=[_hook(receiver)]
    )
    daemon = DaemonProcess(config)
    try:
        # Sequential: the head row failed, the two behind it wait for it.
        wait_until(lambda: outbox(db)[0]["status"] == "failed", 20)
        assert [r["status"] for r in outbox(db)] == ["failed", "pending", "pending"]
        receiver.default = Answer()  # the receiver is back; the schedule says "in an hour"
        result = invoke(config, "retry", "hook")
        assert result.exit_code == 0, result.output
        assert "hook: 3 deliveries due now" in result.output
        wait_until(lambda: all(r["status"] == "delivered" for r in outbox(db)), 5)
        assert all(r["last_error"] is None for r in outbox(db)), "delivered rows keep no error"
    finally:
        daemon.signal()
        daemon.wait(15)
        daemon.close()


def test_a_waiting_worker_notices_a_retry_without_its_periodic_recheck(
    db: Path, receiver: WebhookReceiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Without the schedule counter the worker would only look again at its
    # periodic recheck (made an hour here) or at the row's next_attempt_at.
    monkeypatch.setattr(delivery_module, "IDLE_RECHECK", 3600.0)
    queue(db, 1)
    _outage(receiver)
    config = SinkConfig(name="hook", type="webhook", options={"url": receiver.url}, retry=HOUR)
    worker = DeliveryWorker(db, config)
    stop = threading.Event()
    thread = threading.Thread(target=worker.run, args=(stop,), daemon=True)
    thread.start()
    try:
        wait_until(lambda: outbox(db)[0]["status"] == "failed", 10)
        receiver.default = Answer()
        with Store.open(db) as store:  # another connection, as the CLI's
            assert store.retry_now("hook").due == 1
        wait_until(lambda: outbox(db)[0]["status"] == "delivered", 5)
    finally:
        stop.set()
        thread.join(10)
        worker.close()
    assert not thread.is_alive()


class Outage:
    """A sink with ``deliver_many`` that fails every record for an hour while ``down``."""

    name = "batch"

    def __init__(self) -> None:
        self.down = True

    def deliver(self, record: SmsRecord, context: DeliveryContext) -> str | None:
        raise AssertionError("a batch sink gets deliver_many")

    def deliver_many(
        self, items: Sequence[tuple[SmsRecord, DeliveryContext]]
    ) -> list[DeliveryOutcome]:
        if self.down:
            return [TemporaryDeliveryError("down", retry_after=3600) for _ in items]
        return ["ok" for _ in items]

    def flush(self) -> None:
        pass

    def close(self) -> None:
        pass


@pytest.mark.parametrize("parallel", [1, 4])
def test_a_batching_worker_notices_a_retry_without_its_periodic_recheck(
    db: Path, monkeypatch: pytest.MonkeyPatch, parallel: int
) -> None:
    monkeypatch.setattr(delivery_module, "IDLE_RECHECK", 3600.0)
    queue(db, 30)
    sink = Outage()
    config = SinkConfig(name="hook", type="x", retry=HOUR, parallel=parallel)
    worker = DeliveryWorker(db, config, sink=sink)
    stop = threading.Event()
    thread = threading.Thread(target=worker.run, args=(stop,), daemon=True)
    thread.start()
    try:
        # Sequential: the whole first batch failed; in parallel, every row did.
        wait_until(lambda: all(r["status"] == "failed" for r in outbox(db)), 10)
        sink.down = False
        with Store.open(db) as store:  # another connection, as the CLI's
            assert store.retry_now("hook").due == 30
        wait_until(lambda: all(r["status"] == "delivered" for r in outbox(db)), 5)
    finally:
        stop.set()
        thread.join(10)
    assert not thread.is_alive()


@pytest.mark.parametrize("parallel", [1, 4])  # 4: completions are recorded in batches
def test_sighup_makes_pending_deliveries_due_now(
    mailbox: Mailbox, receiver: WebhookReceiver, tmp_path: Path, parallel: int
) -> None:
    db = tmp_path / "sms.db"
    queue(db, 1)
    _outage(receiver)
    sinks = [_hook(receiver, parallel=parallel)]
    config = write_config(
        tmp_path / "c.toml", [mailbox.account(**FAST_ACCOUNT)], db=db, sinks=sinks
    )
    daemon = DaemonProcess(config)
    try:
        wait_until(lambda: outbox(db)[0]["status"] == "failed", 20)
        receiver.default = Answer()
        daemon.signal(signal.SIGHUP)
        daemon.wait_log("daemon.deliveries_due")
        wait_until(lambda: outbox(db)[0]["status"] == "delivered", 10)
    finally:
        daemon.signal()
        daemon.wait(15)
        daemon.close()


def test_retry_dead_flag_revives_dead_rows_and_retry_needs_a_sink(
    db: Path, tmp_path: Path, receiver: WebhookReceiver
) -> None:
    queue(db, 2)
    with Store.open(db) as store:
        first, _ = store.pending_deliveries("hook")
        store.record_attempt(first.id, outcome="dead", started_at=1.0, duration=0.1, error="410")
    config = write_config(tmp_path / "c.toml", db=db, sinks=[_hook(receiver)])
    assert invoke(config, "retry").exit_code == 2  # neither a sink nor --all
    assert "no sink named 'nope'" in invoke(config, "retry", "nope").output
    plain = invoke(config, "retry", "--all")
    assert plain.exit_code == 0 and "hook: 1 delivery due now" in plain.output
    assert [r["status"] for r in outbox(db)] == ["dead", "pending"]
    revived = invoke(config, "retry", "hook", "--dead")
    assert "hook: 2 deliveries due now (1 of them dead before)" in revived.output
    assert [r["status"] for r in outbox(db)] == ["pending", "pending"]


# -- item 8: one vocabulary for the outbox ----------------------------------------------------
def test_deliveries_status_filter_and_column_use_the_same_words(
    db: Path, tmp_path: Path, receiver: WebhookReceiver
) -> None:
    queue(db, 4)
    with Store.open(db) as store:
        a, b, c, _ = store.pending_deliveries("hook")
        store.record_attempt(a.id, outcome="failed", started_at=1.0, duration=0.1, error="503")
        store.record_attempt(b.id, outcome="dead", started_at=1.0, duration=0.1, error="410")
        store.record_attempt(c.id, outcome="failed", started_at=1.0, duration=0.1, error="503")
        store.record_attempt(c.id, outcome="delivered", started_at=2.0, duration=0.1)
    config = write_config(tmp_path / "c.toml", db=db, sinks=[_hook(receiver)])

    def listed(*status: str) -> list[tuple[int, str, str | None]]:
        args = [arg for s in status for arg in ("--status", s)]
        result = invoke(config, "deliveries", "--format", "json", *args)
        assert result.exit_code == 0, result.output
        return [(r["id"], r["status"], r["last_error"]) for r in json.loads(result.output)]

    assert listed("failed") == [(a.id, "failed", "503")]
    assert listed("pending") == [(4, "pending", None)]
    assert listed("dead") == [(b.id, "dead", "410")]
    assert listed("delivered") == [(c.id, "delivered", None)]  # its old error is gone
    assert [s for _, s, _ in listed("pending", "failed")] == ["failed", "pending"]
    for status in ("pending", "failed", "dead", "delivered"):
        assert all(s == status for _, s, _ in listed(status))
    table = invoke(config, "sinks").output.splitlines()[-1].split()
    assert table == ["hook", "webhook", "1", "1", "1", "1"]  # pending failed dead delivered


# -- item 11: run --once, every sink at the same time ---------------------------------------
def test_run_once_does_not_let_a_slow_sink_hold_up_the_others(
    mailbox: Mailbox, receiver: WebhookReceiver, tmp_path: Path
) -> None:
    db = tmp_path / "sms.db"
    out = tmp_path / "fast.jsonl"
    queue(db, 1, sinks=("slow", "fast"))
    receiver.default = Answer(delay=60.0)  # answers after a minute (or when it goes down)
    sinks = [
        {"name": "slow", "type": "webhook", "url": receiver.url, "timeout": "2m"},
        {"name": "fast", "type": "jsonl", "path": str(out)},
    ]
    config = write_config(
        tmp_path / "c.toml", [mailbox.account(**FAST_ACCOUNT)], db=db, sinks=sinks
    )
    daemon = Daemon(load_config(config))
    done = threading.Event()

    def run_once_then_done() -> None:
        daemon.run_once()
        done.set()

    thread = threading.Thread(target=run_once_then_done, daemon=True)
    thread.start()
    try:
        receiver.wait_for(1, 20)  # the slow sink's request is in flight, unanswered
        wait_until(lambda: outbox(db, "fast")[0]["status"] == "delivered", 10)
        assert not done.is_set()
        assert out.read_text(encoding="utf-8").count("\n") == 1
    finally:
        receiver.down()  # the slow attempt fails at once; run_once returns
        thread.join(30)
    assert done.is_set()
    assert outbox(db, "slow")[0]["status"] == "failed"


def test_retry_dead_counts_in_the_singular(
    db: Path, tmp_path: Path, receiver: WebhookReceiver
) -> None:
    queue(db, 1)
    with Store.open(db) as store:
        [row] = store.pending_deliveries("hook")
        store.record_attempt(row.id, outcome="dead", started_at=1.0, duration=0.1, error="410")
    config = write_config(tmp_path / "c.toml", db=db, sinks=[_hook(receiver)])
    result = invoke(config, "retry-dead", "--sink", "hook")
    assert "requeued 1 dead delivery" in result.output and "deliveries" not in result.output
