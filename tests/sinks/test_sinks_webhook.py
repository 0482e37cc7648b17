"""The webhook sink against a real HTTP receiver on 127.0.0.1, with a real Store."""

from __future__ import annotations

import base64
import logging
import threading
import time
from collections.abc import Iterator
from dataclasses import replace
from email.utils import formatdate
from functools import partial
from pathlib import Path
from typing import Any

import pytest
from standardwebhooks import Webhook

from inbound_mail.config.model import RetryPolicy, SinkConfig
from inbound_mail.delivery import AttemptContext, DeliveryWorker
from inbound_mail.errors import ConfigError, PermanentDeliveryError, TemporaryDeliveryError
from inbound_mail.logs import KeyValueFormatter
from inbound_mail.sinks import create_sink, redact_url
from inbound_mail.sinks.webhook import WebhookSink, parse_retry_after
from inbound_mail.store.db import Store
from inbound_mail.testing.wait import wait_until
from inbound_mail.testing.webhook_receiver import Answer, WebhookReceiver
from testsupport.certs import make_certificates

from helpers import queue as queue_for
from helpers import sink_record as record

SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
CONTEXT = AttemptContext(delivery_id=1, attempt=1)
# Every record of this file goes to the one sink, "hook".
queue = partial(queue_for, sink="hook")
FAST = RetryPolicy(retry_base=0.05, retry_cap=0.5, max_attempts=100, max_age=3600)


def sink_config(url: str, *, retry: RetryPolicy = FAST, **options: Any) -> SinkConfig:
    return SinkConfig(name="hook", type="webhook", options={"url": url, **options}, retry=retry)


def rows(db: Path) -> list[dict[str, Any]]:
    with Store.open(db) as store:
        return list(store.deliveries(sink="hook"))


def attempt_errors(db: Path) -> list[str | None]:
    with Store.open(db) as store:
        return [r["error"] for r in store.database.query("SELECT error FROM attempts ORDER BY id")]


@pytest.fixture
def receiver() -> Iterator[WebhookReceiver]:
    with WebhookReceiver() as server:
        yield server


def run_worker(worker: DeliveryWorker, until: Any, timeout: float = 10.0) -> None:
    """Run the worker in its thread until ``until()`` holds, then stop it."""
    stop = threading.Event()
    thread = threading.Thread(target=worker.run, args=(stop,), daemon=True)
    thread.start()
    try:
        wait_until(until, timeout)
    finally:
        stop.set()
        thread.join(5)
        worker.close()
    assert not thread.is_alive()


# -- the agile format ----------------------------------------------------------------
def test_agile_receiver_sees_exactly_the_provider_fields(receiver: WebhookReceiver) -> None:
    sink = WebhookSink("hook", receiver.url)
    sms = record(text="Ciao è già\nline two & more=1")
    assert sink.deliver(sms, CONTEXT) == "HTTP 200"
    (request,) = receiver.requests
    assert request.method == "POST"
    assert request.headers["content-type"] == "application/x-www-form-urlencoded"
    assert request.form() == {
        "originator": [sms.originator],
        "destination": [sms.destination],
        "date_time": [sms.date_time],
        "text": [sms.text],
    }
    assert request.headers["x-inbound-mail-id"] == sms.id
    assert "webhook-signature" not in request.headers
    sink.close()


def test_200_without_ok_is_a_temporary_failure(receiver: WebhookReceiver) -> None:
    receiver.default = Answer(status=200, body="OK thanks")
    sink = WebhookSink("hook", receiver.url)
    with pytest.raises(TemporaryDeliveryError, match=r"HTTP 200 OK without '\+OK'.*OK thanks"):
        sink.deliver(record(), CONTEXT)
    sink.close()


def test_success_body_is_configurable(receiver: WebhookReceiver) -> None:
    receiver.default = Answer(body="accepted")
    sink = create_sink(sink_config(receiver.url, success_body="accepted"))
    assert sink.deliver(record(), CONTEXT) == "HTTP 200"


def test_three_failures_then_ok_delivers_once_with_four_attempts(
    receiver: WebhookReceiver, db: Path
) -> None:
    receiver.fail(3)
    queue(db, [record()])
    worker = DeliveryWorker(db, sink_config(receiver.url))
    run_worker(worker, lambda: rows(db)[0]["status"] == "delivered")
    (row,) = rows(db)
    assert row["attempts"] == 4
    assert [r.answer.status for r in receiver.requests] == [503, 503, 503, 200]
    errors = attempt_errors(db)
    assert errors[:3] == ["HTTP 503 Service Unavailable: busy"] * 3 and errors[3] is None


def test_receiver_down_then_up_gets_everything_in_order(
    receiver: WebhookReceiver, db: Path
) -> None:
    receiver.down()  # the port is known, nothing listens: connection refused
    records = [record(i) for i in range(5)]
    queue(db, records)
    worker = DeliveryWorker(db, sink_config(receiver.url))
    stop = threading.Event()
    thread = threading.Thread(target=worker.run, args=(stop,), daemon=True)
    thread.start()
    wait_until(lambda: rows(db)[0]["attempts"] >= 3, 5)
    assert [r["status"] for r in rows(db)] == ["failed"] + ["pending"] * 4
    assert all(r["attempts"] == 0 for r in rows(db)[1:]), "younger rows must wait for the head"
    receiver.up()
    wait_until(lambda: all(r["status"] == "delivered" for r in rows(db)), 10)
    stop.set()
    thread.join(5)
    worker.close()
    texts = [r.form()["text"][0] for r in receiver.requests]
    assert texts == [r.text for r in records]
    assert rows(db)[0]["last_error"] is None, "a delivered row clears its error"
    with Store.open(db) as store:  # the attempt log keeps it
        errors = [row["error"] for row in store.database.query("SELECT error FROM attempts")]
    assert "connection failed" in (errors[0] or "")


def test_keep_alive_reuses_one_connection(receiver: WebhookReceiver) -> None:
    sink = WebhookSink("hook", receiver.url)
    for i in range(3):
        sink.deliver(record(i), CONTEXT)
    assert len({r.connection for r in receiver.requests}) == 1
    sink.close()


# -- the json format --------------------------------------------------------------------
def test_json_signature_verifies_and_id_is_stable_across_resends(
    receiver: WebhookReceiver, db: Path
) -> None:
    receiver.fail(2, status=500)
    sms = record(text="Grüße")
    queue(db, [sms])
    worker = DeliveryWorker(db, sink_config(receiver.url, format="json", secret=SECRET))
    run_worker(worker, lambda: rows(db)[0]["status"] == "delivered")
    requests = receiver.requests
    assert len(requests) == 3
    for request in requests:
        assert request.headers["webhook-id"] == sms.id
        assert request.headers["content-type"] == "application/json"
        payload = Webhook(SECRET).verify(request.body, request.headers)
        assert payload == sms.to_dict()
    assert "Grüße".encode() in requests[0].body  # ensure_ascii=False
    tampered = dict(requests[0].headers, **{"webhook-id": "other"})
    with pytest.raises(Exception, match="signature"):
        Webhook(SECRET).verify(requests[0].body, tampered)


@pytest.mark.parametrize("source", ["secret_file", "secret_env", "secret_credential"])
def test_secret_from_file_env_or_credential_signs(
    receiver: WebhookReceiver, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, source: str
) -> None:
    secret_path = tmp_path / "hook-secret"
    secret_path.write_text(SECRET + "\n")
    secret_path.chmod(0o600)
    monkeypatch.setenv("HOOK_SECRET", SECRET)
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(tmp_path))
    value = {"secret_file": str(secret_path), "secret_env": "HOOK_SECRET",
             "secret_credential": "hook-secret"}[source]  # fmt: skip
    option: dict[str, Any] = {source: value}  # Any: a str could not be the ``retry``
    sink = create_sink(sink_config(receiver.url, format="json", **option))
    sink.deliver(record(), CONTEXT)
    (request,) = receiver.requests
    assert Webhook(SECRET).verify(request.body, request.headers) == record().to_dict()


def test_a_loose_secret_file_is_refused_without_showing_it(tmp_path: Path) -> None:
    from inbound_mail.errors import CredentialError

    secret_path = tmp_path / "hook-secret"
    secret_path.write_text(SECRET)
    secret_path.chmod(0o644)
    with pytest.raises(CredentialError, match="chmod 600") as info:
        create_sink(sink_config("http://127.0.0.1:9/", format="json", secret_file=str(secret_path)))
    assert SECRET not in str(info.value) and "sink 'hook'" in str(info.value)


def test_two_secret_sources_are_a_config_error() -> None:
    with pytest.raises(ConfigError, match="set only one of secret, secret_env") as info:
        create_sink(
            sink_config("http://127.0.0.1:9/", format="json", secret=SECRET, secret_env="X")
        )
    assert info.value.key == "sinks[0].secret_env"


def test_json_without_secret_has_no_signature_and_any_2xx_succeeds(
    receiver: WebhookReceiver,
) -> None:
    receiver.default = Answer(status=204, body=b"")
    sink = create_sink(sink_config(receiver.url, format="json"))
    assert sink.deliver(record(), CONTEXT) == "HTTP 204"
    (request,) = receiver.requests
    assert "webhook-signature" not in request.headers
    assert int(request.headers["webhook-timestamp"]) == pytest.approx(time.time(), abs=5)


def test_custom_headers_are_sent(receiver: WebhookReceiver) -> None:
    sink = create_sink(sink_config(receiver.url, headers={"Authorization": "Bearer abc123"}))
    sink.deliver(record(), CONTEXT)
    assert receiver.requests[0].headers["authorization"] == "Bearer abc123"


# -- failures ------------------------------------------------------------------------------
def test_permanent_4xx_is_dead_at_once(receiver: WebhookReceiver, db: Path) -> None:
    receiver.default = Answer(status=404, body="no such hook here")
    queue(db, [record()])
    worker = DeliveryWorker(db, sink_config(receiver.url))
    result = worker.run_once()
    worker.close()
    assert (result.dead, result.failed, result.delivered) == (1, 0, 0)
    (row,) = rows(db)
    assert row["status"] == "dead" and row["attempts"] == 1
    assert row["last_error"] == "HTTP 404 Not Found: no such hook here"


@pytest.mark.parametrize("status", [408, 429, 500, 502, 503])
def test_retryable_statuses_are_temporary(receiver: WebhookReceiver, status: int) -> None:
    receiver.default = Answer(status=status, body="later")
    sink = WebhookSink("hook", receiver.url)
    with pytest.raises(TemporaryDeliveryError, match=f"HTTP {status}"):
        sink.deliver(record(), CONTEXT)


def test_redirect_is_not_followed(receiver: WebhookReceiver) -> None:
    target = receiver.url + "/moved?token=abcdefgh1234"
    receiver.default = Answer(status=302, body="", headers=(("Location", target),))
    sink = WebhookSink("hook", receiver.url)
    with pytest.raises(PermanentDeliveryError, match="not followed") as caught:
        sink.deliver(record(), CONTEXT)
    assert len(receiver.requests) == 1
    assert "abcdefgh1234" not in str(caught.value)
    assert receiver.url + "/moved?token=***" in str(caught.value)


def test_retry_after_is_honoured(receiver: WebhookReceiver, db: Path) -> None:
    receiver.fail(1, status=429, retry_after="120")
    queue(db, [record()])
    worker = DeliveryWorker(db, sink_config(receiver.url))
    before = time.time()
    assert worker.run_once().failed == 1
    worker.close()
    with Store.open(db) as store:
        (pending,) = store.pending_deliveries("hook")
    assert pending.next_attempt_at >= before + 120


def test_retry_after_http_date() -> None:
    now = time.time()
    assert parse_retry_after(formatdate(now + 60, usegmt=True), now=now) == pytest.approx(60, abs=1)
    assert parse_retry_after("7") == 7.0
    assert parse_retry_after(formatdate(now - 60, usegmt=True), now=now) == 0.0
    assert parse_retry_after("soon") is None
    assert parse_retry_after(None) is None


def test_timeout_and_dropped_connection_are_temporary(receiver: WebhookReceiver) -> None:
    sink = WebhookSink("hook", receiver.url, timeout=0.3)
    receiver.script(Answer(delay=2.0), Answer(action="close"))
    with pytest.raises(TemporaryDeliveryError, match="timed out waiting for the response"):
        sink.deliver(record(), CONTEXT)
    with pytest.raises(TemporaryDeliveryError, match=r"disconnected|protocol|connection"):
        sink.deliver(record(), CONTEXT)
    sink.close()


def test_a_trickling_receiver_is_cut_at_timeout_and_the_next_delivery_proceeds(
    receiver: WebhookReceiver, db: Path
) -> None:
    """``timeout`` was per read: one byte a second kept an attempt alive for hours."""
    receiver.script(Answer(action="trickle", trickle=0.2, body="+OK" + " " * 10_000))
    queue(db, [record(1), record(2)])
    config = sink_config(receiver.url, timeout="1s")
    worker = DeliveryWorker(db, config)
    run_worker(worker, lambda: {r["status"] for r in rows(db)} == {"delivered"}, timeout=60)
    errors = attempt_errors(db)
    assert len(errors) == 3
    assert errors[0] is not None and "timed out" in errors[0] and "(timeout 1s)" in errors[0]
    assert errors[1:] == [None, None]
    assert [r.answer.action for r in receiver.requests] == ["trickle", "respond", "respond"]


def test_the_deadline_covers_a_trickled_status_line_over_https(tmp_path: Path) -> None:
    import ssl

    certs = make_certificates(tmp_path / "certs")
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(certs.cert_file, certs.key_file)
    with WebhookReceiver(ssl_context=context) as server:
        server.script(Answer(action="trickle", trickle=0.1))
        sink = create_sink(sink_config(server.url, ca_file=str(certs.ca_file), timeout="1s"))
        with pytest.raises(TemporaryDeliveryError, match="timed out"):
            sink.deliver(record(), CONTEXT)
        assert sink.deliver(record(), CONTEXT) == "HTTP 200"
        sink.close()


def test_tls_is_verified(tmp_path: Path) -> None:
    import ssl

    certs = make_certificates(tmp_path / "certs")
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(certs.cert_file, certs.key_file)
    with WebhookReceiver(ssl_context=context) as server:
        untrusting = WebhookSink("hook", server.url)
        with pytest.raises(TemporaryDeliveryError, match=r"(?i)certificate"):
            untrusting.deliver(record(), CONTEXT)
        trusting = create_sink(sink_config(server.url, ca_file=str(certs.ca_file)))
        assert trusting.deliver(record(), CONTEXT) == "HTTP 200"
        assert len(server.requests) == 1


# -- secrets --------------------------------------------------------------------------------
def test_secrets_never_reach_logs_or_stored_errors(
    receiver: WebhookReceiver, db: Path, caplog: pytest.LogCaptureFixture
) -> None:
    secrets = ["hunter2pass", "s3cr3tt0ken", "k3yk3yk3y", "Bearer-xyz-789"]
    url = receiver.url.replace("http://", "http://alice:hunter2pass@")
    url += "?token=s3cr3tt0ken&api_key=k3yk3yk3y&page=1"
    receiver.script(
        Answer(status=500, body="bad token s3cr3tt0ken for alice:hunter2pass"),
        Answer(status=302, body="", headers=(("Location", url),)),
    )
    queue(db, [record(1), record(2)])
    caplog.set_level(logging.DEBUG)
    config = sink_config(url, headers={"X-Auth": "Bearer-xyz-789"})
    worker = DeliveryWorker(db, replace(config, retry=replace(FAST, retry_base=0.001)))
    run_worker(worker, lambda: {r["status"] for r in rows(db)} == {"dead", "delivered"})
    receiver.down()
    queue(db, [record(3)])
    worker = DeliveryWorker(db, config)
    worker.run_once()  # connection refused, with the secret URL
    worker.close()
    formatter = KeyValueFormatter()
    logged = "\n".join(formatter.format(r) for r in caplog.records)
    stored = "\n".join(e or "" for e in attempt_errors(db))
    stored += "\n".join(r["last_error"] or "" for r in rows(db))
    assert "HTTP 500" in stored and "redirect" in stored and "connection failed" in stored
    assert "HTTP Request: POST" in logged  # httpx's own line is there, redacted
    for secret in secrets:
        assert secret not in logged
        assert secret not in stored
    assert repr(worker.sink).count("***") >= 2


def test_an_echoed_basic_authorization_and_any_query_value_are_redacted(
    receiver: WebhookReceiver, db: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """httpx sends the URL's userinfo as ``Authorization: Basic base64(user:pass)``;
    a receiver that echoes it (or the URL) must not put either in the database."""
    basic = base64.b64encode(b"alice:hunter2pass").decode("ascii")
    url = receiver.url.replace("http://", "http://alice:hunter2pass@") + "?code=AzUrEfUnCtIoNkEy"
    receiver.script(
        Answer(status=500, body=f"denied: Authorization: Basic {basic} for {url}"),
        Answer(status=302, body="", headers=(("Location", url + "&jwt=eyJhbGciOi"),)),
    )
    queue(db, [record(1), record(2)])
    caplog.set_level(logging.DEBUG)
    worker = DeliveryWorker(db, sink_config(url, retry=replace(FAST, retry_base=0.001)))
    run_worker(worker, lambda: {r["status"] for r in rows(db)} == {"dead", "delivered"})
    assert receiver.requests[0].headers["authorization"] == f"Basic {basic}"
    logged = "\n".join(KeyValueFormatter().format(r) for r in caplog.records)
    stored = "\n".join(e or "" for e in attempt_errors(db))
    stored += "\n".join(r["last_error"] or "" for r in rows(db))
    assert "HTTP 500" in stored and "code=***" in stored and "jwt=***" in stored
    for secret in (basic, "hunter2pass", "AzUrEfUnCtIoNkEy", "eyJhbGciOi"):
        assert secret not in logged
        assert secret not in stored


def test_redact_url() -> None:
    assert redact_url("https://u:p@h.example:8443/a?token=x&page=2#frag") == (
        "https://***@h.example:8443/a?token=***&page=***#***"
    )
    # Every query value: a name does not tell a credential (Azure Functions' ?code=).
    assert redact_url("https://f.azurewebsites.net/api/sms?code=AbC123==&jwt=e.y.J&k=v&e=") == (
        "https://f.azurewebsites.net/api/sms?code=***&jwt=***&k=***&e="
    )
    assert redact_url("https://hooks.slack.com/services/T0001/B0002/abcDEF123456ghiJKL") == (
        "https://hooks.slack.com/services/T0001/B0002/***"
    )
    assert redact_url("http://h/x?Signature=1&X-Amz-Credential=2&password=3&secret=4") == (
        "http://h/x?Signature=***&X-Amz-Credential=***&password=***&secret=***"
    )
    assert redact_url("http://h/plain/path") == "http://h/plain/path"
    assert redact_url("http://[::1]:99999/") == "***"


# -- configuration -------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("options", "key", "problem"),
    [
        ({"url": "ftp://x"}, "url", "http"),
        ({}, "url", "required"),
        ({"url": "http://h", "format": "xml"}, "format", "one of"),
        ({"url": "http://h", "timeout": "soon"}, "timeout", "duration"),
        ({"url": "http://h", "timeout": 0}, "timeout", "greater than zero"),
        ({"url": "http://h", "secret": "whsec_!!!"}, "secret", "base64"),
        ({"url": "http://h", "headers": {"Bad Name": "x"}}, "headers", "header names"),
        ({"url": "http://h", "headers": {"webhook-id": "x"}}, "headers", "sets itself"),
        ({"url": "http://h", "headers": {"X": 1}}, "headers", "table of strings"),
        ({"url": "http://h", "ca_file": "/nonexistent.pem"}, "ca_file", "CA bundle"),
        ({"url": "http://h", "retries": 3}, "retries", "unknown option"),
    ],
)
def test_bad_options_name_the_key(options: dict[str, Any], key: str, problem: str) -> None:
    config = SinkConfig(name="hook", type="webhook", options=options, file="cfg.toml", index=2)
    with pytest.raises(ConfigError, match=problem) as caught:
        create_sink(config)
    assert caught.value.key == f"sinks[2].{key}"
    assert caught.value.file == "cfg.toml"
