"""The redis sink against a real redis-server on 127.0.0.1, with a real Store."""

from __future__ import annotations

import json
import threading
import uuid
from pathlib import Path
from typing import Any

import pytest

from inbound_mail.check.sinks import check_sink
from inbound_mail.config.model import RetryPolicy, SinkConfig
from inbound_mail.delivery import AttemptContext, DeliveryWorker
from inbound_mail.errors import (
    CredentialError,
    PermanentDeliveryError,
    TemporaryDeliveryError,
)
from inbound_mail.sinks import BatchSink, create_sink, record_json
from inbound_mail.sinks.redis import RedisSink
from inbound_mail.testing.wait import wait_until
from testsupport.redis_server import RedisServer

from helpers import assert_bad_option, last_errors, queue, statuses
from helpers import sink_record as record

CONTEXT = AttemptContext(delivery_id=1, attempt=1)
FAST = RetryPolicy(retry_base=0.05, retry_cap=0.5, max_attempts=1000, max_age=3600)


def stream_name() -> str:
    return f"sms-{uuid.uuid4().hex[:10]}"


def sink_config(
    server: RedisServer, stream: str, *, parallel: int = 1, **options: Any
) -> SinkConfig:
    base: dict[str, Any] = {"url": server.url, "stream": stream}
    if server.password is not None:
        base["password_file"] = str(server.password_file)
    if server.ca_file is not None:
        base["ca_file"] = str(server.ca_file)
    return SinkConfig(
        name="bus", type="redis", options={**base, **options}, retry=FAST, parallel=parallel
    )


def run_worker(worker: DeliveryWorker, until: Any, timeout: float = 30.0) -> None:
    stop = threading.Event()
    thread = threading.Thread(target=worker.run, args=(stop,), daemon=True)
    thread.start()
    try:
        wait_until(until, timeout)
    finally:
        stop.set()
        thread.join(10)
        worker.close()
    assert not thread.is_alive()


# -- delivery -----------------------------------------------------------------------------
def test_entry_is_the_json_webhook_document_under_the_sms_id(redis_server: RedisServer) -> None:
    stream = stream_name()
    sink = create_sink(sink_config(redis_server, stream))
    sms = record(text="Grüße è già\nline two")
    detail = sink.deliver(sms, CONTEXT)
    sink.close()
    ((entry_id, fields),) = redis_server.entries(stream)
    assert detail == f"XADD {entry_id}"
    assert fields == {"id": sms.id, "json": record_json(sms)}
    assert json.loads(fields["json"]) == sms.to_dict()


def test_fields_format_has_the_record_fields_plus_id(redis_server: RedisServer) -> None:
    stream = stream_name()
    sink = create_sink(sink_config(redis_server, stream, format="fields"))
    sms = record()
    sink.deliver(sms, CONTEXT)
    sink.close()
    ((_entry, fields),) = redis_server.entries(stream)
    expected = {k: str(v) for k, v in sms.to_dict().items() if v is not None}
    assert fields == expected and fields["id"] == sms.id and "keyword" not in fields


def test_a_resend_adds_no_second_entry_within_the_window(redis_server: RedisServer) -> None:
    stream = stream_name()
    sink = create_sink(sink_config(redis_server, stream, dedup_window="2h"))
    assert isinstance(sink, RedisSink)
    sms = record()
    first = sink.deliver(sms, CONTEXT)
    again = sink.deliver(sms, AttemptContext(delivery_id=1, attempt=2))
    other = sink.deliver(record(1), CONTEXT)
    entries = redis_server.entries(stream)
    assert [fields["id"] for _e, fields in entries] == [sms.id, record(1).id]
    entry_id = entries[0][0]
    assert first == f"XADD {entry_id}"
    assert again == f"duplicate of entry {entry_id}: not added again"
    assert other is not None and other.startswith("XADD ")
    with redis_server.client() as client:
        marker = sink.marker_key(sms.id)
        assert client.get(marker) == entry_id, "the marker names the entry it guards"
        assert 7000 < client.ttl(marker) <= 7200, "the marker lives for dedup_window"
    sink.close()


def test_markers_share_the_streams_cluster_slot(redis_server: RedisServer) -> None:
    from redis.crc import key_slot

    for stream in ("sms", "tenant-{eu}-sms", "{sms}", "a{b}c}"):
        sink = RedisSink("bus", redis_server.url, stream)
        marker = sink.marker_key(record().id)
        assert key_slot(marker.encode()) == key_slot(stream.encode()), (stream, marker)
        sink.close()


def test_maxlen_trims_the_stream_approximately(redis_server: RedisServer) -> None:
    stream = stream_name()
    sink = create_sink(sink_config(redis_server, stream, maxlen=10))
    for i in range(400):
        sink.deliver(record(i), CONTEXT)
    sink.close()
    with redis_server.client() as client:
        length = client.xlen(stream)
    assert 10 <= length < 400, "trimmed, by whole nodes (MAXLEN ~)"


@pytest.mark.parametrize("parallel", [1, 8])
def test_worker_delivers_everything_once(
    redis_server: RedisServer, db: Path, parallel: int
) -> None:
    stream = stream_name()
    records = [record(i) for i in range(40)]
    queue(db, records)
    worker = DeliveryWorker(db, sink_config(redis_server, stream, parallel=parallel))
    run_worker(worker, lambda: set(statuses(db)) == {"delivered"})
    ids = [fields["id"] for _e, fields in redis_server.entries(stream)]
    assert sorted(ids) == sorted(r.id for r in records)
    if parallel == 1:
        assert ids == [r.id for r in records], "in order when sequential"


def test_server_restarted_in_the_middle_of_a_batch(tmp_path: Path, db: Path) -> None:
    stream = stream_name()
    records = [record(i) for i in range(300)]
    queue(db, records)
    with RedisServer(tmp_path / "redis") as server:
        worker = DeliveryWorker(db, sink_config(server, stream, timeout=2.0))
        stop = threading.Event()
        thread = threading.Thread(target=worker.run, args=(stop,), daemon=True)
        thread.start()
        try:
            wait_until(lambda: statuses(db).count("delivered") >= 30, 30)
            server.kill()  # SIGKILL: what it acknowledged is on disk (fsync always)
            server.start()
            wait_until(lambda: set(statuses(db)) == {"delivered"}, 60)
        finally:
            stop.set()
            thread.join(10)
            worker.close()
        ids = [fields["id"] for _e, fields in server.entries(stream)]
    assert len(ids) == len(set(ids)), "nothing doubled by id"
    assert set(ids) == {r.id for r in records}, "nothing lost"


# -- failures --------------------------------------------------------------------------------
def test_wrong_password_is_permanent_and_says_so(redis_server: RedisServer, tmp_path: Path) -> None:
    wrong = tmp_path / "wrong"
    wrong.write_text("not-the-password-123\n")
    wrong.chmod(0o600)
    config = sink_config(redis_server, stream_name(), password_file=str(wrong))
    sink = create_sink(config)
    with pytest.raises(PermanentDeliveryError, match="authentication failed") as caught:
        sink.deliver(record(), CONTEXT)
    assert "not-the-password-123" not in str(caught.value)
    sink.close()


def test_no_password_when_one_is_required_is_permanent(redis_server: RedisServer) -> None:
    config = SinkConfig(
        name="bus", type="redis", options={"url": redis_server.url, "stream": stream_name()}
    )
    sink = create_sink(config)
    with pytest.raises(PermanentDeliveryError, match="authentication failed"):
        sink.deliver(record(), CONTEXT)
    sink.close()


def test_wrong_credentials_make_the_delivery_dead_at_once(
    redis_server: RedisServer, db: Path
) -> None:
    queue(db, [record()])
    config = SinkConfig(
        name="bus",
        type="redis",
        options={"url": redis_server.url, "stream": stream_name(), "password_env": "NO_SUCH_X"},
    )
    with pytest.raises(CredentialError, match="NO_SUCH_X"):
        create_sink(config)  # a missing secret is a config error, before any delivery
    url = redis_server.url.replace("redis://", "redis://default:wrong-password-9@")
    worker = DeliveryWorker(db, sink_config(redis_server, stream_name(), url=url))
    worker.run_once()
    worker.close()
    assert statuses(db) == ["dead"]
    (error,) = last_errors(db)
    assert "authentication failed" in error and "wrong-password-9" not in error


def test_a_key_that_is_not_a_stream_is_permanent(redis_server: RedisServer) -> None:
    stream = stream_name()
    with redis_server.client() as client:
        client.set(stream, "a string")
    sink = create_sink(sink_config(redis_server, stream))
    with pytest.raises(PermanentDeliveryError, match=f"the key '{stream}' is not a stream"):
        sink.deliver(record(), CONTEXT)
    sink.close()


def test_out_of_memory_is_temporary_then_delivered(tmp_path: Path) -> None:
    stream = stream_name()
    with RedisServer(tmp_path / "redis") as server:
        sink = create_sink(sink_config(server, stream))
        with server.client() as client:
            client.config_set("maxmemory", "1")  # noeviction: every write refused
            with pytest.raises(TemporaryDeliveryError, match="OOM command not allowed"):
                sink.deliver(record(), CONTEXT)
            client.config_set("maxmemory", "0")
        assert sink.deliver(record(), CONTEXT) == f"XADD {server.entries(stream)[0][0]}"
        sink.close()


def test_server_down_is_temporary_not_a_hang(tmp_path: Path) -> None:
    server = RedisServer(tmp_path / "redis")  # never started: connection refused
    sink = create_sink(sink_config(server, stream_name(), timeout=2.0))
    with pytest.raises(TemporaryDeliveryError, match=r"connection to redis://127\.0\.0\.1"):
        sink.deliver(record(), CONTEXT)
    sink.close()


def test_tls_is_verified(tmp_path: Path) -> None:
    with RedisServer(tmp_path / "redis", tls=True) as server:
        assert server.url.startswith("rediss://")
        stream = stream_name()
        sink = create_sink(sink_config(server, stream))
        sink.deliver(record(), CONTEXT)
        sink.close()
        assert len(server.entries(stream)) == 1
        options = {"url": server.url, "stream": stream, "password_file": str(server.password_file)}
        untrusting = create_sink(SinkConfig(name="bus", type="redis", options=options))
        with pytest.raises(TemporaryDeliveryError, match="certificate verify failed"):
            untrusting.deliver(record(1), CONTEXT)
        untrusting.close()


# -- configuration ---------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("options", "key", "problem"),
    [
        ({"url": "redis://127.0.0.1"}, "stream", "required"),
        ({"url": "redis://127.0.0.1", "stream": "s", "maxlen": -1}, "maxlen", "whole number"),
        ({"url": "redis://127.0.0.1", "stream": "odd{}name"}, "stream", "hash tag"),
        ({"url": "redis://127.0.0.1", "stream": "s", "dedup_window": "0.5s"}, "dedup_window",
         "from 1s"),
        ({"url": "redis://127.0.0.1", "stream": "s", "dedup_window": "60d"}, "dedup_window",
         "to 30d"),
        ({"url": "redis://127.0.0.1", "stream": "s", "format": "xml"}, "format", "'json'"),
        ({"url": "redis://127.0.0.1", "stream": "s", "subject": "x"}, "subject", "unknown option"),
    ],
)  # fmt: skip
def test_bad_options_name_the_key(options: dict[str, Any], key: str, problem: str) -> None:
    assert_bad_option("redis", options, key, problem)


# -- check ---------------------------------------------------------------------------------------
def test_check_proves_the_stream_can_be_written(redis_server: RedisServer, tmp_path: Path) -> None:
    stream = stream_name()
    lines = list(check_sink(sink_config(redis_server, stream), send_test=False))
    assert [(line.level, line.step) for line in lines] == [("ok", "options"), ("ok", "reachable")]
    assert "does not exist yet" in lines[1].detail and "can be written" in lines[1].detail
    assert redis_server.entries(stream) == [], "check adds nothing"

    wrong = tmp_path / "wrong"
    wrong.write_text("nope-nope-nope\n")
    wrong.chmod(0o600)
    bad = list(check_sink(sink_config(redis_server, stream, password_file=str(wrong)), False))
    assert bad[1].level == "FAIL" and "authentication failed" in bad[1].detail

    with redis_server.client() as client:
        client.set(stream, "x")
    typed = list(check_sink(sink_config(redis_server, stream), False))
    assert typed[1].level == "FAIL" and "not a stream" in typed[1].detail


# -- deliver_many: one pipeline a batch -------------------------------------------------------
def test_deliver_many_adds_in_order_once_each(redis_server: RedisServer) -> None:
    stream = stream_name()
    sink = create_sink(sink_config(redis_server, stream))
    assert isinstance(sink, BatchSink)
    first = [record(i) for i in range(5)]
    assert sink.deliver(first[2], CONTEXT) is not None  # already there: a duplicate below
    outcomes = sink.deliver_many([(r, CONTEXT) for r in first])
    entries = redis_server.entries(stream)
    ids = [fields["id"] for _e, fields in entries]
    assert ids == [first[2].id, first[0].id, first[1].id, first[3].id, first[4].id]
    by_id = {fields["id"]: entry for entry, fields in entries}
    assert outcomes[2] == f"duplicate of entry {by_id[first[2].id]}: not added again"
    for i in (0, 1, 3, 4):
        assert outcomes[i] == f"XADD {by_id[first[i].id]}"
    sink.close()


def test_deliver_many_reports_each_records_error(redis_server: RedisServer) -> None:
    stream = stream_name()
    with redis_server.client() as client:
        client.set(stream, "a string")
    sink = create_sink(sink_config(redis_server, stream))
    assert isinstance(sink, BatchSink)
    outcomes = sink.deliver_many([(record(i), CONTEXT) for i in range(3)])
    assert len(outcomes) == 3
    for outcome in outcomes:
        assert isinstance(outcome, PermanentDeliveryError)
        assert f"the key '{stream}' is not a stream" in str(outcome)
    sink.close()


def test_deliver_many_to_a_server_that_is_down_is_temporary(tmp_path: Path) -> None:
    with RedisServer(tmp_path / "redis") as server:
        config = sink_config(server, stream_name())
    sink = create_sink(config)
    assert isinstance(sink, BatchSink)
    with pytest.raises(TemporaryDeliveryError, match="failed"):
        sink.deliver_many([(record(i), CONTEXT) for i in range(3)])
    sink.close()
