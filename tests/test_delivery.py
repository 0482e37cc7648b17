"""The outbox worker with a real Store, real sinks and a real HTTP receiver on 127.0.0.1."""

from __future__ import annotations

import itertools
import logging
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from inbound_mail.config.model import RetryPolicy, SinkConfig, SinkFilter
from inbound_mail.delivery import (
    IDLE_RECHECK,
    DeliveryWorker,
    deliver_due,
    make_router,
    retry_delay,
)
from inbound_mail.errors import PermanentDeliveryError, TemporaryDeliveryError
from inbound_mail.logs import KeyValueFormatter
from inbound_mail.models import EmailOrigin, SmsRecord
from inbound_mail.sinks import DeliveryContext
from inbound_mail.store.db import Store
from inbound_mail.store.rows import IngestItem
from inbound_mail.testing.wait import wait_until
from inbound_mail.testing.webhook_receiver import Answer, WebhookReceiver

from helpers import record

FAST = RetryPolicy(retry_base=0.05, retry_cap=0.5, max_attempts=100, max_age=3600)
_keys = itertools.count()


def queue(db: Path, records: Sequence[SmsRecord], route: Callable[[SmsRecord], Any]) -> None:
    items = [
        IngestItem(b"raw", r, EmailOrigin(kind="eml", path="x", key=str(next(_keys))))
        for r in records
    ]
    with Store.open(db) as store:
        store.ingest(items, route=route)


def rows(db: Path, sink: str = "hook") -> list[dict[str, Any]]:
    with Store.open(db) as store:
        return list(store.deliveries(sink=sink))


def webhook(url: str, name: str = "hook", **kwargs: Any) -> SinkConfig:
    kwargs.setdefault("retry", FAST)
    return SinkConfig(name=name, type="webhook", options={"url": url}, **kwargs)


@dataclass
class Running:
    worker: DeliveryWorker
    stop: threading.Event
    thread: threading.Thread

    def finish(self, timeout: float = 5.0) -> None:
        self.stop.set()
        self.thread.join(timeout)
        assert not self.thread.is_alive(), "the worker did not stop"


@pytest.fixture
def receiver() -> Iterator[WebhookReceiver]:
    with WebhookReceiver() as server:
        yield server


@pytest.fixture
def start() -> Iterator[Callable[[DeliveryWorker], Running]]:
    running: list[Running] = []

    def starter(worker: DeliveryWorker) -> Running:
        stop = threading.Event()
        thread = threading.Thread(target=worker.run, args=(stop,), daemon=True)
        thread.start()
        running.append(Running(worker, stop, thread))
        return running[-1]

    yield starter
    for item in running:
        item.finish()
        item.worker.close()


@dataclass
class ScriptedSink:
    """A sink that runs a script of behaviours, one per call, then succeeds."""

    name: str = "scripted"
    script: list[BaseException] = field(default_factory=list)
    delivered: list[str] = field(default_factory=list)

    def deliver(self, record: SmsRecord, context: DeliveryContext) -> str | None:
        if self.script:
            raise self.script.pop(0)
        self.delivered.append(record.id)
        return "ok"

    def flush(self) -> None:
        pass

    def close(self) -> None:
        pass


# -- routing and backoff --------------------------------------------------------------
def test_router_routes_by_destination(db: Path) -> None:
    sinks = [
        SinkConfig(name="sales", type="jsonl", filter=SinkFilter(destinations=("+39111",))),
        SinkConfig(name="support", type="jsonl", filter=SinkFilter(destinations=("+39222",))),
        SinkConfig(name="archive", type="jsonl"),
    ]
    route = make_router(sinks)
    assert route(record(1, destination="+39111")) == ["sales", "archive"]
    assert route(record(2, destination="+39333")) == ["archive"]
    queue(db, [record(1, destination="+39111"), record(2, destination="+39222")], route)
    assert [r["destination"] for r in rows(db, "sales")] == ["+39111"]
    assert [r["destination"] for r in rows(db, "support")] == ["+39222"]
    assert len(rows(db, "archive")) == 2


def test_backoff_is_exponential_capped_jittered_with_a_floor() -> None:
    policy = RetryPolicy(retry_base=5, retry_cap=60)
    assert [retry_delay(policy, n, rand=lambda: 1.0) for n in (1, 2, 3, 4, 5, 99, 5000)] == [
        5,
        10,
        20,
        40,
        60,
        60,
        60,
    ]
    assert retry_delay(policy, 3, rand=lambda: 0.25) == 5.0
    assert retry_delay(policy, 1, rand=lambda: 0.0, retry_after=30) == 30
    assert all(0 <= retry_delay(policy, 3) <= 20 for _ in range(200))


# -- the running worker ------------------------------------------------------------------
def test_wake_sends_before_the_idle_recheck(
    db: Path, receiver: WebhookReceiver, start: Callable[[DeliveryWorker], Running]
) -> None:
    route = lambda r: ["hook"]  # noqa: E731
    worker = DeliveryWorker(db, webhook(receiver.url))
    start(worker)
    queue(db, [record(1)], route)
    worker.wake()
    receiver.wait_for(1)  # now the worker is idle, asleep until its next re-check
    queue(db, [record(2)], route)
    worker.wake()
    # Without the wake-up, the idle worker would find the row at its next re-check.
    receiver.wait_for(2, timeout=IDLE_RECHECK / 2)


def test_stop_ends_an_idle_loop_promptly(
    db: Path, receiver: WebhookReceiver, start: Callable[[DeliveryWorker], Running]
) -> None:
    queue(db, [record(1)], lambda r: ["hook"])
    running = start(DeliveryWorker(db, webhook(receiver.url)))
    wait_until(lambda: rows(db)[0]["status"] == "delivered")  # then it sleeps, idle
    running.finish(timeout=2)  # raises if the loop is still running then


def test_sequential_order_is_kept_while_the_head_waits(
    db: Path, receiver: WebhookReceiver, start: Callable[[DeliveryWorker], Running]
) -> None:
    receiver.fail(1, retry_after="0.5")
    records = [record(i) for i in range(4)]
    queue(db, records, lambda r: ["hook"])
    start(DeliveryWorker(db, webhook(receiver.url)))
    requests = receiver.wait_for(5)
    texts = [r.form()["text"][0] for r in requests]
    assert texts == ["message 0", "message 0", "message 1", "message 2", "message 3"]
    assert requests[1].received_at - requests[0].received_at >= 0.45  # Retry-After kept
    wait_until(lambda: all(r["status"] == "delivered" for r in rows(db)))


def test_parallel_mode_sends_concurrently(db: Path, receiver: WebhookReceiver) -> None:
    receiver.default = Answer(delay=0.5)
    queue(db, [record(i) for i in range(4)], lambda r: ["hook"])
    worker = DeliveryWorker(db, webhook(receiver.url, parallel=4))
    result = worker.run_once()
    worker.close()
    assert result.delivered == 4
    arrivals = sorted(r.received_at for r in receiver.requests)
    # Each answer takes 0.5 s: the four arrived before the first was answered.
    assert arrivals[-1] - arrivals[0] < 0.4, "all four were in flight before any answer"


def test_parallel_worker_keeps_slots_busy(
    db: Path, receiver: WebhookReceiver, start: Callable[[DeliveryWorker], Running]
) -> None:
    receiver.script(Answer(delay=1.5))  # one slow send must not hold up the others
    queue(db, [record(i) for i in range(6)], lambda r: ["hook"])
    start(DeliveryWorker(db, webhook(receiver.url, parallel=2)))
    wait_until(lambda: sum(r["status"] == "delivered" for r in rows(db)) >= 5, 1.2)


def test_max_attempts_makes_it_dead(db: Path, receiver: WebhookReceiver) -> None:
    receiver.default = Answer(status=503, body="down")
    queue(db, [record(1)], lambda r: ["hook"])
    policy = RetryPolicy(retry_base=0.001, retry_cap=0.001, max_attempts=3, max_age=3600)
    worker = DeliveryWorker(db, webhook(receiver.url, retry=policy))
    outcomes = [worker.run_once() for _ in range(4) if wait_for_due(db)]
    worker.close()
    assert [(o.failed, o.dead) for o in outcomes] == [(1, 0), (1, 0), (0, 1), (0, 0)]
    (row,) = rows(db)
    assert row["status"] == "dead" and row["attempts"] == 3
    assert (
        row["last_error"]
        == "gave up after 3 attempts; last error: HTTP 503 Service Unavailable: down"
    )


def wait_for_due(db: Path) -> bool:
    with Store.open(db) as store:
        due = store.next_due("hook")
    if due is not None:
        wait_until(lambda: time.time() >= due, 2)
    return True


def test_max_age_makes_it_dead(db: Path) -> None:
    queue(db, [record(1)], lambda r: ["hook"])
    later = time.time() + 7200
    sink = ScriptedSink(script=[ConnectionError("refused")])
    config = SinkConfig(name="hook", type="x", retry=RetryPolicy(max_age=3600))
    worker = DeliveryWorker(db, config, sink=sink, clock=lambda: later)
    assert worker.run_once().dead == 1
    assert rows(db)[0]["last_error"] == "gave up after 2.0h; last error: ConnectionError: refused"


def test_a_sink_raising_runtimeerror_is_temporary_and_the_worker_survives(
    db: Path, start: Callable[[DeliveryWorker], Running], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="inbound_mail")
    sink = ScriptedSink(script=[RuntimeError("boom"), KeyError("k")])
    queue(db, [record(1)], lambda r: ["hook"])
    seen: list[tuple[str, str, float]] = []
    config = SinkConfig(name="hook", type="x", retry=FAST)
    worker = DeliveryWorker(db, config, sink=sink, on_attempt=lambda *args: seen.append(args))
    start(worker)
    wait_until(lambda: rows(db)[0]["status"] == "delivered")
    assert rows(db)[0]["attempts"] == 3
    assert [(name, outcome) for name, outcome, _ in seen] == [
        ("hook", "failed"),
        ("hook", "failed"),
        ("hook", "delivered"),
    ]
    lines = [KeyValueFormatter().format(r) for r in caplog.records]
    raised = [line for line in lines if "delivery.sink_raised" in line]
    assert "error_type=RuntimeError" in raised[0] and "error_type=KeyError" in raised[1]
    attempts = [line for line in lines if "delivery.attempt" in line]
    assert "outcome=failed" in attempts[0] and 'error="RuntimeError: boom"' in attempts[0]
    assert f"sms={record(1).id}" in attempts[0] and "attempt=1" in attempts[0]
    assert "duration_ms=" in attempts[0]
    assert "outcome=delivered" in attempts[2] and "detail=ok" in attempts[2]


def test_permanent_error_from_a_sink_is_dead_and_the_queue_goes_on(db: Path) -> None:
    sink = ScriptedSink(script=[PermanentDeliveryError("rejected")])
    queue(db, [record(1), record(2)], lambda r: ["hook"])
    worker = DeliveryWorker(db, SinkConfig(name="hook", type="x"), sink=sink)
    result = worker.run_once()
    assert (result.dead, result.delivered) == (1, 1)
    assert [r["status"] for r in rows(db)] == ["dead", "delivered"]


def test_delivery_resumes_after_a_restart(db: Path, receiver: WebhookReceiver) -> None:
    receiver.down()
    queue(db, [record(1), record(2)], lambda r: ["hook"])
    first = DeliveryWorker(db, webhook(receiver.url, retry=RetryPolicy(retry_base=0.001)))
    assert first.run_once().failed == 1  # the head failed; the second row waits behind it
    first.close()
    receiver.up()
    wait_for_due(db)
    second = DeliveryWorker(db, webhook(receiver.url))
    assert second.run_once().delivered == 2
    second.close()
    assert [r.form()["text"][0] for r in receiver.requests] == ["message 1", "message 2"]


def test_a_down_sink_does_not_block_another(
    db: Path, receiver: WebhookReceiver, start: Callable[[DeliveryWorker], Running]
) -> None:
    slow = WebhookReceiver(default=Answer(delay=3.0))
    with slow:
        queue(db, [record(1)], lambda r: ["stuck", "hook"])
        start(DeliveryWorker(db, webhook(slow.url, name="stuck")))
        start(DeliveryWorker(db, webhook(receiver.url)))
        wait_until(lambda: rows(db)[0]["status"] == "delivered", 2)
        assert rows(db, "stuck")[0]["status"] == "pending"


def test_deliver_due_runs_every_sink(db: Path, receiver: WebhookReceiver, tmp_path: Path) -> None:
    out = tmp_path / "out.jsonl"
    configs = [
        webhook(receiver.url),
        SinkConfig(name="file", type="jsonl", options={"path": str(out)}),
    ]
    queue(db, [record(1), record(2)], make_router(configs))
    results = deliver_due(db, configs)
    assert {name: r.delivered for name, r in results.items()} == {"hook": 2, "file": 2}
    assert len(out.read_text().splitlines()) == 2
    assert len(receiver.requests) == 2


# -- batches: completions recorded together, and sinks with deliver_many ----------------------
@dataclass
class ListSink:
    """A sink that keeps what it gets, at once: the outbox is all there is to measure."""

    name: str = "list"
    delivered: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def deliver(self, record: SmsRecord, context: DeliveryContext) -> str | None:
        with self.lock:
            self.delivered.append(record.id)
        return "kept"

    def flush(self) -> None:
        pass

    def close(self) -> None:
        pass


@dataclass
class BatchListSink(ListSink):
    """A ListSink with ``deliver_many``; ``outcomes`` scripts the first call's results
    by position (an exception instance fails that record), ``fail`` makes the calls
    raise, ``miscount`` return one outcome too few."""

    calls: list[list[str]] = field(default_factory=list)
    outcomes: dict[int, Exception] = field(default_factory=dict)
    fail: Exception | None = None
    miscount: bool = False

    def deliver(self, record: SmsRecord, context: DeliveryContext) -> str | None:
        raise AssertionError("a batch sink gets deliver_many")

    def deliver_many(
        self, items: Sequence[tuple[SmsRecord, DeliveryContext]]
    ) -> list[str | Exception | None]:
        if self.fail is not None:
            raise self.fail
        script, self.outcomes = self.outcomes, {}
        results: list[str | Exception | None] = []
        with self.lock:
            self.calls.append([r.id for r, _ in items])
            for i, (r, context) in enumerate(items):
                assert context.attempt == 1 or i in script or r.id not in self.delivered
                if i in script:
                    results.append(script[i])
                else:
                    self.delivered.append(r.id)
                    results.append(f"kept {context.delivery_id}")
        return results[:-1] if self.miscount else results


def count_commits(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Observe how many transactions record attempts (one call of record_attempts each)."""
    calls = [0]
    record_attempts = Store.record_attempts

    def counted(self: Store, attempts: Any) -> None:
        calls[0] += 1
        record_attempts(self, attempts)

    monkeypatch.setattr(Store, "record_attempts", counted)
    return calls


def test_parallel_completions_are_recorded_a_batch_a_transaction(
    db: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    records = [record(i) for i in range(400)]
    queue(db, records, lambda r: ["hook"])
    commits = count_commits(monkeypatch)
    sink = ListSink()
    worker = DeliveryWorker(db, SinkConfig(name="hook", type="x", parallel=8), sink=sink)
    assert worker.run_once().delivered == 400
    assert sorted(sink.delivered) == sorted(r.id for r in records), "each once"
    assert all(r["status"] == "delivered" for r in rows(db))
    # One transaction per wake-up was ~50 here; batches of up to 100
    # (or 50 ms) make a handful, however the threads interleave.
    assert commits[0] <= 20, commits


def test_a_batch_sink_gets_the_queue_head_in_order_a_batch_a_call(
    db: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    records = [record(i) for i in range(250)]
    queue(db, records, lambda r: ["hook"])
    commits = count_commits(monkeypatch)
    sink = BatchListSink()
    worker = DeliveryWorker(db, SinkConfig(name="hook", type="x", retry=FAST), sink=sink)
    assert worker.run_once().delivered == 250
    assert [len(call) for call in sink.calls] == [100, 100, 50]
    assert [i for call in sink.calls for i in call] == [r.id for r in records], "in order"
    assert commits[0] == 3, "one transaction a batch"


def test_a_batch_sinks_outcomes_are_recorded_one_by_one(db: Path) -> None:
    records = [record(i) for i in range(150)]
    queue(db, records, lambda r: ["hook"])
    sink = BatchListSink()
    sink.outcomes = {3: TemporaryDeliveryError("busy"), 5: PermanentDeliveryError("no")}
    worker = DeliveryWorker(db, SinkConfig(name="hook", type="x", retry=FAST), sink=sink)
    result = worker.run_once()
    # The rest of the batch went through with it; the rows behind the batch wait
    # for the failed one (run_once: a pass stops there), as with deliver.
    assert (result.delivered, result.failed, result.dead) == (98, 1, 1)
    assert [len(call) for call in sink.calls] == [100]
    outbox = rows(db)
    assert [r["status"] for r in outbox[:6]] == ["delivered"] * 3 + ["failed", "delivered", "dead"]
    assert [r["last_error"] for r in outbox[3:6]] == ["busy", None, "no"]
    assert {r["status"] for r in outbox[100:]} == {"pending"}


def test_a_batch_sink_in_parallel_gets_shares_of_the_due_rows(db: Path) -> None:
    records = [record(i) for i in range(300)]
    queue(db, records, lambda r: ["hook"])
    sink = BatchListSink()
    worker = DeliveryWorker(db, SinkConfig(name="hook", type="x", parallel=4), sink=sink)
    assert worker.run_once().delivered == 300
    assert sorted(sink.delivered) == sorted(r.id for r in records), "each once"
    assert len(sink.calls) < 300 and max(len(call) for call in sink.calls) > 1


@pytest.mark.parametrize("parallel", [1, 4])
@pytest.mark.parametrize("broken", ["raises", "miscounts"])
def test_a_batch_call_that_raises_or_miscounts_fails_its_whole_batch(
    db: Path, parallel: int, broken: str
) -> None:
    queue(db, [record(i) for i in range(10)], lambda r: ["hook"])
    sink = BatchListSink()
    if broken == "raises":
        sink.fail = RuntimeError("the sink broke")
    else:
        sink.miscount = True
    config = SinkConfig(name="hook", type="x", parallel=parallel, retry=FAST)
    worker = DeliveryWorker(db, config, sink=sink)
    result = worker.run_once()
    assert (result.delivered, result.failed) == (0, 10)
    outbox = rows(db)
    assert all(r["status"] == "failed" and r["attempts"] == 1 for r in outbox)
    expected = "the sink broke" if broken == "raises" else "9 outcomes for 10 records"
    if parallel == 1:
        assert all(expected in r["last_error"] for r in outbox), outbox[0]["last_error"]
