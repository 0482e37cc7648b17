"""The nats sink against a real ``nats-server -js`` on 127.0.0.1, with a real Store."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from inbound_mail.check.sinks import check_sink
from inbound_mail.config.model import RetryPolicy, SinkConfig
from inbound_mail.delivery import AttemptContext, DeliveryWorker
from inbound_mail.errors import PermanentDeliveryError, TemporaryDeliveryError
from inbound_mail.sinks import BatchSink, Sink, create_sink, record_json
from inbound_mail.sinks.nats import subject_matches
from inbound_mail.testing.wait import wait_until
from testsupport.nats_server import NatsServer

from helpers import assert_bad_option, last_errors, queue, statuses
from helpers import sink_record as record

CONTEXT = AttemptContext(delivery_id=1, attempt=1)
FAST = RetryPolicy(retry_base=0.05, retry_cap=0.5, max_attempts=1000, max_age=3600)


def new_stream(server: NatsServer, window: float = 120.0) -> tuple[str, str]:
    """A stream of this test's own: (stream name, subject)."""
    name = f"SMS_{uuid.uuid4().hex[:10]}"
    subject = f"sms.{name.lower()}.in"
    server.create_stream(name, [subject], duplicate_window=window)
    return name, subject


def sink_config(
    server: NatsServer, stream: str, subject: str, *, parallel: int = 1, **options: Any
) -> SinkConfig:
    base: dict[str, Any] = {
        "url": server.url,
        "stream": stream,
        "subject": subject,
        "user": server.user,
        "password_file": str(server.password_file),
        "timeout": 5.0,
    }
    if server.ca_file is not None:
        base["ca_file"] = str(server.ca_file)
    return SinkConfig(
        name="bus", type="nats", options={**base, **options}, retry=FAST, parallel=parallel
    )


@pytest.fixture
def sinks() -> Iterator[list[Sink]]:
    made: list[Sink] = []
    yield made
    for sink in made:
        sink.close()


def make(sinks: list[Sink], config: SinkConfig) -> Sink:
    sink = create_sink(config)
    sinks.append(sink)
    return sink


# -- delivery -------------------------------------------------------------------------------
def test_message_is_the_json_document_with_the_sms_id_header(
    nats_server: NatsServer, sinks: list[Sink]
) -> None:
    stream, subject = new_stream(nats_server)
    sink = make(sinks, sink_config(nats_server, stream, subject))
    sms = record(text="Grüße è già\nline two")
    assert sink.deliver(sms, CONTEXT) == f"PubAck {stream} seq 1"
    (message,) = nats_server.messages(stream)
    assert message.subject == subject
    assert message.headers["Nats-Msg-Id"] == sms.id
    assert message.data == record_json(sms).encode("utf-8")
    assert message.json() == sms.to_dict()


def test_a_resend_is_dropped_by_the_stream(nats_server: NatsServer, sinks: list[Sink]) -> None:
    stream, subject = new_stream(nats_server)
    sink = make(sinks, sink_config(nats_server, stream, subject))
    sms = record()
    sink.deliver(sms, CONTEXT)
    again = sink.deliver(sms, AttemptContext(delivery_id=1, attempt=2))
    assert again == f"PubAck {stream} seq 1 (duplicate: dropped by the stream)"
    sink.deliver(record(1), CONTEXT)
    ids = [m.headers["Nats-Msg-Id"] for m in nats_server.messages(stream)]
    assert ids == [sms.id, record(1).id]


@pytest.mark.parametrize("parallel", [1, 8])
def test_worker_delivers_everything_once(nats_server: NatsServer, db: Path, parallel: int) -> None:
    stream, subject = new_stream(nats_server)
    records = [record(i) for i in range(40)]
    queue(db, records)
    worker = DeliveryWorker(db, sink_config(nats_server, stream, subject, parallel=parallel))
    stop = threading.Event()
    thread = threading.Thread(target=worker.run, args=(stop,), daemon=True)
    thread.start()
    try:
        wait_until(lambda: set(statuses(db)) == {"delivered"}, 30)
    finally:
        stop.set()
        thread.join(10)
        worker.close()
    ids = [m.headers["Nats-Msg-Id"] for m in nats_server.messages(stream)]
    assert sorted(ids) == sorted(r.id for r in records)
    if parallel == 1:
        assert ids == [r.id for r in records], "in order when sequential"


def test_server_restarted_in_the_middle_of_a_batch(tmp_path: Path, db: Path) -> None:
    records = [record(i) for i in range(300)]
    queue(db, records)
    with NatsServer(tmp_path / "nats") as server:
        stream, subject = new_stream(server)
        worker = DeliveryWorker(db, sink_config(server, stream, subject, timeout=2.0))
        stop = threading.Event()
        thread = threading.Thread(target=worker.run, args=(stop,), daemon=True)
        thread.start()
        try:
            wait_until(lambda: statuses(db).count("delivered") >= 30, 30)
            server.restart()
            wait_until(lambda: set(statuses(db)) == {"delivered"}, 90)
        finally:
            stop.set()
            thread.join(10)
            worker.close()
        ids = [m.headers["Nats-Msg-Id"] for m in server.messages(stream)]
    assert len(ids) == len(set(ids)), "nothing doubled by id"
    assert set(ids) == {r.id for r in records}, "nothing lost"


# -- failures ------------------------------------------------------------------------------
def test_wrong_password_is_permanent_and_says_so(
    nats_server: NatsServer, tmp_path: Path, sinks: list[Sink]
) -> None:
    stream, subject = new_stream(nats_server)
    wrong = tmp_path / "wrong"
    wrong.write_text("not-the-password-123\n")
    wrong.chmod(0o600)
    sink = make(sinks, sink_config(nats_server, stream, subject, password_file=str(wrong)))
    # A reconnect loop would end in the sink's own deadline: a temporary error.
    with pytest.raises(PermanentDeliveryError, match="refused the login") as caught:
        sink.deliver(record(), CONTEXT)
    assert "not-the-password-123" not in str(caught.value)


def test_wrong_credentials_make_the_delivery_dead_at_once(
    nats_server: NatsServer, db: Path, tmp_path: Path
) -> None:
    stream, subject = new_stream(nats_server)
    queue(db, [record()])
    wrong = tmp_path / "wrong"
    wrong.write_text("wrong-password-9\n")
    wrong.chmod(0o600)
    config = sink_config(nats_server, stream, subject, password_file=str(wrong))
    worker = DeliveryWorker(db, config)
    worker.run_once()
    worker.close()
    assert statuses(db) == ["dead"]
    (error,) = last_errors(db)
    assert "refused the login" in error and "wrong-password-9" not in error


def test_a_stream_that_does_not_exist_is_a_clear_permanent_error(
    nats_server: NatsServer, sinks: list[Sink]
) -> None:
    sink = make(sinks, sink_config(nats_server, "NO_SUCH_STREAM", "sms.nowhere"))
    # Waiting for a PubAck that never comes would end as a temporary timeout instead.
    with pytest.raises(PermanentDeliveryError, match="stream 'NO_SUCH_STREAM' does not exist"):
        sink.deliver(record(), CONTEXT)


def test_a_subject_the_stream_does_not_capture_is_permanent(
    nats_server: NatsServer, sinks: list[Sink]
) -> None:
    stream, _subject = new_stream(nats_server)
    sink = make(sinks, sink_config(nats_server, stream, "sms.elsewhere"))
    with pytest.raises(PermanentDeliveryError, match=r"does not capture subject 'sms\.elsewhere'"):
        sink.deliver(record(), CONTEXT)


def test_a_subject_stored_by_another_stream_is_permanent(
    nats_server: NatsServer, sinks: list[Sink]
) -> None:
    stream, subject = new_stream(nats_server)
    other, _ = new_stream(nats_server)
    sink = make(sinks, sink_config(nats_server, other, subject))
    with pytest.raises(PermanentDeliveryError, match="stored by another stream"):
        sink.deliver(record(), CONTEXT)
    assert nats_server.messages(stream) == [], "nothing stored in the wrong stream"


def test_server_down_is_temporary_not_a_hang(tmp_path: Path, sinks: list[Sink]) -> None:
    server = NatsServer(tmp_path / "nats")  # never started: connection refused
    sink = make(sinks, sink_config(server, "SMS", "sms.in", timeout=2.0))
    with pytest.raises(TemporaryDeliveryError, match=r"cannot connect to nats://127\.0\.0\.1"):
        sink.deliver(record(), CONTEXT)


def test_a_denied_publish_is_permanent(tmp_path: Path, sinks: list[Sink]) -> None:
    with NatsServer(tmp_path / "nats", publish_deny=["sms.denied"]) as server:
        server.create_stream("DENIED", ["sms.denied"])
        sink = make(sinks, sink_config(server, "DENIED", "sms.denied", timeout=1.0))
        with pytest.raises(PermanentDeliveryError, match=r"denied the publish .*violation"):
            sink.deliver(record(), CONTEXT)


def test_token_login(tmp_path: Path, sinks: list[Sink]) -> None:
    with NatsServer(tmp_path / "nats", token="s3cret-token-42") as server:
        stream, subject = new_stream(server)
        good = tmp_path / "token"
        good.write_text("s3cret-token-42\n")
        good.chmod(0o600)
        options = {"url": server.url, "stream": stream, "subject": subject}
        config = SinkConfig(name="bus", type="nats", options={**options, "token_file": str(good)})
        make(sinks, config).deliver(record(), CONTEXT)
        assert len(server.messages(stream)) == 1
        config = SinkConfig(name="bus", type="nats", options={**options, "token_env": "NATS_T"})
        with pytest.MonkeyPatch.context() as env:
            env.setenv("NATS_T", "wrong-token-77")
            wrong = make(sinks, config)
        with pytest.raises(PermanentDeliveryError, match="refused the login") as caught:
            wrong.deliver(record(1), CONTEXT)
        assert "wrong-token-77" not in str(caught.value)


def test_tls_is_verified(tmp_path: Path, sinks: list[Sink]) -> None:
    with NatsServer(tmp_path / "nats", tls=True) as server:
        stream, subject = new_stream(server)
        sink = make(sinks, sink_config(server, stream, subject))
        sink.deliver(record(), CONTEXT)
        assert len(server.messages(stream)) == 1
        options = dict(sink_config(server, stream, subject).options)
        del options["ca_file"]
        untrusting = make(sinks, SinkConfig(name="bus", type="nats", options=options))
        with pytest.raises(TemporaryDeliveryError, match="certificate verify failed"):
            untrusting.deliver(record(1), CONTEXT)


# -- configuration ---------------------------------------------------------------------------
GOOD = {"url": "nats://127.0.0.1:4222", "stream": "SMS", "subject": "sms.in"}


@pytest.mark.parametrize(
    ("options", "key", "problem"),
    [
        ({**GOOD, "stream": None}, "stream", "required"),
        ({**GOOD, "subject": None}, "subject", "required"),
        ({**GOOD, "subject": "sms.*"}, "subject", "wildcards"),
        ({**GOOD, "stream": "a.b"}, "stream", "stream name"),
        ({**GOOD, "user": "sms"}, "password_file", "go together"),
        ({**GOOD, "token_env": "A", "token_file": "/x"}, "token_env", "only one of"),
    ],
)
def test_bad_options_name_the_key(options: dict[str, Any], key: str, problem: str) -> None:
    assert_bad_option("nats", options, key, problem)


def test_subject_matching_follows_nats_wildcards() -> None:
    assert subject_matches("sms.in", "sms.in")
    assert subject_matches("sms.*", "sms.in") and not subject_matches("sms.*", "sms.in.x")
    assert subject_matches("sms.>", "sms.in.x") and not subject_matches("sms.>", "sms")
    assert not subject_matches("sms.in", "sms.out") and not subject_matches("sms", "sms.in")


# -- check ---------------------------------------------------------------------------------------
def test_check_finds_the_stream_and_its_window(nats_server: NatsServer, tmp_path: Path) -> None:
    stream, subject = new_stream(nats_server, window=3600)
    lines = list(check_sink(sink_config(nats_server, stream, subject), send_test=False))
    assert [(line.level, line.step) for line in lines] == [("ok", "options"), ("ok", "reachable")]
    assert f"stream {stream!r} captures {subject!r}" in lines[1].detail
    assert "duplicate window 3600s)" in lines[1].detail
    short, _ = new_stream(nats_server, window=120)
    brief = list(check_sink(sink_config(nats_server, short, f"sms.{short.lower()}.in"), False))
    assert brief[1].level == "ok" and "120s; short for scale-out" in brief[1].detail
    assert nats_server.messages(stream) == [], "check publishes nothing"

    missing = list(check_sink(sink_config(nats_server, "NOPE", subject), send_test=False))
    assert missing[1].level == "FAIL" and "'NOPE' does not exist" in missing[1].detail

    wrong = tmp_path / "wrong"
    wrong.write_text("nope-nope-nope\n")
    wrong.chmod(0o600)
    config = sink_config(nats_server, stream, subject, password_file=str(wrong))
    bad = list(check_sink(config, send_test=False))
    assert bad[1].level == "FAIL" and "refused the login" in bad[1].detail


# -- deliver_many: the PubAcks awaited together -----------------------------------------------
def test_deliver_many_publishes_in_order_once_each(
    nats_server: NatsServer, sinks: list[Sink]
) -> None:
    stream, subject = new_stream(nats_server)
    sink = make(sinks, sink_config(nats_server, stream, subject))
    assert isinstance(sink, BatchSink)
    batch = [record(i) for i in range(50)]
    sink.deliver(batch[3], CONTEXT)  # already stored: its resend below is dropped
    outcomes = sink.deliver_many([(r, CONTEXT) for r in batch])
    ids = [m.headers["Nats-Msg-Id"] for m in nats_server.messages(stream)]
    assert ids == [batch[3].id] + [r.id for i, r in enumerate(batch) if i != 3], "in order"
    assert outcomes[3] == f"PubAck {stream} seq 1 (duplicate: dropped by the stream)"
    assert all(isinstance(o, str) and o.startswith(f"PubAck {stream} seq ") for o in outcomes)


def test_deliver_many_reports_each_records_error(
    nats_server: NatsServer, sinks: list[Sink]
) -> None:
    stream, _subject = new_stream(nats_server)
    sink = make(sinks, sink_config(nats_server, stream, "sms.elsewhere"))
    assert isinstance(sink, BatchSink)
    outcomes = sink.deliver_many([(record(i), CONTEXT) for i in range(3)])
    assert len(outcomes) == 3
    for outcome in outcomes:
        assert isinstance(outcome, PermanentDeliveryError)
        assert "does not capture subject 'sms.elsewhere'" in str(outcome)


def test_deliver_many_to_a_server_that_is_down_is_temporary(
    tmp_path: Path, sinks: list[Sink]
) -> None:
    server = NatsServer(tmp_path / "nats")  # never started: connection refused
    sink = make(sinks, sink_config(server, "SMS", "sms.in", timeout=2.0))
    assert isinstance(sink, BatchSink)
    with pytest.raises(TemporaryDeliveryError, match=r"cannot connect to nats://127\.0\.0\.1"):
        sink.deliver_many([(record(i), CONTEXT) for i in range(3)])


def test_deliver_many_denied_is_permanent(tmp_path: Path, sinks: list[Sink]) -> None:
    with NatsServer(tmp_path / "nats", publish_deny=["sms.denied"]) as server:
        server.create_stream("DENIED", ["sms.denied"])
        sink = make(sinks, sink_config(server, "DENIED", "sms.denied", timeout=1.0))
        assert isinstance(sink, BatchSink)
        outcomes = sink.deliver_many([(record(i), CONTEXT) for i in range(3)])
        for outcome in outcomes:
            assert isinstance(outcome, PermanentDeliveryError)
            assert "denied the publish" in str(outcome) and "violation" in str(outcome)


def test_deliver_many_without_publish_async_publishes_in_order(
    nats_server: NatsServer, sinks: list[Sink], monkeypatch: pytest.MonkeyPatch
) -> None:
    from nats.js.client import JetStreamContext

    monkeypatch.delattr(JetStreamContext, "publish_async")  # as in nats-py before 2.7
    stream, subject = new_stream(nats_server)
    sink = make(sinks, sink_config(nats_server, stream, subject))
    assert isinstance(sink, BatchSink)
    batch = [record(i) for i in range(30)]
    outcomes = sink.deliver_many([(r, CONTEXT) for r in batch])
    assert outcomes == [f"PubAck {stream} seq {n}" for n in range(1, 31)]
    assert [m.headers["Nats-Msg-Id"] for m in nats_server.messages(stream)] == [r.id for r in batch]
